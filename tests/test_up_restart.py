"""`foretell up`'s restart policy and supervisor, with an injected clock: no test sleeps. The
children are real processes that exit at once; the tests wait for that exit, then move the clock."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from foretell.up._children import Supervisor
from foretell.up._console import Console
from foretell.up._restart import RestartPolicy, after_exit, describe
from foretell.up._supervise import exit_status

POLICY = RestartPolicy(
    first_delay_s=0.5, factor=2.0, max_delay_s=4.0, healthy_after_s=60.0, crash_loop_after=4
)


def _delays(runs: list[float]) -> list[float]:
    """The delay after each exit of a child that ran `runs[i]` seconds each time."""
    crashes, now, found = 0, 0.0, []
    for ran in runs:
        restart = after_exit(POLICY, crashes_before=crashes, started_at=now, exited_at=now + ran)
        crashes = restart.crashes
        now += ran + restart.delay_s
        found.append(restart.delay_s)
    return found


def test_back_off_doubles_with_each_crash_in_a_row_up_to_its_bound() -> None:
    assert _delays([1.0] * 7) == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_a_healthy_run_resets_the_back_off() -> None:
    assert _delays([1.0, 1.0, 1.0, 60.0, 1.0]) == [0.5, 1.0, 2.0, 0.5, 1.0]
    # Just short of healthy counts as one more crash in a row.
    assert _delays([1.0, 1.0, 59.9]) == [0.5, 1.0, 2.0]


def test_crash_looping_starts_at_the_policy_count_and_ends_with_a_healthy_run() -> None:
    looping = []
    crashes = 0
    for ran in [1.0, 1.0, 1.0, 1.0, 1.0, 61.0]:
        restart = after_exit(POLICY, crashes_before=crashes, started_at=0.0, exited_at=ran)
        crashes = restart.crashes
        looping.append(restart.crash_looping)
    assert looping == [False, False, False, True, True, False]


@pytest.mark.parametrize(
    "policy",
    [
        {"first_delay_s": 0.0},
        {"first_delay_s": 5.0, "max_delay_s": 1.0},
        {"factor": 0.5},
        {"healthy_after_s": 0.0},
        {"crash_loop_after": 0},
    ],
)
def test_an_unbounded_or_senseless_policy_is_refused(policy: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"policy|back-off"):
        RestartPolicy(**policy)  # type: ignore[arg-type]


def test_the_console_line_says_how_it_ended_and_when_it_restarts() -> None:
    first = after_exit(POLICY, crashes_before=0, started_at=10.0, exited_at=12.5)
    assert describe(POLICY, "worker-live", -9, first) == (
        "worker-live killed by signal 9 after 2.5 s; restarting in 0.5 s"
    )
    third = after_exit(POLICY, crashes_before=2, started_at=0.0, exited_at=1.0)
    assert describe(POLICY, "envoy", 1, third) == (
        "envoy exited (rc=1) after 1.0 s; restarting in 2 s (crash 3 in a row)"
    )
    looping = after_exit(POLICY, crashes_before=3, started_at=0.0, exited_at=0.2)
    assert describe(POLICY, "services", 3, looping) == (
        "services is crash-looping: 4 crashes in a row, none after a healthy run of 60 s; "
        "last exited (rc=3) after 0.2 s; restarting in 4 s (its own lines above say why)"
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def supervised() -> Iterator[tuple[Supervisor, FakeClock, io.StringIO]]:
    out = io.StringIO()
    clock = FakeClock()
    supervisor = Supervisor(Console(out, ["crasher"]), policy=POLICY, kill_wait_s=5, clock=clock)
    yield supervisor, clock, out
    supervisor.stop("end of test")
    supervisor.shutdown()


def _exits(supervisor: Supervisor) -> None:
    _wait_until(lambda: supervisor.pid("crasher") is None)


def test_a_crashed_child_is_restarted_after_its_back_off_and_the_console_says_so(
    supervised: tuple[Supervisor, FakeClock, io.StringIO],
) -> None:
    supervisor, clock, out = supervised
    supervisor.add("crasher", [sys.executable, "-c", "print('going down'); raise SystemExit(3)"])
    supervisor.start()
    _exits(supervisor)
    clock.now += 2.0
    supervisor.tick()
    assert "crasher exited (rc=3) after 2.0 s; restarting in 0.5 s" in out.getvalue()
    assert supervisor.restarts() == {"crasher": 0}

    clock.now += 0.4
    supervisor.tick()
    assert supervisor.restarts() == {"crasher": 0}, "restarted before its back-off ended"
    clock.now += 0.1
    supervisor.tick()
    assert supervisor.restarts() == {"crasher": 1}
    assert "crasher restarted (pid" in out.getvalue()

    # Crashing again at once doubles the wait.
    _exits(supervisor)
    supervisor.tick()
    assert "restarting in 1 s (crash 2 in a row)" in out.getvalue()
    _wait_until(lambda: out.getvalue().count("going down") == 2)


def test_a_child_that_never_stays_up_is_reported_as_crash_looping(
    supervised: tuple[Supervisor, FakeClock, io.StringIO],
) -> None:
    supervisor, clock, out = supervised
    supervisor.add("crasher", [sys.executable, "-c", "raise SystemExit(1)"])
    supervisor.start()
    for _ in range(POLICY.crash_loop_after):
        _exits(supervisor)
        supervisor.tick()
        clock.now += POLICY.max_delay_s
        supervisor.tick()
    assert "crasher is crash-looping: 4 crashes in a row" in out.getvalue()
    assert supervisor.restarts() == {"crasher": 4}


def test_a_missing_program_counts_as_a_crash_not_a_stop(
    supervised: tuple[Supervisor, FakeClock, io.StringIO],
) -> None:
    _, clock, out = supervised
    # Without setpriv in between, the exec fails in `foretell up` itself.
    supervisor = Supervisor(Console(out, ["crasher"]), policy=POLICY, clock=clock, setpriv=None)
    supervisor.add("crasher", ["/nonexistent/foretell-child"])
    supervisor.start()
    assert "crasher cannot start:" in out.getvalue()
    assert "crasher exited (rc=127) after 0.0 s; restarting in 0.5 s" in out.getvalue()
    clock.now += 0.5
    supervisor.tick()
    assert "restarting in 1 s (crash 2 in a row)" in out.getvalue()
    assert "restarted (pid" not in out.getvalue()


def test_a_stop_ends_running_children_with_sigterm_and_records_their_codes(
    supervised: tuple[Supervisor, FakeClock, io.StringIO],
) -> None:
    supervisor, _clock, _out = supervised
    supervisor.add("crasher", [sys.executable, "-c", "import time; time.sleep(60)"])
    supervisor.start()
    assert supervisor.pid("crasher") is not None
    supervisor.stop("asked")
    supervisor.shutdown()
    assert supervisor.returncodes() == {"crasher": -15}
    assert supervisor.cause == "asked"


def test_a_child_down_after_a_crash_when_the_stop_comes_counts_as_unclean(
    supervised: tuple[Supervisor, FakeClock, io.StringIO],
) -> None:
    supervisor, _clock, _out = supervised
    supervisor.add("crasher", [sys.executable, "-c", "raise SystemExit(3)"])
    supervisor.start()
    _exits(supervisor)
    supervisor.tick()  # noted, and waiting for its back-off
    supervisor.stop("SIGINT received", by_signal=True)
    supervisor.shutdown()
    assert supervisor.returncodes() == {"crasher": 3}
    assert exit_status(supervisor.returncodes(), supervisor.cause, by_signal=True) == (
        1,
        "stopped (SIGINT received), but not cleanly: crasher (rc=3)",
    )
