"""DataFeed throughput into a jail: bars per second a sandboxed model receives over its run's
Unix socket into numpy arrays, with the SDK (`ctx.bars(symbol, lookback=N)` against the
run-scoped server, `foretell.runs.RunServer` on `MemoryBars`), against the same bars sent one
bar per message to the same jailed client.

The one-bar-per-message baseline is a bench-local gRPC method (`/bench.PagedBars/GetBars`, a
generic handler sending `GetBarsResponse` pages of a size the client asks for in metadata) on a
second Unix socket in the run's socket directory, which the sandbox hands to the jail like the
run's own. The jailed client collects its pages exactly as the SDK does (lists extended from the
repeated fields, then `numpy.array`). Page sizes other than 1 show what larger pages of the
repeated fields give; the SDK asks for `packed` pages of `PACKED_PAGE_BARS` bars. All times are
measured inside the jail.

    .venv/bin/python bench/datafeed.py [--bars 2000000] [--baseline-bars 100000] [--repeat 3]

Needs root (nsjail). numpy for the jail (CPython 3.11) comes from .build/wheelhouse when it
holds a wheel, else from PyPI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from array import array
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from foretell.datafeed.v1 import datafeed_service_pb2 as feed_pb
from foretell.marketdata.messages import PACKED_PAGE_BARS, bars_pb
from foretell.marketdata.queries import BarColumns
from foretell.runs import MemoryBars, RunScope, RunServer
from foretell.sandbox import Outcome, SandboxLimits, prepare_run_dir, run_in_sandbox, sdk_dir

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE = ROOT / ".build" / "wheelhouse"
SYMBOL = "EURUSD"
# Hourly bars from 1901: the DataFeed clamps times to [1900, 2200), which holds 2.6M hours.
BASE = int(datetime(1901, 1, 1, tzinfo=UTC).timestamp())
MAX_BARS = 2_600_000
STEP = 3600
PAGED_METHOD = "/bench.PagedBars/GetBars"

# Runs inside the jail: argv[1] is a JSON plan; prints one JSON line of timings (seconds).
JAILED = textwrap.dedent("""
    import json, os, sys, time
    from datetime import UTC, datetime
    import grpc, numpy as np
    from foretell.sdk import Context
    from foretell.datafeed.v1 import datafeed_service_pb2 as pb

    plan = json.loads(sys.argv[1])
    out = {"numpy": np.__version__, "sdk": [], "paged": {}}
    socket = os.environ["FORETELL_SOCKET"]
    with grpc.insecure_channel("unix://" + socket) as channel:
        ctx = Context(channel, as_of=datetime.fromtimestamp(plan["as_of"], UTC),
                      symbols=[plan["symbol"]], resolution="1h", horizon=1, lookback=1)
        for _ in range(plan["repeat"]):
            started = time.perf_counter()
            bars = ctx.bars(plan["symbol"], lookback=plan["bars"])
            out["sdk"].append(time.perf_counter() - started)
            assert len(bars) == plan["bars"] and bars.close.dtype == np.float64
    paged_socket = os.path.join(os.path.dirname(socket), "paged.sock")
    with grpc.insecure_channel("unix://" + paged_socket) as channel:
        call = channel.unary_stream(plan["method"],
                                    request_serializer=pb.GetBarsRequest.SerializeToString,
                                    response_deserializer=pb.GetBarsResponse.FromString)
        for page, count, collect in plan["paged"]:
            runs = out["paged"][f"{page}{'' if collect else '-receive'}"] = []
            for _ in range(plan["repeat"]):
                started = time.perf_counter()
                times, columns = [], [[], [], [], [], []]
                request = pb.GetBarsRequest(symbol=plan["symbol"], limit=count, latest=True)
                for message in call(request, metadata=(("page", str(page)),)):
                    b = message.bars
                    if not collect:  # decoded, then dropped: server and transport only
                        times.append(len(b.closes))
                        continue
                    times.extend(b.open_times_unix)
                    for column, values in zip(columns, (b.opens, b.highs, b.lows, b.closes,
                                                        b.volumes)):
                        column.extend(values)
                if collect:
                    arrays = [np.array(times, dtype="int64").astype("datetime64[s]")]
                    arrays += [np.array(column, dtype="float64") for column in columns]
                runs.append(time.perf_counter() - started)
                assert (len(arrays[0]) if collect else sum(times)) == count
    print(json.dumps(out))
