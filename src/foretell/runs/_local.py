"""`foretell run --local`: a model folder packed, built and run on the provider's own machine,
in the same sandbox with the same run-scoped server as on the platform, on bars from files
instead of the platform's database. Nothing is uploaded or recorded. Needs what a worker needs:
root, nsjail and the `server` extra."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from foretell.build import BuildFailed, NativeBuilder
from foretell.bundle import Manifest, pack_dir
from foretell.marketdata import BarColumns
from foretell.runs._execute import LocalRun, run_local
from foretell.runs._scope import RunScope
from foretell.runs._server import MemoryBars
from foretell.sandbox import SandboxLimits, sdk_dir
from foretell.store import ArtifactStore


@dataclasses.dataclass(frozen=True)
class LocalResult:
    run: LocalRun
    build_log: tuple[str, ...]


async def run_folder(
    directory: Path,
    manifest: Manifest,
    bars: dict[str, BarColumns],
    as_of: datetime,
    *,
    limits: SandboxLimits | None = None,
) -> LocalResult:
    """Packs `directory`, builds it with NativeBuilder into a temporary store and runs it at
    `as_of` on `bars` (per symbol, of the manifest's resolution). Raises BuildFailed, or
    SandboxError when the sandbox itself cannot run here."""
    lines: list[str] = []

    async def log(line: str) -> None:
        lines.append(line)

    scope = RunScope(manifest.symbols, manifest.resolution, manifest.horizon, as_of)
    packed = pack_dir(directory)
    root = Path(tempfile.mkdtemp(prefix="ft-local-"))
    try:
        # The jail's user reads the SDK and the image below it.
        os.chmod(root, 0o755)  # noqa: S103
        sdk = sdk_dir(root)
        store = ArtifactStore(root / "store")
        builder = NativeBuilder(store, sdk=sdk)
        try:
            image_digest = await builder.build(packed.data, manifest, log)
        except BuildFailed as error:
            raise BuildFailed(f"{error}\n" + "\n".join(lines)) from None
        run = await run_local(
            store.verified_image(image_digest),
            scope,
            {"entrypoint": manifest.entrypoint, "lookback": manifest.lookback},
            MemoryBars(manifest.resolution, bars),
            run_root=root / "runs",
            sdk=sdk,
            limits=limits,
        )
        return LocalResult(run, tuple(lines))
    finally:
        shutil.rmtree(root, ignore_errors=True)
