"""The two ways `foretell up` refuses to start."""


class AlreadyRunning(Exception):
    """Another `foretell up` holds the data directory."""


class StartupError(Exception):
    """The platform cannot start; the message says what to change."""
