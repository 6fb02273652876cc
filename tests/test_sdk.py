"""The SDK's reads against a real run server on a Unix socket, outside the jail (test_runs.py
runs it inside): bars arrive as packed pages and become numpy arrays, or lists without numpy,
holding exactly the bars the server has."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from array import array
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pandas as pd  # type: ignore[import-untyped,unused-ignore]
import pytest

from foretell.marketdata import BarColumns
from foretell.marketdata.messages import PACKED_PAGE_BARS
from foretell.runs import MemoryBars, RunScope, RunServer
from foretell.sdk import Bars, Context, DataError

SYMBOL = "EURUSD"
START = datetime(2000, 1, 3, tzinfo=UTC)
# More than two packed pages, the last one partial.
COUNT = 2 * PACKED_PAGE_BARS + 123
AS_OF = START + timedelta(hours=COUNT)


def source() -> BarColumns:
    start = int(START.timestamp())
    closes = array("d", (1.0 + i / 7 for i in range(COUNT)))
    return BarColumns(
        array("q", range(start, start + COUNT * 3600, 3600)),
        array("d", (c - 0.5 for c in closes)),
        array("d", (c + 1 for c in closes)),
        array("d", (c - 1 for c in closes)),
        closes,
        array("d", (float(i % 97) for i in range(COUNT))),
    )


@pytest.fixture(scope="module")
async def socket_path() -> AsyncIterator[Path]:
    # Short: a Unix socket path is limited to about 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="ftsdk-", dir="/tmp"))
    server = RunServer(
        MemoryBars("1h", {SYMBOL: source()}),
        RunScope((SYMBOL,), "1h", 1, AS_OF),
        directory / "run.sock",
    )
    await server.start()
    try:
        yield server.socket_path
    finally:
        await server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def read(socket_path: Path, lookback: int, *, end: datetime | None = None) -> Bars:
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        ctx = Context(channel, as_of=AS_OF, symbols=[SYMBOL], resolution="1h", horizon=1,
                      lookback=10)  # fmt: skip
        return ctx.bars(SYMBOL, lookback, end=end)


async def test_bars_become_writable_numpy_arrays_of_every_page(socket_path: Path) -> None:
    bars = await asyncio.to_thread(read, socket_path, COUNT)
    expected = source()
    assert len(bars) == COUNT
    assert bars.time.dtype == np.dtype("datetime64[s]")
    assert bars.time.astype("int64").tolist() == list(expected.open_times)
    for name, column in zip(
        ("open", "high", "low", "close", "volume"), expected.columns()[1:], strict=True
    ):
        got = getattr(bars, name)
        assert got.dtype == np.float64 and got.flags.writeable, name
        assert got.tolist() == list(column), name
    bars.close[:] -= 1.0  # a model may work in place

    last = await asyncio.to_thread(read, socket_path, 3)
    assert last.close.tolist() == list(expected.closes[-3:])
    assert last.time[-1] == np.datetime64(int((AS_OF - timedelta(hours=1)).timestamp()), "s")


async def test_without_numpy_bars_are_lists(
    socket_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry makes `import numpy` raise ImportError, as in an image without numpy.
    monkeypatch.setitem(sys.modules, "numpy", None)
    bars = await asyncio.to_thread(read, socket_path, PACKED_PAGE_BARS + 1)
    expected = source().slice(COUNT - PACKED_PAGE_BARS - 1, COUNT)
    assert isinstance(bars.close, list) and len(bars) == PACKED_PAGE_BARS + 1
    assert bars.time[0] == datetime.fromtimestamp(expected.open_times[0], UTC)
    assert bars.volume == list(expected.volumes)
    assert bars.high == list(expected.highs)

    end = START + timedelta(hours=5)
    early = await asyncio.to_thread(read, socket_path, 10, end=end)
    assert early.time == [START + timedelta(hours=i) for i in range(5)]


async def test_frame_and_refusals(socket_path: Path) -> None:
    def frame() -> pd.DataFrame:
        with grpc.insecure_channel(f"unix://{socket_path}") as channel:
            ctx = Context(channel, as_of=AS_OF, symbols=[SYMBOL], resolution="1h", horizon=1,
                          lookback=4)  # fmt: skip
            return ctx.frame(SYMBOL)

    df = await asyncio.to_thread(frame)
    assert list(df.columns) == ["open", "high", "low", "close", "volume"]
    assert df.index[-1] == pd.Timestamp(AS_OF - timedelta(hours=1))
    assert df["close"].tolist() == list(source().closes[-4:])

    with pytest.raises(DataError, match="OUT_OF_RANGE"):
        await asyncio.to_thread(read, socket_path, 1, end=AS_OF + timedelta(hours=1))
