from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from foretell.bundle import Manifest, extract_bundle
from foretell.store import ArtifactStore

LogWriter = Callable[[str], Awaitable[None]]

# Imports the entrypoint and checks it is callable; the bundle's code runs here for the first
# time, so it runs with no network and no bytecode written into the image.
_IMPORT_CHECK = """
import importlib, sys
app, site, entrypoint = sys.argv[1:4]
sys.path[:0] = [app, site]
module_name, _, function_name = entrypoint.partition(":")
function = getattr(importlib.import_module(module_name), function_name, None)
if not callable(function):
    sys.exit(f"{entrypoint}: {function_name} is not a callable in {module_name}")
print(f"imported {entrypoint}")
"""
_IMPORT_TIMEOUT_S = 60


class BuildFailed(Exception):
    """The bundle cannot be built; the message is for the provider."""


class Builder(Protocol):
    async def build(self, bundle: bytes, manifest: Manifest, log: LogWriter) -> str:
        """Builds the image for `bundle` and returns its digest, or raises BuildFailed."""
        ...


def _no_network_prefix() -> list[str]:
    # A network namespace of its own (no interfaces): needs root or user namespaces. The
    # sandbox (nsjail) replaces this once it exists.
    unshare = shutil.which("unshare")
    if unshare and os.geteuid() == 0:
        return [unshare, "--net", "--"]
    return []


@dataclass(frozen=True)
class NativeBuilder:
    """Installs the requirements, wheels only, into `image/site-packages`, copies the code to
    `image/app`, and checks the entrypoint imports. Same bundle and same index: same image."""

    store: ArtifactStore
    pip_index_url: str | None = None
    wheelhouse: Path | None = None
    timeout_s: float = 600
    python: str = sys.executable

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
            if manifest.requirements:
                await self._install(image, manifest.requirements, log)
            else:
                await log("no requirements file: nothing to install")
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

    async def _check_import(self, image: Path, entrypoint: str, log: LogWriter) -> None:
        # Relative paths (the step runs in the image's parent): tracebacks in the provider's
        # build log name their own files, not the server's directories.
        argv = [
            *_no_network_prefix(), self.python, "-I", "-B", "-c", _IMPORT_CHECK,
            f"{image.name}/app", f"{image.name}/site-packages", entrypoint,
        ]  # fmt: skip
        await log(f"importing {entrypoint} (no network)")
        code, tail = await self._run(argv, image.parent, log, timeout_s=_IMPORT_TIMEOUT_S)
        if code != 0:
            raise BuildFailed(f"importing {entrypoint} failed: {tail or f'exit code {code}'}")

    async def _run(
        self, argv: Sequence[str], cwd: Path, log: LogWriter, timeout_s: float | None = None
    ) -> tuple[int, str]:
        """Runs a build step, streaming its output to the log; returns (exit code, last line)."""
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=self._env(cwd),
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
