"""How often a jail fails to run the model, by how it is started and what ran before it.

    .venv/bin/python bench/jail_faults.py [--starts 200] [--rounds 10]

Needs root (nsjail), as the sandbox does. Two parts, each counting the runs that ended in
JailDidNotRun by how nsjail ended:

1. Starts beside a busy gRPC server, on uvloop (the serving processes' loop, where dry runs
   used to run): `--starts` trivial runs with nsjail started by the loop's own
   `subprocess_exec` (how the sandbox started it before), interleaved with as many started by
   `foretell.sandbox._spawn.spawn_jail` (`subprocess.Popen`, how it starts it now).
2. Hostile models back to back, as issue 14 saw them (a memory bomb, an output flood, a
   sleeper past the wall clock, a fork bomb, then an ordinary model), `--rounds` times, cold,
   on the standard loop, the way a worker runs them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import uvloop
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from foretell.sandbox import JailDidNotRun, SandboxLimits, run_in_sandbox
from foretell.sandbox import _run as sandbox_run
from foretell.sandbox._spawn import JailProcess, spawn_jail

TRIVIAL = ["-c", "print(42)"]
LIMITS = SandboxLimits(wall_seconds=3, cpu_seconds=3, memory_mib=256)
HOSTILE = {
    "memory bomb": 'c = []\nfor _ in range(32):\n    c.append(b"\\x01" * (64 << 20))\n',
    "output flood": (
        "import sys\nline = 'flood ' + 'x' * 1017 + '\\n'\n"
        "for _ in range(10 * 1024):\n    sys.stdout.write(line)\n"
    ),
    "sleeper": "import time\ntime.sleep(60)\n",
    "fork bomb": (
        "import os, time\nwhile True:\n    try:\n        if os.fork() == 0:\n"
        "            time.sleep(30)\n    except OSError:\n        break\n"
    ),
    "ordinary": "import json, statistics\nprint(json.dumps(statistics.mean([1, 2, 3])))\n",
}


class LoopStarted(JailProcess):
    """nsjail started by the running loop's `subprocess_exec`, as the sandbox did before."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        assert process.stderr is not None
        self.process = process
        self.stdout = process.stdout
        self.stderr = process.stderr

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

    async def wait(self) -> int:
        return await self.process.wait()

    def close_pipes(self) -> None:
        """The loop's subprocess transport closes its pipes itself."""


async def loop_spawn(argv: Sequence[str], *, pass_fds: Sequence[int] = ()) -> JailProcess:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={},
        pass_fds=tuple(pass_fds),
    )
    return LoopStarted(process)


def make_image(root: Path) -> Path:
    image = root / "image"
    for path in (image / "app", image / "site-packages"):
        path.mkdir(parents=True)
    for path in (image, image / "app", image / "site-packages"):
        path.chmod(0o755)
    return image


async def one(image: Path, root: Path, argv: list[str]) -> str:
    run_dir = root / f"r{uuid.uuid4().hex[:8]}"
    try:
        result = await run_in_sandbox(image, run_dir, argv, LIMITS)
    except JailDidNotRun as error:
        return f"did not run ({error.reason.split('; ')[1].split(',')[0]})"
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result.outcome.value


async def starts(image: Path, root: Path, count: int) -> None:
    server = aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    stop = asyncio.Event()

    async def hammer() -> None:
        while not stop.is_set():
            await stub.Check(health_pb2.HealthCheckRequest())

    load = [asyncio.create_task(hammer()) for _ in range(4)]
    counts: dict[str, collections.Counter[str]] = {
        "loop's subprocess_exec (before)": collections.Counter(),
        "spawn_jail, subprocess.Popen (now)": collections.Counter(),
    }
    try:
        for _ in range(count):  # interleaved, so load and drift weigh on both alike
            for counter, spawn in zip(counts.values(), (loop_spawn, spawn_jail), strict=True):
                # The one seam: how `run_in_sandbox` starts nsjail.
                vars(sandbox_run)["spawn_jail"] = spawn
                counter[await one(image, root, TRIVIAL)] += 1
    finally:
        vars(sandbox_run)["spawn_jail"] = spawn_jail
        stop.set()
        await asyncio.gather(*load, return_exceptions=True)
        await channel.close()
        await server.stop(0)
    print(f"1. {count} starts each on uvloop beside a busy gRPC server (trivial model):")
    for label, counter in counts.items():
        failed = sum(n for outcome, n in counter.items() if outcome.startswith("did not run"))
        print(f"   {label:36} {failed:4} did not run   {dict(sorted(counter.items()))}")


async def hostile(image: Path, root: Path, rounds: int) -> None:
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    started = time.perf_counter()
    for _ in range(rounds):
        for name, code in HOSTILE.items():
            counts[(name, await one(image, root, ["-c", code]))] += 1
    failed = sum(n for (_name, outcome), n in counts.items() if outcome.startswith("did not"))
    print(
        f"2. {rounds} rounds of hostile models back to back, cold, standard loop "
        f"({time.perf_counter() - started:.0f} s): {failed} of {sum(counts.values())} did not run"
    )
    for (name, outcome), n in sorted(counts.items()):
        print(f"   {name:14} {outcome:30} {n}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=200, help="starts of each kind (part 1)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of hostile models")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ftbjf-", dir="/tmp"))
    root.chmod(0o711)
    try:
        image = make_image(root)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(starts(image, root, args.starts))
        asyncio.run(hostile(image, root, args.rounds))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
