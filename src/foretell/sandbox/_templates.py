"""The worker's warm templates: at most `max_templates` jails, at most `max_memory_bytes` of
memory between them, evicted least-recently-used, one per run in flight and per layer.

A layer is what a template may be shared by: the content of an image's site-packages (so
versions, of any model, that resolved to the same wheels share it), the modules the builds
recorded to preload, the SDK, and the limits of the runs. The provider's own code is never
part of a layer and never runs in a template, only in the child forked for its run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from foretell import metrics
from foretell.logs import get_logger
from foretell.sandbox._cgroups import CgroupHost
from foretell.sandbox._errors import SandboxError
from foretell.sandbox._host import PythonRuntime, system_python
from foretell.sandbox._limits import DEFAULT_USER, JailUser, SandboxLimits
from foretell.sandbox._warm import Template, TemplateFailed, TemplateSpec, start_template

_log = get_logger("foretell.sandbox.warm")

# The file a build writes beside the image's app/ and site-packages/: one module name a line,
# the wheels' modules its entrypoint imported (foretell.build).
PRELOAD_FILE = "preload.txt"
# After a template of a layer failed to start, that layer's runs start cold for this long.
FAILED_LAYER_S = 60.0


def read_preload(image_dir: Path) -> tuple[str, ...]:
    try:
        text = (image_dir / PRELOAD_FILE).read_text()
    except FileNotFoundError:
        return ()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@dataclass
class TemplatePool:
    root: Path
    sdk_dir: Path
    cgroups: CgroupHost
    max_templates: int = 4
    max_memory_bytes: int = 2048 * 1024 * 1024
    start_timeout_s: float = 60.0
    user: JailUser = DEFAULT_USER
    runtime: PythonRuntime | None = None
    _templates: list[Template] = field(default_factory=list)
    _starting: int = 0
    _failed: dict[str, float] = field(default_factory=dict)

    def _layer(self, site_digest: str, image_dir: Path, limits: SandboxLimits) -> str:
        h = hashlib.sha256(site_digest.encode())
        for part in (*read_preload(image_dir), str(self.sdk_dir), repr(limits)):
            h.update(b"\0" + part.encode())
        return h.hexdigest()

    @contextlib.asynccontextmanager
    async def acquire(
        self, image_dir: Path, site_digest: str, limits: SandboxLimits
    ) -> AsyncIterator[Template | None]:
        """A template of the image's layer (`site_digest`: the digest of its site-packages
        tree, which the caller verified), idle and reserved for one run; None when no warm
        start can be had (the caller starts cold). A template that fails (TemplateFailed
        raised inside), outlives its run's wall clock or outgrows the memory bound is closed."""
        key = self._layer(site_digest, image_dir, limits)
        template = await self._take(key, image_dir, limits)
        if template is None:
            metrics.WARM_STARTS.labels("cold").inc()
            yield None
            return
        keep = False
        try:
            yield template
            keep = template.alive
        except TemplateFailed as error:
            _log.warning("a warm template failed", error=str(error), layer=key[:12])
            metrics.WARM_EVICTIONS.labels("failed").inc()
            raise
        finally:
            template.busy = False
            if not keep:
                await self._close(template)
            else:
                template.last_used = time.monotonic()
                await self._bound_memory(template)
            self._report()

    async def _take(self, key: str, image_dir: Path, limits: SandboxLimits) -> Template | None:
        for template in self._templates:
            if template.key == key and not template.busy and template.alive:
                template.busy = True
                metrics.WARM_STARTS.labels("warm").inc()
                return template
        if time.monotonic() - self._failed.get(key, -FAILED_LAYER_S) < FAILED_LAYER_S:
            return None
        while len(self._templates) + self._starting >= self.max_templates:
            idle = [t for t in self._templates if not t.busy]
            if not idle:
                return None
            await self._close(min(idle, key=lambda t: t.last_used))
            metrics.WARM_EVICTIONS.labels("lru").inc()
        spec = TemplateSpec(
            key, image_dir, read_preload(image_dir), self.sdk_dir,
            self.runtime or system_python(), self.cgroups, self.user, limits,
        )  # fmt: skip
        self._starting += 1
        try:
            template = await start_template(spec, self.root, self.start_timeout_s)
        except SandboxError as error:
            _log.warning("a warm template did not start", error=str(error)[:3000])
            self._failed[key] = time.monotonic()
            return None
        finally:
            self._starting -= 1
        template.busy = True
        self._templates.append(template)
        metrics.WARM_STARTS.labels("started").inc()
        self._report()
        return template

    async def _bound_memory(self, template: Template) -> None:
        """Closes `template` if it alone is over the bound (its layer then starts cold for a
        while), then the least recently used idle ones until the rest fit."""
        if await asyncio.to_thread(template.measure) > self.max_memory_bytes:
            self._failed[template.key] = time.monotonic()
            metrics.WARM_EVICTIONS.labels("memory").inc()
            await self._close(template)
        while sum(t.memory_bytes for t in self._templates) > self.max_memory_bytes:
            idle = [t for t in self._templates if not t.busy]
            if not idle:
                return
            await self._close(min(idle, key=lambda t: t.last_used))
            metrics.WARM_EVICTIONS.labels("memory").inc()

    async def _close(self, template: Template) -> None:
        with contextlib.suppress(ValueError):
            self._templates.remove(template)
        try:
            await template.close()
        except SandboxError as error:
            _log.error("a warm template could not be removed", error=str(error))
        self._report()

    def _report(self) -> None:
        metrics.WARM_TEMPLATES.set(len(self._templates))
        metrics.WARM_TEMPLATE_MEMORY.set(sum(t.memory_bytes for t in self._templates))

    @property
    def templates(self) -> tuple[Template, ...]:
        return tuple(self._templates)

    async def close(self) -> None:
        for template in list(self._templates):
            await self._close(template)
