"""The `foretell` command. Server commands import the server stack lazily, so the client side
installs and starts without it."""

from foretell.cli._main import main

__all__ = ["main"]
