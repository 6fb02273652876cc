"""Authentication and authorisation: who is calling, and may they call this method."""

from foretell.auth.keys import SigningKeys, load_or_create_keys
from foretell.auth.passwords import hash_password, verify_password
from foretell.auth.policy import POLICY, Policy, Role
from foretell.auth.principal import Principal, current_principal
from foretell.auth.tokens import TokenIssuer, TokenVerifier

__all__ = [
    "POLICY",
    "Policy",
    "Principal",
    "Role",
    "SigningKeys",
    "TokenIssuer",
    "TokenVerifier",
    "current_principal",
    "hash_password",
    "load_or_create_keys",
    "verify_password",
]
