"""AccountService: users, sessions (access and refresh tokens) and API keys."""

from foretell.services.account._queries import create_user
from foretell.services.account._servicer import AccountServicer, add_to_server

__all__ = ["AccountServicer", "add_to_server", "create_user"]
