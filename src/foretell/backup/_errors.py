"""The one error of backups and restores: its message is what the operator reads."""


class BackupError(Exception):
    """A backup or restore that cannot be done, and why."""
