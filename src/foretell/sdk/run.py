"""The runner the sandbox starts: `python -m foretell.sdk.run --as-of ... --entrypoint ...`.

Imports the model's entrypoint (from /image/app, on the path), calls it once with a Context,
and hands what it returns to the platform over the run's socket. An exception in the model
ends the process with its traceback on stderr (the platform records it as model_error); a
submission the platform refuses ends it with status 2 (recorded as invalid_output)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from datetime import datetime

import grpc

from foretell.forecast.v1 import forecast_service_pb2 as fc_pb
from foretell.forecast.v1 import forecast_service_pb2_grpc as fc_grpc
from foretell.sdk._context import Context, to_message

REFUSED = 2
# Seconds the platform has to check the forecasts.
_SUBMIT_TIMEOUT_S = 30.0


def _arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="foretell.sdk.run")
    parser.add_argument("--as-of", required=True, type=datetime.fromisoformat)
    parser.add_argument("--symbols", required=True, type=lambda s: tuple(s.split(",")))
    parser.add_argument("--resolution", required=True)
    parser.add_argument("--horizon", required=True, type=int)
    parser.add_argument("--lookback", required=True, type=int)
    # The platform's calendar decides it (the close of the horizon-th bar after as_of).
    parser.add_argument("--target-time", type=datetime.fromisoformat, default=None)
    parser.add_argument("--entrypoint", required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, channel: grpc.Channel | None = None) -> int:
    """`channel`: the channel to the run's socket, opened in advance (a warm start's child
    opens it before its run, see foretell.sdk._fork); by default opened here."""
    args = _arguments(sys.argv[1:] if argv is None else argv)
    module_name, _, function_name = args.entrypoint.partition(":")
    predict = getattr(importlib.import_module(module_name), function_name)
    if channel is None:
        channel = grpc.insecure_channel("unix://" + os.environ["FORETELL_SOCKET"])
    with channel:
        ctx = Context(
            channel,
            as_of=args.as_of,
            symbols=args.symbols,
            resolution=args.resolution,
            horizon=args.horizon,
            lookback=args.lookback,
            target_time=args.target_time,
        )
        returned = predict(ctx)
        if returned is None:
            returned = []
        if not isinstance(returned, (list, tuple)):
            raise TypeError(
                f"predict must return a list of forecasts, not {type(returned).__name__}"
            )
        request = fc_pb.SubmitForecastsRequest(
            forecasts=[to_message(i, item) for i, item in enumerate(returned)]
        )
        try:
            response = fc_grpc.ForecastServiceStub(channel).SubmitForecasts(
                request, timeout=_SUBMIT_TIMEOUT_S
            )
        except grpc.RpcError as error:
            print(f"forecasts refused: {error.details()}", file=sys.stderr)
            return REFUSED
    print(f"{response.accepted} forecasts submitted", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
