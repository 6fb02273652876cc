"""Model bundles: the canonical tar archive a provider uploads, and the checks that make it safe.

The CLI packs a folder with `pack_dir`; the server re-checks an upload with `read_bundle` (or
`extract_bundle`, which also writes it out) and trusts nothing the client did. The same files
always give the same bytes, so a version's digest names its content.

Choices, the same on both sides:
- the archive is POSIX pax (ustar headers, a pax `path` record only for long or non-ASCII
  paths), byte for byte as `_tar` describes; anything else is "not canonical";
- it holds regular files only, no directory entries: directories follow from the paths, and
  there is no directory metadata to normalise;
- two paths that differ only in case or Unicode normalisation are refused (like exact
  duplicates): checked out on macOS or Windows they would be one file, and which one Python
  imports would depend on the machine.
"""

from foretell.bundle._limits import DEFAULT_LIMITS, Limits
from foretell.bundle._pack import PackedBundle, pack_dir
from foretell.bundle._paths import printable
from foretell.bundle._read import BundleContents, BundleFile, extract_bundle, read_bundle
from foretell.bundle.manifest import MANIFEST_NAME, Manifest, parse_manifest

__all__ = [
    "DEFAULT_LIMITS",
    "MANIFEST_NAME",
    "BundleContents",
    "BundleFile",
    "Limits",
    "Manifest",
    "PackedBundle",
    "extract_bundle",
    "pack_dir",
    "parse_manifest",
    "printable",
    "read_bundle",
]
