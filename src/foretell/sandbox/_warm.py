"""One warm template: a jail with the run policy whose first process (`foretell.sdk._fork`) has
imported the SDK and the layer's wheels, and forks one child per run, one run at a time.

The jail is nsjail with the same policy as a cold run (namespaces, read-only mounts, seccomp,
rlimits, the cgroup memory/pids/CPU limits of a run), but with no wall clock of its own (the
worker times each run), SysV IPC refused, and two directories of its own bound where a run's
are: `app/` at /image/app, which the worker fills with the version's code for each run and
empties after, and `sock/` at /run/foretell, where the worker serves the run's own run-scoped
server for that run only. So a run's child reaches its run's server and code and nothing of
another run: runs in one template are sequential and the template kills whatever a run left
(processes, /tmp, IPC) before the next; concurrent runs are in different templates, different
jails. The control channel is a socket pair whose jail end only the template holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from foretell.sandbox._capture import CappedOutput, finish_drains
from foretell.sandbox._cgroups import CgroupHost, RunCgroups, create_run_cgroups
from foretell.sandbox._errors import SandboxError
from foretell.sandbox._host import PythonRuntime, check_reachable, die_with_parent, nsjail_binary
from foretell.sandbox._limits import JailUser, SandboxLimits
from foretell.sandbox._outcome import Ending, SandboxResult, classify
from foretell.sandbox._policy import SOCKET_NAME, RunPaths, policy_values, render_template
from foretell.sandbox._spawn import JailProcess, read_pipe, spawn_jail

# A template answers a fork request at once; longer means it hangs.
FORK_TIMEOUT_S = 5.0
_DRAIN_TIMEOUT_S = 5.0
_MESSAGE = 1 << 16


class TemplateFailed(SandboxError):
    """The template died, hung or could not start: nothing it says can be trusted for this
    run, which starts again cold."""


async def _receive(control: socket.socket, within_s: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    try:
        data = await asyncio.wait_for(loop.sock_recv(control, _MESSAGE), within_s)
    except TimeoutError:
        raise TemplateFailed(f"the template did not answer within {within_s:.0f} s") from None
    except OSError as error:
        raise TemplateFailed(f"the template's control socket failed: {error}") from None
    if not data:
        raise TemplateFailed("the template ended")
    message = json.loads(data)
    if not isinstance(message, dict):
        raise TemplateFailed("the template sent something else than a message")
    return message


def _fill(slot: Path, app: Path) -> None:
    """The version's code in the template's app directory, read-only for the jail (root owns
    it; the jail binds it read-only). Copied, not hard-linked: a link would change the store
    files' ctime, which the store's verification reads as a modification."""
    _empty(slot)
    for entry in app.iterdir():
        target = slot / entry.name
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True)
        else:
            shutil.copy2(entry, target, follow_symlinks=False)


def _empty(slot: Path) -> None:
    for entry in slot.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@dataclass(eq=False)
class Template:
    key: str
    directory: Path
    process: JailProcess
    control: socket.socket
    cgroups: RunCgroups
    user: JailUser
    limits: SandboxLimits
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False
    # The image whose app/ the slot holds (kept between runs of the same image).
    holds: str = ""
    memory_bytes: int = 0
    _stderr: CappedOutput = field(default_factory=lambda: CappedOutput(16 * 1024))
    _drain: asyncio.Task[None] | None = None

    @property
    def socket_path(self) -> Path:
        """Where the worker serves the run's server before calling `run`."""
        return self.directory / "sock" / SOCKET_NAME

    @property
    def alive(self) -> bool:
        # Popen learns of the end only when asked (the loop's child watcher is not involved).
        return self.process.popen.poll() is None

    def measure(self) -> int:
        self.memory_bytes = self.cgroups.memory_usage() or 0
        return self.memory_bytes

    def diagnostics(self) -> str:
        log = self.directory / "nsjail.log"
        text = log.read_text(errors="replace")[-4000:] if log.exists() else ""
        return f"{self._stderr.text()[-4000:]}\n{text}"

    def _hand_over_socket(self) -> None:
        sock = self.directory / "sock"
        for entry in sock.iterdir():
            if stat.S_ISSOCK(entry.lstat().st_mode):
                os.chown(entry, self.user.outside_uid, self.user.outside_gid, follow_symlinks=False)

    async def run(
        self, app: Path, image_digest: str, argv: Sequence[str], limits: SandboxLimits
    ) -> SandboxResult:
        """Runs the runner with `argv` in a child of the template on `app` (the version's
        code), the run's server already served at `socket_path`. Raises TemplateFailed when
        the template itself failed; a run past its wall clock kills the whole jail (the caller
        discards the template)."""
        if self.holds != image_digest:
            self.holds = ""
            await asyncio.to_thread(_fill, self.directory / "app", app)
            self.holds = image_digest
        self._hand_over_socket()
        self.cgroups.reset_memory_peak()
        ooms = self.cgroups.oom_kills()
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            socket.send_fds(
                self.control, [json.dumps({"argv": list(argv)}).encode()], [out_write, err_write]
            )
        except OSError as error:
            for fd in (out_read, out_write, err_read, err_write):
                os.close(fd)
            raise TemplateFailed(f"the template's control socket failed: {error}") from None
        os.close(out_write)
        os.close(err_write)
        stdout, stderr = CappedOutput(limits.output_bytes), CappedOutput(limits.output_bytes)
        readers = [
            asyncio.create_task(_drain_fd(out_read, stdout)),
            asyncio.create_task(_drain_fd(err_read, stderr)),
        ]
        started = time.monotonic()
        killed_from_outside = failed = False
        try:
            message, killed_from_outside = await self._await_end(limits, started)
        except TemplateFailed:
            failed = True
            raise
        finally:
            # Killing the jail ends the run's pipes too (a hung template holds their ends).
            if killed_from_outside or failed or not self.alive:
                await self.kill()
            await finish_drains(readers, _DRAIN_TIMEOUT_S)
        duration = time.monotonic() - started
        self.last_used = time.monotonic()
        exit_code = message.get("exit") if not killed_from_outside else None
        killed_by = message.get("signal") if not killed_from_outside else None
        ending = Ending(
            started=True,
            time_limit=False,
            seccomp=killed_by == signal.SIGSYS,
            exit_code=exit_code if isinstance(exit_code, int) else None,
            signal=killed_by if isinstance(killed_by, int) else None,
            errors=(),
        )
        oom = killed_by == signal.SIGKILL and (
            self.cgroups.oom_kills() > ooms or self.cgroups.out_of_memory(limits.memory_bytes)
        )
        judged = classify(
            ending,
            stderr.text(),
            limits,
            killed_from_outside=killed_from_outside,
            oom=oom,
            duration_s=duration,
        )
        return SandboxResult.captured(judged, ending, stdout, stderr, duration)

    async def _await_end(
        self, limits: SandboxLimits, started: float
    ) -> tuple[dict[str, object], bool]:
        """The template's report of the child's end, and whether the wall clock ran out first
        (then the report is only that the child started)."""
        message = await _receive(self.control, FORK_TIMEOUT_S)
        if "started" not in message:
            raise TemplateFailed(f"the template refused the run: {message}")
        try:
            return await _receive(self.control, limits.wall_seconds), False
        except TemplateFailed:
            if self.alive and time.monotonic() - started >= limits.wall_seconds:
                return message, True
            raise

    async def kill(self) -> None:
        self.process.kill()
        await self.process.wait()

    async def close(self) -> None:
        """Kills the jail and removes its cgroups and directory."""
        try:
            await self.kill()
            self.control.close()
            if self._drain is not None:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(self._drain, _DRAIN_TIMEOUT_S)
            self.process.close_pipes()
        finally:
            await asyncio.shield(self.cgroups.remove())
            await asyncio.to_thread(shutil.rmtree, self.directory, True)


