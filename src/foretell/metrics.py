"""Prometheus metrics, served on /metrics (FORETELL_METRICS_ADDR).

RPCs follow the go-grpc-prometheus names, so existing dashboards and alerts work unchanged:
`grpc_server_started_total`, `grpc_server_handled_total` and the histogram
`grpc_server_handling_seconds`, labelled grpc_type, grpc_service, grpc_method (and grpc_code
once handled; the histogram keeps it too, so latency can be read for successful calls only).

Foretell's own (`foretell_*`) are recorded where things happen: runs and builds in the worker,
missed slots, checkpoints and billing in the periodic jobs, a sandbox's memory peak after each
jail. Queue depth is read from Redis at scrape time by the scheduler (`register_queues`), and the
business figures (subscriptions by state, revenue) are refreshed each minute by the scheduler
(`set_business`). deploy/prometheus/ has the scrape config and alert rules built on these."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence

from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from foretell.settings import Address

# The *_created series double the output and nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_RPC_LABELS = ["grpc_type", "grpc_service", "grpc_method"]

RPC_STARTED = Counter("grpc_server_started", "RPCs started on the server.", _RPC_LABELS)
RPC_HANDLED = Counter(
    "grpc_server_handled",
    "RPCs completed on the server, whatever their status code.",
    [*_RPC_LABELS, "grpc_code"],
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time from an RPC's start to its status, by method and status code.",
    [*_RPC_LABELS, "grpc_code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

RUNS = Counter(
    "foretell_runs",
    "Runs recorded, by kind (live, dry, replay) and outcome (ok, model_error, timeout, ...).",
    ["kind", "outcome"],
)
RUN_SECONDS = Histogram(
    "foretell_run_duration_seconds",
    "Wall-clock time of a run in the sandbox, by kind.",
    ["kind"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)
SANDBOX_MEMORY_PEAK = Histogram(
    "foretell_sandbox_memory_peak_bytes",
    "Highest memory use of a jail (its cgroup's peak) over its run.",
    buckets=tuple(float(2**n * 1024 * 1024) for n in range(4, 13)),  # 16 MiB .. 4 GiB
)
WARM_STARTS = Counter(
    "foretell_warm_starts",
    "Runs by how they started: warm (forked from an idle template), started (a new template "
    "started for the run), cold (no template could serve it, or warm starts are off).",
    ["result"],
)
WARM_EVICTIONS = Counter(
    "foretell_warm_template_evictions",
    "Warm templates closed, by reason: lru (room for another layer), memory (over the bound), "
    "failed (died, hung or timed out).",
    ["reason"],
)
WARM_TEMPLATES = Gauge("foretell_warm_templates", "Warm templates this worker holds.")
WARM_TEMPLATE_MEMORY = Gauge(
    "foretell_warm_template_memory_bytes",
    "Memory charged to this worker's warm templates' cgroups, measured when each was last idle.",
)
BUILDS = Counter(
    "foretell_builds", "Version builds finished, by result (ready, failed).", ["result"]
)
BUILD_SECONDS = Histogram(
    "foretell_build_duration_seconds",
    "Time to build a version's image, by result.",
    ["result"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200),
)
SLOTS = Counter(
    "foretell_slots",
    "Live slots not run, by outcome: missed (the platform was down when it came due), "
    "data_missing (the bars never came).",
    ["outcome"],
)
LEDGER_CHECKPOINTS = Counter("foretell_ledger_checkpoints", "Ledger checkpoints signed.")
LEDGER_CHECKPOINT_TIME = Gauge(
    "foretell_ledger_checkpoint_last_success_timestamp_seconds",
    "When the checkpoint job last finished (every chain that grew was signed then).",
)
BILLING_EVENTS = Counter(
    "foretell_billing_events",
    "Subscription state changes (trial_started, renewed, past_due, expired, ...), by event.",
    ["event"],
)


# grpc_code as Go's codes.Code.String() spells it (go-grpc-prometheus): "OK", "InvalidArgument",
# "Canceled" (one l), ... so queries written for Go services work here unchanged.
_GO_CODE = {"OK": "OK", "CANCELLED": "Canceled"}


def go_code(name: str) -> str:
    """`StatusCode.name` ("INVALID_ARGUMENT") as Go spells the code ("InvalidArgument")."""
    return _GO_CODE.get(name) or "".join(part.capitalize() for part in name.split("_"))


def observe(full_method: str, code: str, seconds: float, rpc_type: str = "unary") -> None:
    """One finished RPC; `code` is a grpc.StatusCode name (e.g. "NOT_FOUND")."""
    service, method = split_method(full_method)
    RPC_HANDLED.labels(rpc_type, service, method, go_code(code)).inc()
    RPC_SECONDS.labels(rpc_type, service, method, go_code(code)).observe(seconds)


def started(full_method: str, rpc_type: str) -> None:
    RPC_STARTED.labels(rpc_type, *split_method(full_method)).inc()


def split_method(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


# ---------------------------------------------------------------------------------------------
# Read at scrape time: the job queues (the scheduler process registers them).


class QueueCollector(Collector):
    """Per arq queue (a sorted set of job ids scored by the time each may start, in ms): all
    jobs (ready, deferred and running: a job stays until it ends), the ready ones, and the age
    of the oldest ready job, which grows when no worker takes jobs."""

    def __init__(self, redis_url: str, queues: Sequence[str]) -> None:
        from redis import Redis

        self._redis = Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._queues = tuple(queues)

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "foretell_queue_jobs",
            "Jobs in the queue (ready, deferred and running).",
            labels=["queue"],
        )
        ready = GaugeMetricFamily(
            "foretell_queue_ready_jobs", "Jobs whose start time has come.", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "foretell_queue_oldest_ready_job_age_seconds",
            "How long the oldest ready job has waited (0 when none waits).",
            labels=["queue"],
        )
        now_ms = time.time() * 1000
        for queue in self._queues:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zcard(queue)
            pipe.zcount(queue, "-inf", now_ms)
            pipe.zrange(queue, 0, 0, withscores=True)
            total, ready_count, first = pipe.execute()
            jobs.add_metric([queue], total)
            ready.add_metric([queue], ready_count)
            waited = (now_ms - first[0][1]) / 1000 if first and first[0][1] <= now_ms else 0.0
            oldest.add_metric([queue], waited)
        yield from (jobs, ready, oldest)

    def describe(self) -> Iterable[Metric]:
        return []


_queue_collector: QueueCollector | None = None
_lock = threading.Lock()


def register_queues(redis_url: str, queues: Sequence[str]) -> None:
    """Exports the depth of `queues` from this process (one process per site should)."""
    global _queue_collector
    with _lock:
        if _queue_collector is not None:
            REGISTRY.unregister(_queue_collector)
        _queue_collector = QueueCollector(redis_url, queues)
        REGISTRY.register(_queue_collector)


# ---------------------------------------------------------------------------------------------
# Business figures, refreshed from the database by the scheduler.


class _BusinessCollector(Collector):
    def __init__(self) -> None:
        self.subscriptions: dict[str, int] = {}
        self.trials_started = 0
        self.revenue_minor: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            "foretell_subscriptions", "Subscriptions, by state.", labels=["state"]
        )
        for state, count in sorted(self.subscriptions.items()):
            states.add_metric([state], count)
        trials = CounterMetricFamily(
            "foretell_trials_started", "Subscriptions that started with a trial."
        )
        trials.add_metric([], self.trials_started)
        revenue = CounterMetricFamily(
            "foretell_revenue_minor",
            "Payments received, in the currency's minor unit (cents), by currency.",
            labels=["currency"],
        )
        for currency, amount in sorted(self.revenue_minor.items()):
            revenue.add_metric([currency], amount)
        yield from (states, trials, revenue)

    def describe(self) -> Iterable[Metric]:
        return []


_business: _BusinessCollector | None = None


def set_business(
    subscriptions: Mapping[str, int], trials_started: int, revenue_minor: Mapping[str, int]
) -> None:
    """Replaces the business figures; the first call makes this process export them (only the
    scheduler does, so no other process shows zeros for them)."""
    global _business
    with _lock:
        if _business is None:
            _business = _BusinessCollector()
            REGISTRY.register(_business)
        _business.subscriptions = dict(subscriptions)
        _business.trials_started = trials_started
        _business.revenue_minor = dict(revenue_minor)


def serve_metrics(address: Address) -> int:
    """Starts the /metrics HTTP endpoint in a daemon thread; returns the bound port."""
    try:
        server, _thread = start_http_server(address.port, addr=address.host)
    except OSError as error:
        raise OSError(
            f"cannot serve metrics on {address} (FORETELL_METRICS_ADDR): {error.strerror}"
        ) from None
    return int(server.server_port)
