"""Prometheus config and alert rules (deploy/prometheus) pass `promtool check` and their unit
tests (`promtool test rules`); every query of the Grafana dashboards (deploy/grafana) names only
metrics that a running Foretell really exports, read from its /metrics endpoint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from foretell import metrics
from foretell.account.v1 import account_service_pb2 as account_pb
from foretell.account.v1 import account_service_pb2_grpc as account_grpc
from foretell.runtime import Resources
from foretell.settings import Address, Settings
from foretell.worker import observe_business

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
# `make promtool` unpacks Debian's prometheus package here (no server is started).
PROMTOOL = ROOT / ".build" / "prometheus" / "usr" / "bin" / "promtool"
# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up"}
# The one alert input that comes from kube-state-metrics, not from Foretell.
KUBE_STATE_METRICS = {"kube_pod_container_status_restarts_total"}


def promtool() -> str:
    found = str(PROMTOOL) if PROMTOOL.is_file() else shutil.which("promtool")
    if found is None:
        pytest.fail("no promtool: run `make promtool` (Debian's prometheus package, unpacked)")
    return found


def run_promtool(*args: str) -> str:
    result = subprocess.run(
        [promtool(), *args], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_checks_the_scrape_config_and_rules() -> None:
    out = run_promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert "SUCCESS" in out
    out = run_promtool("check", "rules", str(PROMETHEUS / "rules" / "foretell.rules.yml"))
    assert "SUCCESS: 12 rules found" in out


def test_alert_rules_pass_their_unit_tests() -> None:
    out = run_promtool("test", "rules", str(PROMETHEUS / "tests" / "foretell.rules.test.yml"))
    assert "SUCCESS" in out


# ---------------------------------------------------------------------------------------------
# Dashboards

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (the subset of PromQL the dashboards use)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    text = re.sub(r"\b\d+(?:\.\d+)?(?:ms|[smhdwy])?\b", "", text)  # numbers, durations
    names: set[str] = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue  # a function or an aggregation
        names.add(match.group())
    return names


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (grpc_service, le) (rate(grpc_server_handling_seconds"
        '_bucket{grpc_type="unary",x=~"a|b"}[5m]))) / time() - up{job="x"} offset 5m'
    )
    assert metric_names(expr) == {"grpc_server_handling_seconds_bucket", "up"}


def _queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            queries.append(re.sub(r"^label_values\(([^,]+),.*\)$", r"\1", query))
    return queries


def _exported(exposition: str) -> set[str]:
    """Every series name the exposition's families can have."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("_sum", "_count", ""),
        "gauge": ("",),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture
async def exposition(
    resources: Resources,
    settings: Settings,
    account: account_grpc.AccountServiceAsyncStub,
) -> str:
    """/metrics of the running stack (the session's in-process services), after an RPC, with
    the scheduler's collectors on: the queue depth from Redis and the business figures from
    the database, through the same code paths the scheduler runs."""
    assert settings.redis_url
    port = metrics.serve_metrics(Address("127.0.0.1", 0))
    with pytest.raises(grpc.RpcError):
        await account.GetMe(account_pb.GetMeRequest())
    metrics.register_queues(settings.redis_url, [settings.queue_name])
    await observe_business({"resources": resources})
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    return response.text


async def test_dashboards_query_only_exported_metrics(exposition: str) -> None:
    exported = _exported(exposition) | PROMETHEUS_SERIES
    assert {"grpc_server_handled_total", "foretell_queue_jobs", "foretell_revenue_minor_total"} <= (
        exported
    )
    assert len(DASHBOARDS) == 3
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        queries = _queries(dashboard)
        assert queries, path.name
        for query in queries:
            unknown = metric_names(query) - exported
            assert not unknown, f"{path.name}: {query!r} reads {sorted(unknown)}"


async def test_alert_rules_read_only_exported_metrics(exposition: str) -> None:
    """The alerts' own series (besides kube-state-metrics' restart counter)."""
    exported = _exported(exposition) | PROMETHEUS_SERIES
    rules = yaml.safe_load((PROMETHEUS / "rules" / "foretell.rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    for group in rules["groups"]:
        for rule in group["rules"]:
            names = (
                metric_names(rule["expr"]) - recorded - {"kube_pod_container_status_restarts_total"}
            )
            assert names <= exported, f"{rule.get('alert') or rule['record']}: {names - exported}"
