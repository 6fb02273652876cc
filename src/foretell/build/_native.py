from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from foretell.bundle import Manifest, extract_bundle
from foretell.sandbox import (
    JAIL_IMAGE,
    JAIL_SDK,
    PRELOAD_FILE,
    Outcome,
    SandboxError,
    SandboxLimits,
    SandboxUnavailable,
    run_in_sandbox,
    system_python,
)
from foretell.store import ArtifactStore

LogWriter = Callable[[str], Awaitable[None]]

# Imports the entrypoint and checks it is callable (inside the jail; -B: no bytecode written).
_IMPORT_CHECK = """
import importlib, sys
app, site, entrypoint, *sdk = sys.argv[1:]
sys.path[:0] = [*sdk, app, site]
module_name, _, function_name = entrypoint.partition(":")
function = getattr(importlib.import_module(module_name), function_name, None)
if not callable(function):
    sys.exit(f"{entrypoint}: {function_name} is not a callable in {module_name}")
print(f"imported {entrypoint}")
# The wheels' modules the entrypoint imported: what a warm template preloads.
loaded = sorted(n for n, m in list(sys.modules.items())
                if (getattr(m, "__file__", None) or "").startswith(site + "/"))
print("foretell-preload:", " ".join(loaded))
"""
_PRELOAD_MARK = "foretell-preload:"


def _lists_anything(requirements: Path) -> bool:
    """Whether a requirements file has a line other than blanks and comments."""
    lines = requirements.read_text(errors="replace").splitlines()
    return any(line.split("#", 1)[0].strip() for line in lines)


class BuildFailed(Exception):
    """The bundle cannot be built; the message is for the provider."""


class Builder(Protocol):
    async def build(self, bundle: bytes, manifest: Manifest, log: LogWriter) -> str:
        """Builds the image for `bundle` and returns its digest, or raises BuildFailed."""
        ...


