"""`foretell push`, measured end to end and in parts, in one run:

  1. Push to READY: `foretell up` starts the whole platform (embedded PostgreSQL and Redis, the
     services, the build worker, Envoy) with a local wheelhouse; the provider CLI, as a user
     runs it, pushes (a) the model `foretell init` scaffolds and (b) the same model requiring
     numpy and pandas, each three times with fresh content, and each push is timed from start
     to exit (`push` follows the build and exits 0 once the version is READY), then split by
     the server's timestamps (upload, queue, build, exit). The simple alternative, in the
     same rounds: a plain `pip install --only-binary :all: --target X -r requirements.txt` of
     (b)'s requirements from the same wheelhouse, and the same with --no-compile (as the
     builder runs pip).
  2. Bundling: packing a model folder into its canonical bundle with its digest, against
     `tar -cf - -C DIR . | sha256sum` on the same folder.

    .venv/bin/python bench/push.py [--size-mb 50] [--skip-push] [--skip-bundling]

The wheelhouse is .build/wheelhouse; when it lacks numpy or pandas, `pip download` fills it
first (timed apart, not part of any push).

For the bundling, the folder is made here, deterministically (a seeded random): a few thousand
small .py and .csv files plus some larger binary files, as a model with its data and weights
would be. Both sides read it from the page cache (each is run once before timing) and the best
of 3 runs counts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import redis
from arq.jobs import deserialize_result

from foretell.bundle import Limits, pack_dir, read_bundle

TARGET_RATIO = 1.5
RUNS = 3
MB = 1_000_000
SMALL_FILES = 3_000
# A share of the size goes to small files, the rest to a few large binaries.
SMALL_SHARE = 0.3
LARGE_FILE_MB = 6


def make_model_folder(root: Path, size_mb: int, seed: int = 20261122) -> tuple[int, int]:
    """Writes a model-like folder of about `size_mb` MB; returns (files, bytes)."""
    # Reproducible content, not secrets: the same seed gives the same folder on every machine.
    rng = random.Random(seed)  # noqa: S311
    small_budget = int(size_mb * MB * SMALL_SHARE)
    files = 0
    written = 0
    words = ["bars", "close", "signal", "window", "alpha", "beta", "horizon", "returns", "vol"]
    for i in range(SMALL_FILES):
        package = root / f"pkg{i % 12}" / f"sub{i % 7}"
        package.mkdir(parents=True, exist_ok=True)
        target = small_budget // SMALL_FILES
        if i % 3:
            lines: list[str] = []
            while sum(len(line) for line in lines) < target:
                a, b = rng.sample(words, 2)
                lines.append(f"def {a}_{b}_{len(lines)}(x):\n    return x * {rng.random():.6f}\n")
            content = "".join(lines)
            path = package / f"mod_{i}.py"
        else:
            rows = ["time,open,high,low,close,volume\n"]
            while sum(len(row) for row in rows) < target:
                p = rng.uniform(1, 2)
                volume = rng.randint(1, 10**6)
                rows.append(f"{len(rows)},{p:.5f},{p + 0.001:.5f},{p:.5f},{p:.5f},{volume}\n")
            content = "".join(rows)
            path = package / f"data_{i}.csv"
        path.write_text(content)
        files += 1
        written += len(content)
    weights = root / "weights"
    weights.mkdir()
    i = 0
    while written < size_mb * MB:
        size = min(LARGE_FILE_MB * MB, size_mb * MB - written)
        (weights / f"layer_{i}.bin").write_bytes(rng.randbytes(size))
        files += 1
        written += size
        i += 1
    (root / "foretell.toml").write_text(
        '[model]\nentrypoint = "pkg1.sub1.mod_1:predict"\nsymbols = ["EURUSD"]\n'
        'resolution = "1h"\nhorizon = 24\nlookback = 500\n'
    )
    return files + 1, written


def _best(run: Callable[[], object]) -> float:
    run()  # warm the page cache and the code paths
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _tar_sha256sum(folder: Path) -> str:
    # The shell's pipeline, built without a shell: tar's stdout feeds sha256sum's stdin.
    tar = subprocess.Popen(["tar", "-cf", "-", "-C", str(folder), "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    digest = subprocess.run(
        ["sha256sum"], stdin=tar.stdout, capture_output=True, check=True
    ).stdout.decode()
    tar.stdout.close()
    if tar.wait() != 0:
        raise RuntimeError("tar failed")
    return digest


def bench_bundling(size_mb: int = 50) -> None:
    with tempfile.TemporaryDirectory(prefix="ft-bench-") as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        files, size = make_model_folder(folder, size_mb)
        # The benchmark measures speed, not the default limits (2,000 files, 64 MiB).
        limits = Limits(
            max_bundle_bytes=2 * size + MB,
            max_entries=2 * files,
            max_file_bytes=size,
            max_total_bytes=2 * size,
        )
        bundle = pack_dir(folder, limits)
        # What is measured must be a bundle the server accepts.
        assert read_bundle(bundle.data, limits).digest == bundle.digest
        packed = _best(lambda: pack_dir(folder, limits))
        piped = _best(lambda: _tar_sha256sum(folder))
    print(f"Bundling a {size / MB:.1f} MB folder ({files} files), best of {RUNS}:")
    for name, seconds in (
        ("(a) pack_dir (bundle + digest)", packed),
        ("(b) tar -cf - | sha256sum", piped),
    ):
        print(f"{name:<32} {size / MB / seconds:>7.0f} MB/s  {seconds * 1000:>7.1f} ms")
    ratio = packed / piped
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(
        f"pack_dir takes {ratio:.2f}x the time of tar | sha256sum "
        f"(target: bundling within {TARGET_RATIO}x of tar | sha256sum: {verdict}); "
        f"bundle {bundle.size / MB:.1f} MB, {bundle.digest[:19]}..."
    )


# --- push to READY ------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
WHEELHOUSE = REPO / ".build" / "wheelhouse"
READY_TARGET_S = 5.0
PUSH_RUNS = 3
PASSWORD = "correct horse battery"
BANNER_END = "Ctrl-C stops everything."
START_TIMEOUT_S = 180.0
PUSH_TIMEOUT_S = 900.0
BUILD_LOG_PREFIX = "foretell:build-log:"
SCAFFOLD = "bench-scaffold"
NUMPY_PANDAS = "bench-numpy-pandas"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _console_script(name: str) -> str:
    # The venv's own console scripts sit next to its interpreter.
    return str(Path(sys.executable).with_name(name))


def _without_foretell_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FORETELL_")}


def _wheels(wheelhouse: Path, project: str) -> list[Path]:
    return sorted(wheelhouse.glob(f"{project}-*.whl"))


def ensure_wheelhouse(wheelhouse: Path) -> float | None:
    """Fills `wheelhouse` with numpy and pandas wheels (and theirs) if it lacks them; returns
    the seconds that took, or None when they were there already."""
    if _wheels(wheelhouse, "numpy") and _wheels(wheelhouse, "pandas"):
        return None
    wheelhouse.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--only-binary", ":all:",
         "--dest", str(wheelhouse), "numpy", "pandas"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"pip download failed:\n{result.stdout}{result.stderr}")
    return time.perf_counter() - start


class Platform:
    """`foretell up` as a subprocess: a fresh data directory, free ports, no FORETELL_* from
    this environment but the wheelhouse. Its output is drained by a thread all along, so that
    a full pipe never stalls it."""

    def __init__(self, wheelhouse: Path) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="ft-bench-", dir="/tmp"))
        self.http_port = _free_port()
        self.env = _without_foretell_env() | {
            "FORETELL_DATA_DIR": str(self.data_dir),
            "FORETELL_HTTP_ADDR": f"127.0.0.1:{self.http_port}",
            "FORETELL_GRPC_ADDR": f"127.0.0.1:{_free_port()}",
            "FORETELL_METRICS_ADDR": f"127.0.0.1:{_free_port()}",
            "FORETELL_ENVOY_ADMIN_ADDR": f"127.0.0.1:{_free_port()}",
            "FORETELL_WHEELHOUSE": str(wheelhouse),
        }
        self.lines: list[str] = []
        self.redis_url = ""
        self._banner = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _drain(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        for line in self._process.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if found := re.match(r"\s+Redis\s+(\S+)", line):
                self.redis_url = found.group(1)
            if line.strip() == BANNER_END:
                self._banner.set()

    def start(self) -> float:
        """Starts the platform and waits for its banner and its worker; returns the seconds."""
        started = time.perf_counter()
        self._process = subprocess.Popen(
            [_console_script("foretell"), "up"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        deadline = started + START_TIMEOUT_S
        while not self._banner.wait(0.1):
            if self._process.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError("foretell up did not start:\n" + self.tail())
        # The banner waits for the services' health checks, not for the worker's start.
        while not any(_is_worker_ready(line) for line in list(self.lines)):
            if self._process.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError("the worker did not start:\n" + self.tail())
            time.sleep(0.05)
        return time.perf_counter() - started

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.lines[-lines:])

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                # Its own session, started here: the group is this run's and nothing else's.
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _is_worker_ready(line: str) -> bool:
    process, _, text = line.partition("|")
    # The build lane's worker takes the builds (`foretell up` starts one worker per lane).
    return process.split()[-1:] == ["worker-build"] and "worker started" in text


@dataclass
class Push:
    seconds: float
    started: float  # wall clock, to compare with the server's timestamps
    version: dict[str, Any]
    build_log: list[tuple[float, str]]  # (wall clock, line) from the build log's stream
    job_started: float | None  # wall clock: when the worker took the build job

    @property
    def created(self) -> float:
        return _wall(self.version["createTime"])

    @property
    def finished(self) -> float:
        return _wall(self.version["buildFinishTime"])

    def breakdown(self) -> str:
        taken = self.job_started or self.created
        unpacked = self.build_log[0][0] if self.build_log else taken
        return (
            f"pack+upload {self.created - self.started:.2f}, "
            f"queued {taken - self.created:.2f}, "
            f"unpack {unpacked - taken:.2f}, "
            f"build {self.finished - unpacked:.2f}, "
            f"until exit {self.started + self.seconds - self.finished:.2f}"
        )


def _wall(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


class Provider:
    """The provider CLI, run as a user runs it, signed in with its own config directory."""

    def __init__(self, platform: Platform, config_dir: Path) -> None:
        self.platform = platform
        self.env = _without_foretell_env() | {
            "FORETELL_URL": platform.url,
            "FORETELL_CONFIG_DIR": str(config_dir),
        }
        self.redis = redis.Redis.from_url(platform.redis_url)
        self._seen_logs: set[str] = set()

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [_console_script("foretell"), *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=PUSH_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"foretell {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def sign_up(self, email: str) -> None:
        body = {
            "email": email,
            "password": PASSWORD,
            "displayName": "Bench",
            "role": "ROLE_PROVIDER",
        }
        request = urllib.request.Request(  # noqa: S310 (a URL built here, http to localhost)
            f"{self.platform.url}/v1/users",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            assert response.status == 200
        self.cli("login", "--email", email, "--password-stdin", stdin=PASSWORD + "\n")

    def model(self, folder: Path, name: str, title: str) -> None:
        self.cli("init", str(folder))
        self.cli("create", name, "--title", title, "--symbol", "EURUSD",
                 "--resolution", "1h", "--horizon", "1")  # fmt: skip

    def push(self, folder: Path, name: str) -> Push:
        argv = [_console_script("foretell"), "push", str(folder), "--model", name, "--json"]
        started = time.time()
        start = time.perf_counter()
        result = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=PUSH_TIMEOUT_S, check=False
        )
        seconds = time.perf_counter() - start
        try:
            document = json.loads(result.stdout)
        except json.JSONDecodeError:
            document = {}
        version = document.get("version", {})
        if result.returncode != 0 or version.get("buildState") != "BUILD_STATE_READY":
            raise RuntimeError(
                f"push of {name} exited {result.returncode}, not READY:\n"
                f"{result.stdout}{result.stderr}"
            )
        if not document.get("created"):
            raise RuntimeError(f"push of {name} made no new version: the content was not fresh")
        log_key = self._new_build_log_key()
        if log_key is None:
            return Push(seconds, started, version, [], None)
        version_id = log_key.removeprefix(BUILD_LOG_PREFIX)
        return Push(seconds, started, version, self._lines(log_key), self._job_start(version_id))

    def _new_build_log_key(self) -> str | None:
        # The version's id is not in the API: the new build log stream is the one not seen
        # before this push.
        keys = {key.decode() for key in self.redis.scan_iter(match=BUILD_LOG_PREFIX + "*")}
        new = keys - self._seen_logs
        self._seen_logs |= keys
        return new.pop() if len(new) == 1 else None

    def _lines(self, log_key: str) -> list[tuple[float, str]]:
        # The stream stamps every line: its entry ids start with milliseconds since the epoch.
        lines = []
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], self.redis.xrange(log_key))
        for entry_id, fields in entries:
            if b"line" in fields:
                millis = int(entry_id.split(b"-")[0])
                lines.append((millis / 1000, fields[b"line"].decode(errors="replace")))
        return lines

    def _job_start(self, version_id: str) -> float | None:
        # arq keeps each finished job's result, with its start time, for an hour. The job
        # returns just after the build log ends, so its result may lag the push by a moment.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            for key in self.redis.scan_iter(match=f"arq:result:build:{version_id}:*"):
                raw = cast(bytes | None, self.redis.get(key))
                if raw is not None:
                    return deserialize_result(raw).start_time.timestamp()
            time.sleep(0.02)
        return None

    def close(self) -> None:
        self.redis.close()


def _freshen(folder: Path, run: int) -> None:
    with (folder / "model.py").open("a") as f:
        f.write(f"# bench push {run}\n")


def _summary(times: list[float]) -> str:
    return f"best {min(times):.2f} s, median {statistics.median(times):.2f} s"


def pip_install(requirements: Path, wheelhouse: Path, scratch: Path, *extra: str) -> float:
    """What a provider's own build would do: a plain pip install of the requirements from the
    same wheelhouse into an empty directory, with an environment as clean as the builder's.
    Returns the seconds it took."""
    target = Path(tempfile.mkdtemp(prefix="target-", dir=scratch))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_CACHE_DIR": str(scratch / "pip-cache"),
    }
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--only-binary", ":all:", *extra,
         "--target", str(target), "-r", str(requirements),
         "--no-index", "--find-links", str(wheelhouse)],
        env=env, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    # At once, so that its unwritten pages do not weigh on the next run's writes.
    shutil.rmtree(target)
    return seconds


def _print_build_log(push: Push) -> None:
    print(f"  build log of version {push.version['number']}, seconds since `foretell push`:")
    print(f"    {push.created - push.started:6.2f}  (version created, build queued)")
    if push.job_started is not None:
        print(f"    {push.job_started - push.started:6.2f}  (the worker takes the build job)")
    for stamp, line in push.build_log:
        print(f"    {stamp - push.started:6.2f}  {line[:90]}")
    print(f"    {push.finished - push.started:6.2f}  (build finished, recorded)")
    print(f"    {push.seconds:6.2f}  (foretell push exits)")


def _numpy_pandas_model(provider: Provider, folder: Path) -> Path:
    """The scaffolded model, requiring and importing numpy and pandas; returns its
    requirements file."""
    provider.model(folder, NUMPY_PANDAS, "Bench numpy pandas")
    requirements = folder / "requirements.txt"
    requirements.write_text(requirements.read_text() + "numpy\npandas\n")
    model = folder / "model.py"
    model.write_text("import numpy, pandas  # noqa: F401\n" + model.read_text())
    return requirements


def _times(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def bench_push() -> None:
    downloaded = ensure_wheelhouse(WHEELHOUSE)
    if downloaded is None:
        print(f"Wheelhouse {WHEELHOUSE}: numpy and pandas wheels already there")
    else:
        print(f"Wheelhouse {WHEELHOUSE}: pip download numpy pandas took {downloaded:.1f} s")
    platform = Platform(WHEELHOUSE)
    work = Path(tempfile.mkdtemp(prefix="ft-bench-cli-", dir="/tmp"))
    provider: Provider | None = None
    plain: list[Push] = []
    numeric: list[Push] = []
    pip_plain: list[float] = []
    pip_bare: list[float] = []
    try:
        print(f"foretell up: ready (banner and worker) in {platform.start():.1f} s")
        provider = Provider(platform, work / "config")
        provider.sign_up(f"bench-{uuid.uuid4().hex[:8]}@example.com")
        scaffold, heavy = work / SCAFFOLD, work / NUMPY_PANDAS
        provider.model(scaffold, SCAFFOLD, "Bench scaffold")
        requirements = _numpy_pandas_model(provider, heavy)
        print(
            f"{PUSH_RUNS} rounds, one after the other; each push uploads fresh content:\n"
            "(a) foretell push, the scaffolded model (`foretell init`), to READY\n"
            "(b) foretell push, the same requiring numpy and pandas, to READY\n"
            "(c) pip install --only-binary :all: --target X -r requirements.txt, (b)'s "
            "requirements, same wheelhouse\n"
            "(d) the same with --no-compile, as the builder runs it"
        )
        for run in range(1, PUSH_RUNS + 1):
            for folder in (scaffold, heavy):
                _freshen(folder, run)
            plain.append(provider.push(scaffold, SCAFFOLD))
            numeric.append(provider.push(heavy, NUMPY_PANDAS))
            pip_plain.append(pip_install(requirements, WHEELHOUSE, work))
            pip_bare.append(pip_install(requirements, WHEELHOUSE, work, "--no-compile"))
            print(
                f"  round {run}: (a) {plain[-1].seconds:.2f} s  (b) {numeric[-1].seconds:.2f} s  "
                f"(c) {pip_plain[-1]:.2f} s  (d) {pip_bare[-1]:.2f} s"
            )
            print(f"    (a) {plain[-1].breakdown()}")
            print(f"    (b) {numeric[-1].breakdown()}")

        print("\nWhere the time of the median scaffolded push goes:")
        _print_build_log(sorted(plain, key=lambda p: p.seconds)[len(plain) // 2])
        print("Where the time of the last numpy+pandas push goes:")
        _print_build_log(numeric[-1])
    finally:
        if provider is not None:
            provider.close()
        platform.stop()
        shutil.rmtree(work, ignore_errors=True)
    _push_verdict(plain, numeric, pip_plain, pip_bare)


def _push_verdict(
    plain: list[Push], numeric: list[Push], pip_plain: list[float], pip_bare: list[float]
) -> None:
    plain_s = [p.seconds for p in plain]
    numeric_s = [p.seconds for p in numeric]
    print(f"\nPush to READY (`foretell push --json`, start to exit), {PUSH_RUNS} runs each:")
    print(f"(a) scaffolded model            {_summary(plain_s)}")
    print(
        f"(b) numpy + pandas              {_summary(numeric_s)}; "
        f"first (fresh pip cache) {numeric_s[0]:.2f} s, later {_times(numeric_s[1:])} s"
    )
    print(f"(c) pip install, same reqs      {_summary(pip_plain)}")
    print(f"(d) pip install --no-compile    {_summary(pip_bare)}")
    median_plain = statistics.median(plain_s)
    verdict = "met" if median_plain < READY_TARGET_S else "NOT met"
    print(
        f"scaffolded model READY in {median_plain:.2f} s median "
        f"(target: under {READY_TARGET_S:.0f} s: {verdict})"
    )
    median_numeric = statistics.median(numeric_s)
    median_pip, median_bare = statistics.median(pip_plain), statistics.median(pip_bare)
    print(
        f"numpy + pandas push to READY: {median_numeric / median_pip:.2f}x the time of a plain "
        f"pip install of its requirements ({median_numeric - median_pip:+.2f} s), "
        f"{median_numeric / median_bare:.2f}x the time of one without bytecode "
        f"({median_numeric - median_bare:+.2f} s), medians"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=int, default=50, help="size of the bundled folder")
    parser.add_argument("--skip-push", action="store_true", help="skip the push to READY")
    parser.add_argument("--skip-bundling", action="store_true", help="skip the bundling")
    args = parser.parse_args()
    if not args.skip_push:
        bench_push()
    if not args.skip_bundling:
        if not args.skip_push:
            print()
        bench_bundling(args.size_mb)


if __name__ == "__main__":
    main()
