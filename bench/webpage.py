"""The web app in Chromium against the real stack (PostgreSQL, Redis, the in-process services,
Envoy serving the built app), on a model whose record holds 6,000 hourly forecasts: time until
the model page is interactive and until playback is ready, frame times while playback runs at
its fastest speed, and the REST bytes each page downloaded against the bytes of data it shows;
each beside the simple alternative measured in the same run. Needs `make web` and Debian's
chromium (or $FORETELL_CHROMIUM).

    .venv/bin/python bench/webpage.py [--forecasts 6000] [--loads 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _stores import database, redis
from google.protobuf import field_mask_pb2
from grpc import aio
from playwright.async_api import async_playwright

from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.calendars import CRYPTO
from foretell.composition import SERVICES, start_services
from foretell.marketdata import set_calendar
from foretell.registry.v1 import registry_service_pb2 as reg_pb
from foretell.registry.v1 import registry_service_pb2_grpc as reg_grpc
from foretell.runtime import Resources, open_resources
from foretell.settings import Address, Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests._envoy import Envoy, running_envoy
from tests._records import HOUR, F, Made, insert_bars, make_model, record_run, unique_symbol
from tests._web import chromium_path, signed_up
from tests.conftest import PASSWORD

INTERACTIVE_TARGET_S = 1.0
FPS_TARGET = 55.0
# In the page before any script of the app: when each selector first matches (performance.now,
# ms since navigation start), watched by a MutationObserver.
MARKS = """
window.__marks = {};
const watch = {
  interactive: '[data-testid="measures"]',
  charts: 'figure.line-chart canvas',
  playback: '[data-ready="true"]',
};
new MutationObserver(() => {
  for (const [k, sel] of Object.entries(watch)) {
    if (k in window.__marks || !document.querySelector(sel)) continue;
    window.__marks[k] = performance.now();
  }
}).observe(document, { childList: true, subtree: true, attributes: true });
"""
# Frame intervals from requestAnimationFrame: idle for `ms`, or from a click on Play until
# playback pauses itself at the end (or `ms` have passed, when not 0; then paused).
FRAMES = """
async ([ms, whilePlaying]) => {
  const playing = () => [...document.querySelectorAll('.controls button')]
    .some((b) => b.textContent.includes('Pause'));
  if (whilePlaying) [...document.querySelectorAll('.controls button')]
    .find((b) => b.textContent.includes('Play')).click();
  const times = [];
  const start = performance.now();
  await new Promise((done) => {
    const tick = (t) => {
      times.push(t);
      const stopped = whilePlaying && times.length > 2 && !playing();
      const over = stopped || (ms > 0 && t - start > ms);
      if (over) done(); else requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  });
  if (playing()) [...document.querySelectorAll('.controls button')]
    .find((b) => b.textContent.includes('Pause')).click();
  return times.slice(1).map((t, i) => t - times[i]);
}
"""


async def seed(channel: Any, resources: Resources, runs: int) -> Made:
    """A published model of a new provider, `runs` hourly live runs (one forecast each) on
    synthetic round-the-clock bars."""
    account = account_grpc.AccountServiceStub(channel)
    registry = reg_grpc.RegistryServiceStub(channel)

    async def owner() -> Any:
        return await signed_up(account)

    symbol = unique_symbol("FX")
    made = await make_model(registry, owner, resources, symbols=(symbol,))
    await registry.UpdateModel(
        reg_pb.UpdateModelRequest(
            model=reg_pb.Model(name=made.name, title="Bench record", description="6,000 hours."),
            update_mask=field_mask_pb2.FieldMask(paths=["title", "description"]),
        ),
        metadata=made.owner.metadata,
    )
    await registry.PublishVersion(
        reg_pb.PublishVersionRequest(model=made.name, number=1), metadata=made.owner.metadata
    )
    rng = random.Random(1)  # noqa: S311 (bench data, not secrets)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = now - (runs + 60) * HOUR
    closes = [1.1]
    for _ in range(runs + 40):
        closes.append(closes[-1] * math.exp(rng.gauss(0.0002, 0.002)))
    await insert_bars(resources, symbol, [(start + i * HOUR, c) for i, c in enumerate(closes)])
    await set_calendar(resources.db, symbol, CRYPTO, by="bench", now=datetime.now(UTC))
    for i in range(runs):
        as_of = start + (i + 11) * HOUR
        up = rng.random() < 0.55
        forecast = F(
            "up" if up else "down", 0.002 if up else -0.002, round(0.5 + rng.random() * 0.4, 3)
        )
        await record_run(resources, made, as_of, [forecast], recorded_at=as_of + HOUR)
    return made


@dataclasses.dataclass
class Traffic:
    """REST responses (/v1/…) seen by the page: path → decoded body bytes, and their bodies."""

    bodies: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)
    wire: int = 0

    def total(self) -> int:
        return sum(len(b) for _, b in self.bodies)

    def by_endpoint(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for url, body in self.bodies:
            path = url.split("?")[0].split("/v1/", 1)[1]
            parts = path.split("/")
            key = "/".join(p if j % 2 == 0 else "*" for j, p in enumerate(parts))
            n, size = out.get(key, (0, 0))
            out[key] = (n + 1, size + len(body))
        return out


def _compact(value: object) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def shown_bytes(traffic: Traffic) -> tuple[int, int, int]:
    """Bytes of the data the playback page draws, as compact JSON of only the fields it uses:
    per forecast as_of, target time, direction, probability / predicted return; per bar open
    time and OHLC. Returns (bytes, forecasts, bars)."""
    size = forecasts = bars = 0
    for url, body in traffic.bodies:
        if "/forecasts" in url:
            for f in json.loads(body).get("forecasts", []):
                keys = ("asOf", "targetTime", "direction", "probability", "predictedReturn")
                size += _compact({k: f[k] for k in keys if k in f})
                forecasts += 1
        elif "/bars" in url:
            for message in json.loads(body):
                b = message.get("bars", {})
                keys = ("openTimesUnix", "opens", "highs", "lows", "closes")
                size += _compact({k: b.get(k, []) for k in keys})
                bars += len(b.get("openTimesUnix", []))
    return size, forecasts, bars


def streaming(request: Any) -> bool:
    return ":stream" in request.url


class InFlight:
    """A page's requests in flight but the stream of new forecasts, which the model page keeps
    open: with it, the page is never "networkidle" as Playwright means it."""

    def __init__(self, page: Any) -> None:
        self.requests: set[Any] = set()
        page.on("request", lambda r: None if streaming(r) else self.requests.add(r))
        page.on("requestfinished", lambda r: self.requests.discard(r))
        page.on("requestfailed", lambda r: self.requests.discard(r))

    async def idle(self) -> None:
        """Until nothing (but the stream) has been in flight for 500 ms, as "networkidle"."""
        quiet = 0
        while quiet < 5:
            await asyncio.sleep(0.1)
            quiet = 0 if self.requests else quiet + 1


def _chromium_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process's Chromium processes (browser,
    renderers, GPU): a frame's cost that other load on the machine does not inflate, unlike
    its wall-clock interval."""
    stats: dict[int, tuple[int, str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
        fields = rest.split()
        stats[int(entry.name)] = (int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / tick)

    def ours(pid: int) -> bool:
        while pid > 1 and pid in stats:
            pid = stats[pid][0]
            if pid == os.getpid():
                return True
        return False

    return sum(cpu for pid, (_, comm, cpu) in stats.items() if "chrom" in comm and ours(pid))


def _fps(intervals: list[float]) -> tuple[float, float]:
    """(fps at the median interval, fps at the 95th-percentile interval: the p5 of fps)."""
    ordered = sorted(intervals)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return 1000 / statistics.median(ordered), 1000 / p95


async def browse(base_url: str, name: str, email: str, loads: int) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path())
        context = await browser.new_context(
            base_url=base_url, viewport={"width": 1440, "height": 900}
        )
        await context.add_init_script(script=MARKS)
        page = await context.new_page()
        traffic = Traffic()
        pending: list[asyncio.Task[None]] = []
        inflight = InFlight(page)

        async def take(response: Any) -> None:
            if "/v1/" not in response.url or response.request.method == "OPTIONS":
                return
            if streaming(response.request):
                return  # its body ends only when the page is left
            try:
                body = await response.body()
                sizes = await response.request.sizes()
            except Exception:  # noqa: BLE001 (a response of a page already left)
                return
            traffic.bodies.append((response.url, body))
            traffic.wire += int(sizes.get("responseBodySize", 0))

        page.on("response", lambda r: pending.append(asyncio.ensure_future(take(r))))

        async def settle() -> Traffic:
            await inflight.idle()
            await asyncio.gather(*pending)
            pending.clear()
            taken = dataclasses.replace(traffic, bodies=list(traffic.bodies))
            traffic.bodies.clear()
            traffic.wire = 0
            return taken

        await page.goto("/sign-in")
        await page.get_by_label("Email").fill(email)
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("heading", name="Catalog").wait_for()
        await settle()

        # The model page, loaded afresh `loads` times (the first with a cold HTTP cache for
        # its chunks and the chart library).
        interactive: list[float] = []
        charts: list[float] = []
        model_traffic = Traffic()
        for _ in range(loads):
            await page.goto(f"/models/{name}")
            await page.locator('[data-testid="measures"]').wait_for()
            await page.locator("figure.line-chart canvas").first.wait_for()
            marks = await page.evaluate("window.__marks")
            interactive.append(marks["interactive"] / 1000)
            charts.append(marks["charts"] / 1000)
            model_traffic = await settle()
        # The alternative: the charts computed in the page from the forecast list (every
        # page of it, 1,000 a page: the most a page holds), timed and weighed in the page.
        alt = await page.evaluate(
            """async (name) => {
              const s = JSON.parse(localStorage.getItem('foretell.session'));
              const t0 = performance.now(); let bytes = 0; let token = ''; let n = 0;
              do {
                const q = new URLSearchParams(
                  {kind: 'RUN_KIND_LIVE', pageSize: '1000', pageToken: token});
                const r = await fetch(`/v1/models/${name}/forecasts?${q}`,
                  {headers: {authorization: `Bearer ${s.accessToken}`}});
                const text = await r.text(); bytes += text.length;
                const j = JSON.parse(text); n += (j.forecasts || []).length;
                token = j.nextPageToken || '';
              } while (token);
              return {ms: performance.now() - t0, bytes, n};
            }""",
            name,
        )
        await settle()

        # Playback: until ready, then page through the record with the scrubber.
        ready: list[float] = []
        play_traffic = Traffic()
        for _ in range(loads):
            await page.goto(f"/models/{name}/playback")
            await page.locator('[data-ready="true"]').wait_for()
            ready.append((await page.evaluate("window.__marks"))["playback"] / 1000)
            play_traffic = await settle()
        delayed = await page.get_by_test_id("delayed").count()
        scrubber = page.locator("#scrubber")
        maximum = int(await scrubber.get_attribute("max") or 0)
        for position in range(0, maximum + 1, max(1, maximum // 50)):
            await scrubber.fill(str(position))
        await scrubber.fill(str(maximum))
        made = await page.get_by_test_id("made").inner_text()
        paging = await settle()

        # Frames: idle on the same page (the browser's own rate), then playing at 64 bars a
        # frame from the start, three times.
        await scrubber.fill("0")
        idle = await page.evaluate(FRAMES, [2000, False])
        await scrubber.fill("30")
        slow = await page.evaluate(FRAMES, [3000, True])
        await page.get_by_label("Speed").select_option("64")
        playing: list[float] = []
        cpu = 0.0
        for _ in range(3):
            await scrubber.fill("0")
            before = _chromium_cpu_s()
            playing += await page.evaluate(FRAMES, [0, True])
            cpu += _chromium_cpu_s() - before
        await browser.close()

    print(f"model page ({loads} loads, signed in as the owner: the whole record)")
    print(
        f"  interactive (measures table): median {statistics.median(interactive):.3f} s, "
        f"first {interactive[0]:.3f} s, all {[round(x, 3) for x in interactive]}"
    )
    print(f"  charts drawn: median {statistics.median(charts):.3f} s, first {charts[0]:.3f} s")
    verdict = "met" if statistics.median(interactive) <= INTERACTIVE_TARGET_S else "NOT met"
    print(f"  target: interactive <= {INTERACTIVE_TARGET_S} s: {verdict}")
    print(
        f"  REST downloaded: {model_traffic.total() / 1024:.1f} KB JSON "
        f"({model_traffic.wire / 1024:.1f} KB on the wire)"
    )
    for key, (n, size) in sorted(model_traffic.by_endpoint().items()):
        print(f"    {key}: {n} x, {size / 1024:.1f} KB")
    print(
        f"  alternative, charts from the forecast list: {alt['n']} forecasts, "
        f"{alt['bytes'] / 1024:.1f} KB JSON, {alt['ms'] / 1000:.3f} s to fetch alone"
    )
    print("playback page")
    print(
        f"  ready: median {statistics.median(ready):.3f} s, first {ready[0]:.3f} s, "
        f"all {[round(x, 3) for x in ready]}"
    )
    shown, n_forecasts, n_bars = shown_bytes(play_traffic)
    total = play_traffic.total()
    print(
        f"  REST downloaded: {total / 1024:.1f} KB JSON ({play_traffic.wire / 1024:.1f} KB "
        f"on the wire)"
    )
    for key, (n, size) in sorted(play_traffic.by_endpoint().items()):
        print(f"    {key}: {n} x, {size / 1024:.1f} KB")
    print(
        f"  data shown paging through the record: {n_forecasts} forecasts, {n_bars} bars, "
        f"{shown / 1024:.1f} KB as compact JSON of the fields drawn; downloaded/shown "
        f"{total / shown:.2f}"
    )
    print(
        f"  paging through with the scrubber ({maximum + 1} bars, {made} forecasts made at the "
        f"end): {len(paging.bodies)} more REST requests; delayed-sample notice: {delayed}"
    )
    fps_med, fps_p5 = _fps(playing)
    idle_med, idle_p5 = _fps(idle)
    print(
        f"  frames at 64 bars a frame: {len(playing)} intervals, {fps_med:.1f} fps median, "
        f"{fps_p5:.1f} fps p5 (worst interval {max(playing):.1f} ms)"
    )
    print(
        f"  Chromium CPU while playing at 64 bars a frame: {cpu * 1000 / len(playing):.1f} ms a "
        f"frame (all its processes; a frame at 60 fps lasts 16.7 ms)"
    )
    print(
        f"  alternative, the same page idle: {len(idle)} intervals, {idle_med:.1f} fps median, "
        f"{idle_p5:.1f} fps p5"
    )
    slow_med, slow_p5 = _fps(slow)
    print(
        f"  for comparison, 1 bar a frame for 3 s: {len(slow)} intervals, {slow_med:.1f} fps "
        f"median, {slow_p5:.1f} fps p5"
    )
    verdict = "met" if fps_med >= FPS_TARGET else "NOT met"
    print(f"  target: playback >= {FPS_TARGET:.0f} fps (median): {verdict}")


@contextlib.asynccontextmanager
async def stack(root: Path) -> AsyncIterator[tuple[Resources, int]]:
    """PostgreSQL, Redis and every service in this process, under `root`, with the rate limits
    out of the way: the resources and the services' port."""
    async with database(root) as db_url, redis(root) as redis_url:
        settings = dataclasses.replace(
            Settings(),
            data_dir=root / "data",
            database_url=db_url,
            redis_url=redis_url,
            auth_rate_limit_per_min=100_000,
            auth_rate_limit_per_client_per_min=100_000,
            expensive_rate_limit_per_min=100_000,
            expensive_rate_limit_per_client_per_min=100_000,
            shutdown_grace_s=0.5,
            queue_name=f"foretell-bench:{uuid.uuid4().hex[:8]}",
        )
        async with open_resources(settings) as resources:
            server = await start_services(resources, list(SERVICES), Address("127.0.0.1", 0))
            try:
                yield resources, server.port
            finally:
                await server.stop(0.5)


def gateway(resources: Resources, port: int, root: Path) -> AbstractAsyncContextManager[Envoy]:
    """Envoy in front of the services on `port`, serving the built app."""
    upstream = Address("127.0.0.1", port)
    return running_envoy(resources.settings, dict.fromkeys(SERVICES, upstream), root / "envoy")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forecasts", type=int, default=6000)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    if chromium_path() is None:
        print("no chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ftw-", dir="/tmp") as tmp:
        root = Path(tmp)
        root.chmod(0o711)
        async with stack(root) as (resources, port):
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                t0 = time.monotonic()
                made = await seed(channel, resources, args.forecasts)
                print(
                    f"recorded {args.forecasts} hourly forecasts in {time.monotonic() - t0:.0f} s"
                )
            async with gateway(resources, port, root) as envoy:
                await browse(envoy.base_url, made.name, made.owner.email, args.loads)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
