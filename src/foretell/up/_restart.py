"""When a crashed child is started again: exponential back-off, bounded, forgotten after a
healthy run, and the point at which a child counts as crash-looping.

Pure: every function takes the time it needs (monotonic seconds) and returns what to do, so the
policy is tested without a process or a sleep.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    # The first restart waits `first_delay_s`; each further crash in a row waits `factor` times
    # longer, never more than `max_delay_s`.
    first_delay_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 30.0
    # A child that ran this long before crashing was healthy: its back-off starts over.
    healthy_after_s: float = 60.0
    # This many crashes in a row, each before `healthy_after_s`, and the child is reported as
    # crash-looping (it is still restarted: a database coming back may be all it waits for).
    crash_loop_after: int = 5

    def __post_init__(self) -> None:
        if not (0 < self.first_delay_s <= self.max_delay_s and self.factor >= 1):
            raise ValueError(f"not a bounded back-off: {self}")
        if self.healthy_after_s <= 0 or self.crash_loop_after < 1:
            raise ValueError(f"not a restart policy: {self}")


DEFAULT_POLICY = RestartPolicy()


@dataclass(frozen=True)
class Restart:
    """What to do about one exit of a child."""

    delay_s: float
    # Crashes in a row without a healthy run, this one included.
    crashes: int
    crash_looping: bool
    ran_s: float


def after_exit(
    policy: RestartPolicy, *, crashes_before: int, started_at: float, exited_at: float
) -> Restart:
    """The restart of a child started at `started_at` that exited at `exited_at`, having crashed
    `crashes_before` times in a row before this run."""
    ran_s = max(0.0, exited_at - started_at)
    crashes = 1 if ran_s >= policy.healthy_after_s else crashes_before + 1
    delay = min(policy.max_delay_s, policy.first_delay_s * policy.factor ** (crashes - 1))
    return Restart(delay, crashes, crashes >= policy.crash_loop_after, ran_s)


def describe(policy: RestartPolicy, name: str, returncode: int, restart: Restart) -> str:
    """The console line that says a child exited and when it starts again."""
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exited (rc={returncode})"
    if restart.crash_looping:
        return (
            f"{name} is crash-looping: {restart.crashes} crashes in a row, none after a healthy "
            f"run of {policy.healthy_after_s:g} s; last {how} after {restart.ran_s:.1f} s; "
            f"restarting in {restart.delay_s:g} s (its own lines above say why)"
        )
    line = f"{name} {how} after {restart.ran_s:.1f} s; restarting in {restart.delay_s:g} s"
    if restart.crashes > 1:
        line += f" (crash {restart.crashes} in a row)"
    return line
