"""AccountService: users, sessions (access and refresh tokens) and API keys."""

from foretell.services.account._servicer import AccountServicer, add_to_server
from foretell.services.account._store import create_user

__all__ = ["AccountServicer", "add_to_server", "create_user"]
