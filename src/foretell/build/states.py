"""A version's build states. The database's `versions_build_state_check` holds the same set."""

from __future__ import annotations

import enum


class BuildState(enum.StrEnum):
    QUEUED = "queued"
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"


# States a build may take a version from: a queued one, or one whose builder died mid-build.
TAKEABLE = frozenset({BuildState.QUEUED, BuildState.BUILDING})
FINAL = frozenset({BuildState.READY, BuildState.FAILED})