""")


def make_bars(count: int) -> BarColumns:
    closes = array("d", (100.0 + (i % 1000) * 0.01 for i in range(count)))
    return BarColumns(
        array("q", range(BASE, BASE + count * STEP, STEP)),
        closes,
        array("d", [101.0]) * count,
        array("d", [99.0]) * count,
        closes,
        array("d", [10.0]) * count,
    )


def make_image(root: Path) -> Path:
    image = root / "image"
    (image / "app").mkdir(parents=True)
    site = image / "site-packages"
    source = (
        ["--no-index", "--find-links", str(WHEELHOUSE)]
        if any(WHEELHOUSE.glob("numpy-*-cp311-*.whl"))
        else []
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--only-binary", ":all:", "--no-compile", "--python-version", "3.11",
         "--target", str(site), *source, "numpy"],
        check=True,
    )  # fmt: skip
    for directory, _dirs, files in os.walk(image):
        os.chmod(directory, 0o755)  # noqa: S103 - read by the jail's user
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
    return image


def paged_server(bars: BarColumns, socket_path: Path) -> aio.Server:
    """GetBars that sends the latest `limit` bars in pages of the size in the "page" metadata."""

    async def get_bars(
        request: feed_pb.GetBarsRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[feed_pb.GetBarsResponse]:
        page = int(dict(context.invocation_metadata() or ())["page"])
        chosen = bars.slice(len(bars) - request.limit, len(bars))
        for start in range(0, len(chosen), page):
            last = start + page >= len(chosen)
            yield feed_pb.GetBarsResponse(
                bars=bars_pb(chosen.slice(start, start + page)), last=last
            )

    handler = grpc.method_handlers_generic_handler(
        "bench.PagedBars",
        {
            "GetBars": grpc.unary_stream_rpc_method_handler(
                get_bars,
                request_deserializer=feed_pb.GetBarsRequest.FromString,
                response_serializer=feed_pb.GetBarsResponse.SerializeToString,
            )
        },
    )
    server = aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix://{socket_path}")
    return server


async def main_async(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="ftbdf-", dir="/tmp"))
    root.chmod(0o711)
    try:
        started = time.perf_counter()
        image = make_image(root)
        print(f"image with numpy built in {time.perf_counter() - started:.1f} s")
        count = max(args.bars, args.baseline_bars)
        bars = make_bars(count)
        as_of = datetime.fromtimestamp(BASE + count * STEP, UTC)
        scope = RunScope((SYMBOL,), "1h", 1, as_of)
        run_dir = root / "run"
        socket_path = prepare_run_dir(run_dir)
        server = RunServer(MemoryBars("1h", {SYMBOL: bars}), scope, socket_path)
        paged = paged_server(bars, socket_path.parent / "paged.sock")
        await server.start()
        await paged.start()
        plan = {
            "as_of": scope.as_of_s,
            "symbol": SYMBOL,
            "bars": args.bars,
            "repeat": args.repeat,
            "method": PAGED_METHOD,
            "paged": _paged_plan(args),
        }
        limits = SandboxLimits(wall_seconds=600, cpu_seconds=600, memory_mib=3072,
                               address_space_mib=8192)  # fmt: skip
        try:
            result = await run_in_sandbox(
                image, run_dir, ["-c", JAILED, json.dumps(plan)], limits,
                sdk_dir=sdk_dir(root / "data"),
            )  # fmt: skip
        finally:
            await paged.stop(None)
            await server.stop()
        if result.outcome is not Outcome.OK:
            raise SystemExit(
                f"jailed client failed: {result.outcome} {result.detail}\n{result.stderr}"
            )
        out = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"numpy {out['numpy']} in the jail; best and median of {args.repeat}, timed inside it:"
        )
        sdk = _rate(args.bars, out["sdk"])
        print(
            f"(a) SDK ctx.bars, RunServer ({PACKED_PAGE_BARS:,} packed bars/message)"
            f"  {args.bars:>9,} bars"
            f"  {sdk[0]:>12,.0f} bars/s best  {sdk[1]:>12,.0f} median"
        )
        for page, n, collect in _paged_plan(args):
            label = "(b) one bar per message" if page == 1 else f"    {page:,} bars per message"
            if not collect:
                label += ", received only"
            rate = _rate(n, out["paged"][f"{page}{'' if collect else '-receive'}"])
            print(
                f"{label:<44}  {n:>9,} bars  {rate[0]:>12,.0f} bars/s best"
                f"  {rate[1]:>12,.0f} median"
            )
        one = _rate(args.baseline_bars, out["paged"]["1"])[0]
        print(
            f"SDK: {sdk[0]:,.0f} bars/s, {sdk[0] / one:.0f}x one bar per message "
            f"(target: at least 3,000,000: {'met' if sdk[0] >= 3e6 else 'not met'})"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _paged_plan(args: argparse.Namespace) -> list[tuple[int, int, bool]]:
    """(bars per message, bars, whether the client builds numpy arrays or only receives)."""
    plan = [(1, args.baseline_bars, True)]
    plan += [(page, args.bars, True) for page in args.pages]
    return plan + [(page, args.bars, False) for page in args.pages]


def _rate(count: int, seconds: list[float]) -> tuple[float, float]:
    ordered = sorted(seconds)
    return count / ordered[0], count / ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=2_000_000, help="bars per SDK pull")
    parser.add_argument("--baseline-bars", type=int, default=100_000,
                        help="bars per one-bar-per-message pull")  # fmt: skip
    parser.add_argument("--pages", type=int, nargs="*", default=[1000, 10_000, 50_000],
                        help="other page sizes to try with the bench's server")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if max(args.bars, args.baseline_bars) > MAX_BARS:
        parser.error(f"at most {MAX_BARS:,} bars (hourly bars between 1901 and 2200)")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