@dataclass(frozen=True)
class NativeBuilder:
    """Installs the requirements, wheels only, into `image/site-packages`, copies the code to
    `image/app`, and checks the entrypoint imports. Same bundle and same index: same image."""

    store: ArtifactStore
    pip_index_url: str | None = None
    wheelhouse: Path | None = None
    timeout_s: float = 600
    python: str = sys.executable
    # The provider SDK directory the runs bind (foretell.sandbox.sdk_dir): models import
    # foretell.sdk, so the import check needs it too. None: not bound.
    sdk: Path | None = None
    # The import check runs under the limits of a run.
    limits: SandboxLimits = field(default_factory=lambda: SandboxLimits(wall_seconds=60))

    async def build(self, bundle: bytes, manifest: Manifest, log: LogWriter) -> str:
        work = self.store.scratch()
        try:
            image = work / "image"
            image.mkdir()
            (image / "site-packages").mkdir()
            extract_bundle(bundle, image / "app")
            await log(
                f"bundle unpacked: {manifest.entrypoint}, symbols {', '.join(manifest.symbols)}"
            )
            if manifest.requirements and _lists_anything(image / "app" / manifest.requirements):
                await self._install(image, manifest.requirements, log)
            else:
                # Starting pip costs ~0.5 s even with nothing to do: skip it.
                await log("no requirements: nothing to install")
            await self._compile(image, log)
            await self._check_import(image, manifest.entrypoint, log)
            digest = self.store.put_image(image)
            await log(f"image {digest}")
            return digest
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _env(self, home: Path) -> dict[str, str]:
        # Nothing from the worker's environment: no credentials, no proxies, no pip config.
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_CACHE_DIR": str(self.store.root / "pip-cache"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    async def _install(self, image: Path, requirements: str, log: LogWriter) -> None:
        if self.wheelhouse is not None:
            source = ["--no-index", "--find-links", str(self.wheelhouse)]
        elif self.pip_index_url is not None:
            source = ["--index-url", self.pip_index_url]
        else:
            source = []
        argv = [
            self.python, "-m", "pip", "install", "--only-binary", ":all:", "--no-compile",
            "--no-input", "--target", str(image / "site-packages"),
            "--requirement", str(image / "app" / requirements), *source,
        ]  # fmt: skip
        await log(f"installing {requirements} (wheels only)")
        code, tail = await self._run(argv, image.parent, log)
        if code != 0:
            raise BuildFailed(f"installing {requirements} failed: {tail or f'pip exited {code}'}")

    def _compiler(self) -> str:
        """The jail's own interpreter where there is one (its pycs are the ones a run loads:
        same magic number), else the builder's Python, which is of the same X.Y."""
        try:
            return str(system_python().executable)
        except (SandboxUnavailable, SandboxError):
            return self.python

    async def _compile(self, image: Path, log: LogWriter) -> None:
        """Compiles the provider's code and its wheels to bytecode, once, at build time: the
        jail runs read-only with PYTHONDONTWRITEBYTECODE, so without it every run compiles
        numpy or pandas from source (seconds). Deterministic, so the same bundle and index
        still give the same image digest: unchecked-hash pycs (no timestamps; valid because
        the image never changes), file names as the jail sees them (`/image/...`, not this
        scratch directory), a fixed hash seed (frozenset constants are marshalled in hash
        order), one process compiling in sorted order. A file that does not compile (a
        template or a test written for another Python) is logged and left as source."""
        argv = [
            self._compiler(), "-I", "-m", "compileall", "-q", "-f",
            "--invalidation-mode", "unchecked-hash",
            "-s", str(image), "-p", JAIL_IMAGE,
            str(image / "app"), str(image / "site-packages"),
        ]  # fmt: skip
        await log("compiling bytecode")
        code, _tail = await self._run(argv, image.parent, log, env={"PYTHONHASHSEED": "0"})
        if code != 0:
            await log("some files did not compile to bytecode: they run from source")

    async def _check_import(self, image: Path, entrypoint: str, log: LogWriter) -> None:
        """Imports the entrypoint in the sandbox the runs use: no network, the image read-only,
        the same limits as a run. The bundle's code executes here for the first time."""
        argv = ["-I", "-B", "-c", _IMPORT_CHECK, "/image/app", "/image/site-packages", entrypoint]
        if self.sdk is not None:
            argv.append(JAIL_SDK)
        await log(f"importing {entrypoint} in the sandbox (no network)")
        run_dir = image.parent / "run"
        try:
            result = await run_in_sandbox(image, run_dir, argv, self.limits, sdk_dir=self.sdk)
        except SandboxError as error:
            raise BuildFailed(f"the sandbox could not run the import check: {error}") from None
        preload: list[str] = []
        for line in (result.stdout + result.stderr).splitlines():
            if line.startswith(_PRELOAD_MARK):
                # Names only, checked again by the template (which imports nothing but modules
                # of the image's wheels): the provider's code ran in this process too.
                preload = line.removeprefix(_PRELOAD_MARK).split()
                continue
            await log(line)
        if result.outcome == Outcome.OK:
            (image / PRELOAD_FILE).write_text("".join(f"{name}\n" for name in sorted(set(preload))))
        if result.outcome != Outcome.OK:
            # The reason is one line (the traceback's last); the whole traceback is in the log.
            lines = [line for line in result.detail.splitlines() if line.strip()]
            summary = lines[-1].strip() if lines else str(result.outcome)
            if result.outcome != Outcome.MODEL_ERROR:
                summary = f"{result.outcome}: {summary}"
            raise BuildFailed(f"importing {entrypoint} failed: {summary}")

    async def _run(
        self,
        argv: Sequence[str],
        cwd: Path,
        log: LogWriter,
        timeout_s: float | None = None,
        env: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        """Runs a build step, streaming its output to the log; returns (exit code, last line)."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env={**self._env(cwd), **(env or {})},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        last = ""

        async def pump() -> None:
            nonlocal last
            assert process.stdout is not None
            async for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip()
                if line:
                    last = line
                    await log(line)

        try:
            await asyncio.wait_for(pump(), timeout_s or self.timeout_s)
            return await process.wait(), last
        except TimeoutError:
            raise BuildFailed(
                f"build step timed out after {timeout_s or self.timeout_s:.0f} s"
            ) from None
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
