"""Lanes: the separate job queues that keep one kind of work from delaying another.

Builds, live runs, dry runs and simulated replays are jobs in four arq queues, each with its own
workers and concurrency (`foretell worker --lane ...`; `foretell up` starts one worker per
lane). No number of builds or dry runs can occupy a live run's slot: the live lane has workers
of its own. Within the build and dry-run lanes, each provider holds at most a few jobs at once
(queued or running), so one provider's flood cannot starve another's: past the cap the request
is refused with RESOURCE_EXHAUSTED and a retry hint.

The live lane keeps the historical queue name (FORETELL_QUEUE_NAME), so jobs queued before the
lanes existed still run; the others are that name with `:build`, `:dry` or `:replay`."""

from __future__ import annotations

import enum
import time
import uuid
from dataclasses import dataclass

from arq.connections import ArqRedis

from foretell.errors import ResourceExhausted
from foretell.settings import Settings


class Lane(enum.StrEnum):
    BUILD = "build"
    LIVE = "live"
    DRY = "dry"
    REPLAY = "replay"


def queue_name(settings: Settings, lane: Lane) -> str:
    return settings.queue_name if lane is Lane.LIVE else f"{settings.queue_name}:{lane.value}"


def concurrency(settings: Settings, lane: Lane) -> int:
    """How many jobs one worker of `lane` runs at once."""
    return {
        Lane.BUILD: settings.build_concurrency,
        Lane.LIVE: settings.live_concurrency,
        Lane.DRY: settings.dry_run_concurrency,
        Lane.REPLAY: settings.replay_concurrency,
    }[lane]


# Takes a slot in a provider's set of held jobs (a sorted set scored by each hold's expiry):
# drops expired holds, then adds this one unless the provider already holds `cap`. Atomic, so
# concurrent requests cannot both take the last slot.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


@dataclass(frozen=True)
class Hold:
    """One job's slot in its provider's cap; passed to the job, which releases it when done."""

    key: str
    member: str

    async def release(self, redis: ArqRedis) -> None:
        await redis.zrem(self.key, self.member)


@dataclass(frozen=True)
class ProviderCap:
    """At most `cap` jobs of `lane` held by one provider at once. A hold expires after
    `hold_s` (longer than the job can last, retries included) in case its job never ran to
    release it, e.g. a worker killed and the job dropped."""

    lane: Lane
    cap: int
    hold_s: int
    retry_after_s: float

    def key(self, settings: Settings, provider_id: uuid.UUID | str) -> str:
        return f"{queue_name(settings, self.lane)}:held:{provider_id}"

    async def take(self, redis: ArqRedis, settings: Settings, provider_id: uuid.UUID | str) -> Hold:
        """A hold for one more job, or ResourceExhausted when the provider has `cap` already."""
        key, member, now = self.key(settings, provider_id), uuid.uuid4().hex, time.time()
        taken = await redis.eval(  # type: ignore[misc]
            _TAKE, 1, key, str(now), str(now + self.hold_s), member, str(self.cap),
            str(self.hold_s + 60),
        )  # fmt: skip
        if not taken:
            what = "builds" if self.lane is Lane.BUILD else "dry runs"
            raise ResourceExhausted(
                f"you already have {self.cap} {what} queued or running: retry when one is done",
                retry_after_s=self.retry_after_s,
            )
        return Hold(key, member)

    async def held(self, redis: ArqRedis, settings: Settings, provider_id: uuid.UUID | str) -> int:
        key = self.key(settings, provider_id)
        await redis.zremrangebyscore(key, "-inf", time.time())
        return int(await redis.zcard(key))


def build_cap(settings: Settings) -> ProviderCap:
    # A build job may be tried 3 times (foretell.worker).
    hold = 3 * (settings.build_timeout_s + settings.job_grace_s)
    return ProviderCap(Lane.BUILD, settings.provider_builds, hold, retry_after_s=30)


def dry_run_cap(settings: Settings) -> ProviderCap:
    hold = 3 * (settings.run_wall_s + settings.job_grace_s)
    return ProviderCap(Lane.DRY, settings.provider_dry_runs, hold, retry_after_s=5)
