"""Backups of a whole platform: the database, the artifact store and the signing keys in one
archive that a restore checks before it writes anything (`foretell backup`, `foretell
restore`; docs/operations.md)."""

from foretell.backup._archive import Manifest
from foretell.backup._create import create_backup
from foretell.backup._errors import BackupError
from foretell.backup._restore import restore_backup

__all__ = ["BackupError", "Manifest", "create_backup", "restore_backup"]
