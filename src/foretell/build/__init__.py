"""Building versions: a bundle in, an immutable image out, and the job that does it.

The native builder (the default, and the one tested) installs the requirements as wheels into
a content-addressed directory. `Builder` is the seam for others, such as an OCI builder using
the Docker SDK on sites with an engine: it takes the same inputs and returns an image digest.
"""

from foretell.build._log import BuildLog, follow_build_log
from foretell.build._native import Builder, BuildFailed, NativeBuilder
from foretell.build.job import (
    MemoryLog,
    build,
    build_job_timeout_s,
    build_version,
    enqueue_build,
)
from foretell.build.states import BuildState

__all__ = [
    "BuildFailed",
    "BuildLog",
    "BuildState",
    "Builder",
    "MemoryLog",
    "NativeBuilder",
    "build",
    "build_job_timeout_s",
    "build_version",
    "enqueue_build",
    "follow_build_log",
]