async def _drain_both(sink: CappedOutput, process: JailProcess) -> None:
    await asyncio.gather(sink.drain(process.stderr), sink.drain(process.stdout))


async def _drain_fd(fd: int, sink: CappedOutput) -> None:
    reader, transport = await read_pipe(os.fdopen(fd, "rb", buffering=0))
    try:
        await sink.drain(reader)
    finally:
        transport.close()


@dataclass(frozen=True)
class TemplateSpec:
    """What a template is made of: the layer (an image whose site-packages it binds), the
    modules it preloads, the SDK, the runtime, the limits of the runs it serves."""

    key: str
    image_dir: Path
    preload: tuple[str, ...]
    sdk_dir: Path
    runtime: PythonRuntime
    cgroups: CgroupHost
    user: JailUser
    limits: SandboxLimits


async def start_template(spec: TemplateSpec, root: Path, timeout_s: float) -> Template:
    """Starts the template's jail and waits until it has imported everything. Raises
    TemplateFailed."""
    directory = root / uuid.uuid4().hex[:10]
    directory.mkdir(mode=0o711, parents=True)
    os.chmod(directory, 0o711)  # noqa: S103 - the jail's user traverses it to its mounts
    (directory / "app").mkdir(mode=0o755)
    sock = directory / "sock"
    sock.mkdir(mode=0o700)
    os.chown(sock, spec.user.outside_uid, spec.user.outside_gid)
    run_cgroups = create_run_cgroups(spec.cgroups)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    template: Template | None = None
    try:
        paths = RunPaths(
            spec.image_dir, directory, spec.runtime, run_cgroups, spec.user, spec.sdk_dir
        )
        for path in (spec.image_dir / "site-packages", directory / "app", sock, spec.sdk_dir):
            check_reachable(path, spec.user)
        values = policy_values(spec.limits, paths)
        values.update(wall_seconds=0, image_app=str(directory / "app"), warm=True)
        paths.config_file.write_text(render_template(values))
        paths.config_file.chmod(0o600)
        fd = theirs.fileno()
        # As a cold run's jail: started by subprocess.Popen whatever loop runs (_spawn).
        process = await spawn_jail([
            *die_with_parent(), nsjail_binary(), "--config", str(paths.config_file),
            "--pass_fd", str(fd), "--",
            str(spec.runtime.executable), "-B", "-m", "foretell.sdk._fork", str(fd),
            *spec.preload,
        ], pass_fds=(fd,))  # fmt: skip
        theirs.close()
        ours.setblocking(False)
        template = Template(spec.key, directory, process, ours, run_cgroups, spec.user, spec.limits)
        # Both of its own streams in the diagnostics (a run's go to the run's pipes).
        template._drain = asyncio.create_task(_drain_both(template._stderr, process))
        await _ready(ours, timeout_s)
        template.measure()
    except BaseException as error:
        theirs.close()
        if template is not None:
            diagnostics = template.diagnostics()
            await template.close()
            if isinstance(error, TemplateFailed):
                raise TemplateFailed(f"{error}: {diagnostics}") from None
        else:
            ours.close()
            await asyncio.shield(run_cgroups.remove())
            shutil.rmtree(directory, ignore_errors=True)
        raise
    return template


async def _ready(control: socket.socket, within_s: float) -> None:
    message = await _receive(control, within_s)
    if "ready" not in message:
        raise TemplateFailed(f"the template did not start: {message}")
