"""Building versions: a bundle in, an immutable image out.

The native builder (the default, and the one tested) installs the requirements as wheels into
a content-addressed directory. `Builder` is the seam for others, such as an OCI builder using
the Docker SDK on sites with an engine: it takes the same inputs and returns an image digest.
"""

from foretell.build._log import BuildLog, follow_build_log
from foretell.build._native import Builder, BuildFailed, NativeBuilder

__all__ = ["BuildFailed", "BuildLog", "Builder", "NativeBuilder", "follow_build_log"]
