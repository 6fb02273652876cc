"""Sandbox overhead: a trivial model run through the full sandbox (`run_in_sandbox`: policy
rendering, cgroups, nsjail, namespaces, mounts, seccomp, supervision and clean-up) against the
same Python executable with the same argv started as a plain subprocess, in one run.

    .venv/bin/python bench/sandbox.py [--runs 50] [--seconds 10] [--concurrency 2 4]

Needs root (nsjail), as the sandbox does.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from foretell.sandbox import Outcome, SandboxLimits, run_in_sandbox, system_python

# A trivial model: import the entry module and print its answer.
ARGV = ["-c", "import model; print(model.predict())"]
LIMITS = SandboxLimits(wall_seconds=10, cpu_seconds=10, memory_mib=256)


def make_image(root: Path) -> Path:
    image = root / "image"
    (image / "app").mkdir(parents=True)
    (image / "site-packages").mkdir()
    (image / "app" / "model.py").write_text("def predict():\n    return 42\n")
    for path in (image, image / "app", image / "site-packages"):
        path.chmod(0o755)
    return image


async def sandboxed(image: Path, root: Path) -> float:
    run_dir = root / f"r{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    result = await run_in_sandbox(image, run_dir, ARGV, LIMITS)
    elapsed = time.perf_counter() - started
    if result.outcome is not Outcome.OK or result.stdout.strip() != "42":
        raise SystemExit(f"sandboxed run failed: {result.outcome} {result.detail}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return elapsed


async def plain(image: Path) -> float:
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        str(system_python().executable), *ARGV,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PYTHONPATH": str(image / "app")},
    )  # fmt: skip
    stdout, _ = await process.communicate()
    elapsed = time.perf_counter() - started
    if process.returncode != 0 or stdout.strip() != b"42":
        raise SystemExit(f"plain run failed: {process.returncode}")
    return elapsed


async def sustained(image: Path, root: Path, concurrency: int, seconds: float) -> float:
    deadline = time.perf_counter() + seconds
    done = 0

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await sandboxed(image, root)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def main_async(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="ftbsb-", dir="/tmp"))
    root.chmod(0o711)
    try:
        image = make_image(root)
        for _ in range(3):  # warm-up: page cache, nsjail binary, cgroup parents
            await sandboxed(image, root)
            await plain(image)
        jail_s: list[float] = []
        plain_s: list[float] = []
        for _ in range(args.runs):  # interleaved, so drift weighs on both alike
            jail_s.append(await sandboxed(image, root))
            plain_s.append(await plain(image))
        jail_ms = statistics.median(jail_s) * 1000
        plain_ms = statistics.median(plain_s) * 1000
        added = statistics.median(j - p for j, p in zip(jail_s, plain_s, strict=True)) * 1000
        print(f"{args.runs} sequential runs each, interleaved; argv {ARGV}:")
        print(
            f"(a) sandboxed (run_in_sandbox)  median {jail_ms:6.1f} ms"
            f"   min {min(jail_s) * 1000:6.1f}   p90 {_p90(jail_s):6.1f}"
        )
        print(
            f"(b) plain subprocess, same exe  median {plain_ms:6.1f} ms"
            f"   min {min(plain_s) * 1000:6.1f}   p90 {_p90(plain_s):6.1f}"
        )
        print(f"added by the sandbox: median of per-pair differences {added:.1f} ms")
        rates = {}
        for concurrency in args.concurrency:
            rates[concurrency] = await sustained(image, root, concurrency, args.seconds)
            print(
                f"sustained, {concurrency} concurrent for {args.seconds:.0f} s: "
                f"{rates[concurrency]:.1f} sandboxed runs/s"
            )
        best = max(rates.values())
        print(
            f"overhead {added:.1f} ms per run (target: at most 30 ms: "
            f"{'met' if added <= 30 else 'not met'}); "
            f"{best:.1f} runs/s sustained (target: at least 8: {'met' if best >= 8 else 'not met'})"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _p90(seconds: list[float]) -> float:
    return statistics.quantiles(seconds, n=10)[8] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="sequential runs of each kind")
    parser.add_argument("--seconds", type=float, default=10.0, help="per sustained measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[2, 4])
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
