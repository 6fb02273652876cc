"""Resolutions: the bar lengths a model forecasts at, never finer than an hour.

The one table of them: their names as stored and written in manifests, their length in
seconds, and their protobuf enum values."""

from __future__ import annotations

from foretell.common.v1 import common_pb2

STEP_S = {"1h": 3600, "4h": 4 * 3600, "1d": 86400}
RESOLUTIONS = tuple(STEP_S)
BY_ENUM: dict[common_pb2.Resolution.ValueType, str] = {
    common_pb2.RESOLUTION_1H: "1h",
    common_pb2.RESOLUTION_4H: "4h",
    common_pb2.RESOLUTION_1D: "1d",
}
TO_ENUM = {text: value for value, text in BY_ENUM.items()}
# What a field violation says when an enum field holds none of them.
ENUM_RULE = "RESOLUTION_1H, RESOLUTION_4H or RESOLUTION_1D"
