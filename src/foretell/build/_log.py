"""Build logs travel through a Redis stream while the build runs (so StreamBuildLog can follow
it live from any process) and are stored with the version when it ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis

# Long enough for any client to catch up; the database keeps the log for good.
_KEEP_S = 24 * 3600
_MAX_LINE = 4000


def _key(version_id: str) -> str:
    return f"foretell:build-log:{version_id}"


@dataclass
class BuildLog:
    redis: aioredis.Redis
    version_id: str
    lines: list[str] = field(default_factory=list)

    async def write(self, line: str) -> None:
        line = line.rstrip("\n")[:_MAX_LINE]
        self.lines.append(line)
        await self.redis.xadd(_key(self.version_id), {"line": line.encode()})

    async def start(self) -> None:
        # A retried build starts a fresh log.
        await self.redis.delete(_key(self.version_id))

    async def close(self) -> None:
        key = _key(self.version_id)
        await self.redis.xadd(key, {"end": b"1"})
        await self.redis.expire(key, _KEEP_S)

    def text(self) -> str:
        return "\n".join(self.lines)


async def follow_build_log(
    redis: aioredis.Redis, version_id: str, block_ms: int = 1000
) -> AsyncIterator[list[str] | None]:
    """Yields batches of lines as the build writes them, and None whenever `block_ms` passes
    without news (so the caller can check the build's state). Ends after the last line."""
    key, last = _key(version_id), "0-0"
    while True:
        reply = await redis.xread({key: last}, block=block_ms, count=500)
        if not reply:
            yield None
            continue
        batch: list[str] = []
        for entry_id, fields in reply[0][1]:
            last = entry_id
            if b"end" in fields:
                if batch:
                    yield batch
                return
            batch.append(fields[b"line"].decode(errors="replace"))
        yield batch
