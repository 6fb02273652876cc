"""The Kubernetes manifests (deploy/kubernetes): every overlay renders with `kubectl kustomize`,
validates against a pinned Kubernetes version (strict: no unknown field) and KEDA's schema, and
keeps the rules deploy/README.md states: probes, resources, non-root except the sandbox
workers (whose exact privileges are pinned here), no privileged pod, default-deny networking
with each pod reaching only what it uses, and the Envoy config for this topology accepted by
`envoy --mode validate`."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda

from foretell.gateway import dns_upstreams, render_envoy_config, validate_envoy_config
from foretell.runtime.lanes import Lane, concurrency, queue_name
from foretell.settings import Address, Settings

ANY_ADDRESS = "0.0.0.0"  # noqa: S104 - Envoy's listener in a pod

ROOT = Path(__file__).resolve().parents[1]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("dev", "production")
# The oldest Kubernetes the manifests are written for: user namespaces (hostUsers: false) are
# generally available from 1.36 on.
KUBERNETES_VERSION = "1.36.0"
KUBECTL = Path(sys.executable).parent / "kubectl"
FORETELL = Path(sys.executable).parent / "foretell"

# The services' full names, as their gRPC health checks report them.
SERVICE_NAMES = {
    "account": "foretell.account.v1.AccountService",
    "registry": "foretell.registry.v1.RegistryService",
    "subscription": "foretell.subscription.v1.SubscriptionService",
    "datafeed": "foretell.datafeed.v1.DataFeedService",
    "forecast": "foretell.forecast.v1.ForecastService",
}
# What nsjail needs in a worker pod and nothing else (deploy/README.md, "Privileges").
WORKER_CAPABILITIES = {"SYS_ADMIN", "SETUID", "SETGID"}
# Every lane has a worker Deployment of its own (foretell.runtime.lanes).
LANES = {lane.value for lane in Lane}
LANE_LABEL = "foretell.dev/lane"
# Ports pods may open connections to: DNS, PostgreSQL, Redis, and (Envoy only) gRPC.
STORE_PORTS = {53, 5432, 6379}

Doc = dict[str, Any]


@functools.cache
def render(overlay: str) -> tuple[Doc, ...]:
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(KUSTOMIZE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    [doc] = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


def workloads(docs: tuple[Doc, ...]) -> Iterator[tuple[Doc, Doc]]:
    """Every (workload, pod template) of the rendering."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield doc, doc["spec"]["template"]


def containers(pod: Doc) -> list[Doc]:
    spec = pod["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def component(pod: Doc) -> str:
    return str(pod["metadata"]["labels"].get("app.kubernetes.io/component", ""))


def worker_lanes(docs: tuple[Doc, ...]) -> dict[str, Doc]:
    """The worker Deployments by lane, after checking there is exactly one per lane."""
    lanes: dict[str, Doc] = {}
    for doc in of_kind(docs, "Deployment"):
        if component(doc["spec"]["template"]) == "worker":
            lane = doc["spec"]["template"]["metadata"]["labels"][LANE_LABEL]
            assert lane not in lanes, f"two Deployments for the {lane} lane"
            lanes[lane] = doc
    assert set(lanes) == LANES
    return lanes


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> tuple[Doc, ...]:
    return render(request.param)


def test_every_overlay_validates_against_kubernetes(docs: tuple[Doc, ...]) -> None:
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {error.message}")
        checked += 1
    assert checked > 30


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def test_keda_objects_match_keda_schema(docs: tuple[Doc, ...]) -> None:
    """Validated by models generated from KEDA's CRDs; they ignore unknown fields, so the
    round trip must give the document back unchanged (strict, like the rest)."""
    models: dict[str, Any] = {
        "ScaledObject": keda.ScaledObject,
        "TriggerAuthentication": keda.TriggerAuthentication,
    }
    found = [doc for doc in docs if doc["apiVersion"].startswith("keda.sh/")]
    assert {doc["kind"] for doc in found} == set(models)
    for doc in found:
        model = models[doc["kind"]].model_validate(doc)
        again = _without_nulls(model.model_dump(by_alias=True, mode="json", exclude_unset=True))
        assert again == doc, f"{doc['kind']}/{doc['metadata']['name']} has fields KEDA ignores"


def test_services_have_probes_resources_pdb_hpa_and_headless_service(
    docs: tuple[Doc, ...],
) -> None:
    for short, full in SERVICE_NAMES.items():
        name = f"foretell-{short}"
        deployment = named(docs, "Deployment", name)
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["serve", short]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["readinessProbe"]["grpc"] == {"port": ports["grpc"], "service": full}
        assert container["livenessProbe"]["grpc"]["port"] == ports["grpc"]
        service = named(docs, "Service", name)
        assert service["spec"]["clusterIP"] == "None", "Envoy balances per request over pods"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        pdb = named(docs, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        hpa = named(docs, "HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_every_container_has_requests_and_a_memory_limit(docs: tuple[Doc, ...]) -> None:
    for workload, pod in workloads(docs):
        for container in containers(pod):
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= resources.get("requests", {}).keys(), where
            assert "memory" in resources.get("limits", {}), where


def test_images_are_pinned(docs: tuple[Doc, ...]) -> None:
    for workload, pod in workloads(docs):
        for container in containers(pod):
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1], f"{workload['metadata']['name']}: {image}"
            assert not image.endswith(":latest")


def test_no_pod_is_privileged_or_shares_the_node(docs: tuple[Doc, ...]) -> None:
    for workload, pod in workloads(docs):
        spec = pod["spec"]
        name = workload["metadata"]["name"]
        assert spec.get("automountServiceAccountToken") is False, name
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(field), f"{name}: {field}"
        assert not any("hostPath" in volume for volume in spec.get("volumes", [])), name
        for container in containers(pod):
            context = container.get("securityContext", {})
            assert not context.get("privileged"), name
            assert context.get("readOnlyRootFilesystem") is True, f"{name}/{container['name']}"
            assert context["capabilities"]["drop"] == ["ALL"], f"{name}/{container['name']}"


def _effective(pod: Doc, container: Doc, field: str) -> Any:
    context = container.get("securityContext", {})
    if field in context:
        return context[field]
    return pod["spec"].get("securityContext", {}).get(field)


def test_only_the_workers_run_as_root_and_only_with_what_nsjail_needs(
    docs: tuple[Doc, ...],
) -> None:
    workers = 0
    for workload, pod in workloads(docs):
        name = workload["metadata"]["name"]
        for container in containers(pod):
            added = set(container["securityContext"]["capabilities"].get("add", []))
            seccomp = _effective(pod, container, "seccompProfile")
            assert seccomp is not None, f"{name}/{container['name']}: no seccomp profile"
            if component(pod) == "worker" and container["name"] == "worker":
                continue
            assert _effective(pod, container, "runAsNonRoot") is True, f"{name}/{container}"
            assert not added, name
            assert container["securityContext"].get("allowPrivilegeEscalation") is False, name
            assert seccomp == {"type": "RuntimeDefault"}, name
        if component(pod) != "worker":
            continue
        workers += 1
        spec = pod["spec"]
        [worker] = spec["containers"]
        context = worker["securityContext"]
        assert set(context["capabilities"]["add"]) == WORKER_CAPABILITIES
        # Root only inside the pod's own user namespace; /proc unmasked so the jail can mount
        # its own; no privilege escalation flag (the API refuses false with SYS_ADMIN).
        assert spec["hostUsers"] is False
        assert context["procMount"] == "Unmasked"
        assert "allowPrivilegeEscalation" not in context
        assert spec["securityContext"]["seccompProfile"] == {
            "type": "Localhost",
            "localhostProfile": "profiles/foretell-nsjail.json",
        }
        assert spec["securityContext"]["appArmorProfile"] == {
            "type": "Localhost",
            "localhostProfile": "foretell-nsjail",
        }
        # On the untrusted pool, and nothing else tolerates its taint.
        assert spec["nodeSelector"] == {"foretell.dev/pool": "sandbox"}
        assert [t["key"] for t in spec["tolerations"]] == ["foretell.dev/untrusted"]
        assert "foretell-jwt-keys" not in json.dumps(spec), "no token keys on untrusted nodes"
        lane = pod["metadata"]["labels"][LANE_LABEL]
        assert worker["args"] == ["worker", "--lane", lane, "--role", "jobs", "--metrics"]
    assert workers == len(LANES)
    for workload, pod in workloads(docs):
        if component(pod) != "worker":
            assert "tolerations" not in pod["spec"], workload["metadata"]["name"]


def test_each_worker_lane_scales_on_its_queue(docs: tuple[Doc, ...]) -> None:
    """One Deployment per lane, each with its own ScaledObject on the queue that lane's
    worker takes jobs from (the name the worker derives, not a copy of it), its own
    PodDisruptionBudget and its own metrics Service."""
    scaled = {doc["spec"]["scaleTargetRef"]["name"]: doc for doc in of_kind(docs, "ScaledObject")}
    lanes = worker_lanes(docs)
    assert len(scaled) == len(lanes)
    for lane, deployment in lanes.items():
        name = deployment["metadata"]["name"]
        assert name == f"foretell-worker-{lane}"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "foretell-worker"
        # The selector names the lane, so no lane's Deployment, PDB or Service takes another's pods.
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector[LANE_LABEL] == lane
        assert selector.items() <= labels.items()
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["FORETELL_SCHEDULER"] == "off"
        settings = Settings(queue_name=env["FORETELL_QUEUE_NAME"])
        [trigger] = scaled[name]["spec"]["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == queue_name(settings, Lane(lane)), lane
        assert trigger["metadata"]["listLength"] == str(concurrency(Settings(), Lane(lane)))
        assert trigger["authenticationRef"] == {"name": "foretell-redis"}
        pdb = named(docs, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"] == selector
        service = named(docs, "Service", name)
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["selector"] == selector
    # Four queues, one per lane: no two lanes take the same jobs.
    queues = [s["spec"]["triggers"][0]["metadata"]["listName"] for s in scaled.values()]
    assert len(set(queues)) == len(LANES)


def _without_lane(value: Any, lane: str) -> Any:
    if isinstance(value, dict):
        return {k: _without_lane(v, lane) for k, v in value.items() if k != LANE_LABEL}
    if isinstance(value, list):
        return [_without_lane(v, lane) for v in value]
    return "LANE" if value == lane else value


def test_worker_lanes_differ_only_in_their_lane(docs: tuple[Doc, ...]) -> None:
    """Same pod security, node pool, volumes, privileges and resources in every lane."""
    lanes = worker_lanes(docs)
    pods = {lane: _without_lane(d["spec"]["template"], lane) for lane, d in lanes.items()}
    first, *others = pods.values()
    assert all(pod == first for pod in others)


def test_prometheus_scrapes_every_metrics_service() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    names = {name.split(".")[0] for sd in job["dns_sd_configs"] for name in sd["names"]}
    services = {
        s["metadata"]["name"]
        for s in of_kind(render("production"), "Service")
        if any(p["name"] == "metrics" for p in s["spec"]["ports"])
    }
    assert services >= {f"foretell-worker-{lane}" for lane in LANES}
    assert names == services


def test_scheduler_is_single_and_migrations_are_a_job(docs: tuple[Doc, ...]) -> None:
    scheduler = named(docs, "Deployment", "foretell-scheduler")
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"] == {"type": "Recreate"}
    [container] = scheduler["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["worker", "--role", "cron", "--metrics"]
    assert not any(
        h["spec"]["scaleTargetRef"]["name"] == "foretell-scheduler"
        for h in of_kind(docs, "HorizontalPodAutoscaler")
    )
    migrate = named(docs, "Job", "foretell-migrate")
    [container] = migrate["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["db", "upgrade"]


def test_stores_per_overlay() -> None:
    dev, production = render("dev"), render("production")
    assert sorted(s["metadata"]["name"] for s in of_kind(dev, "StatefulSet")) == [
        "foretell-postgres",
        "foretell-redis",
    ]
    assert all(s["spec"]["replicas"] == 1 for s in of_kind(dev, "StatefulSet"))
    assert not of_kind(production, "StatefulSet")
    # Production Secrets come from the operator, never from the repository.
    assert not of_kind(production, "Secret")
    assert named(production, "Service", "foretell-envoy")["spec"]["type"] == "LoadBalancer"
    store = named(production, "PersistentVolumeClaim", "foretell-store")
    assert store["spec"]["accessModes"] == ["ReadWriteMany"]


def _secret_references(docs: tuple[Doc, ...]) -> set[str]:
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key in ("secretKeyRef", "secretRef"):
                if key in value:
                    names.add(value[key]["name"])
            if "secret" in value and isinstance(value["secret"], dict):
                names.add(value["secret"]["secretName"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for _workload, pod in workloads(docs):
        walk(pod)
    for auth in of_kind(docs, "TriggerAuthentication"):
        names.update(ref["name"] for ref in auth["spec"]["secretTargetRef"])
    return names


# What the operator creates (deploy/README.md, "From an empty cluster").
OPERATOR_SECRETS = {
    "foretell-database",
    "foretell-redis",
    "foretell-jwt-keys",
    "foretell-ledger-keys",
}
# Keys are never generated from the repository, not even for development.
KEY_SECRETS = {"foretell-jwt-keys", "foretell-ledger-keys"}


def test_every_referenced_secret_is_rendered_or_documented() -> None:
    dev, production = render("dev"), render("production")
    assert _secret_references(production) == OPERATOR_SECRETS
    rendered = {s["metadata"]["name"] for s in of_kind(dev, "Secret")}
    assert _secret_references(dev) - rendered == KEY_SECRETS


# ---------------------------------------------------------------------------------------------
# NetworkPolicy: evaluated the way the API server's semantics have it (the subset used here).


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        if expression["operator"] == "In" and value not in expression["values"]:
            return False
        if expression["operator"] != "In":
            raise NotImplementedError(expression["operator"])
    return True


def _policies(docs: tuple[Doc, ...], labels: dict[str, str], kind: str) -> list[Doc]:
    return [
        policy
        for policy in of_kind(docs, "NetworkPolicy")
        if kind in policy["spec"]["policyTypes"] and _selects(policy["spec"]["podSelector"], labels)
    ]


def test_network_policies_deny_by_default_and_cover_every_pod(docs: tuple[Doc, ...]) -> None:
    deny = named(docs, "NetworkPolicy", "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    covered: set[str] = set()
    for workload, pod in workloads(docs):
        labels = pod["metadata"]["labels"]
        name = workload["metadata"]["name"]
        ingress = [
            r for p in _policies(docs, labels, "Ingress") for r in p["spec"].get("ingress", ())
        ]
        egress = [r for p in _policies(docs, labels, "Egress") for r in p["spec"].get("egress", ())]
        # Only Envoy accepts connections from anywhere; everyone else only from named peers.
        from_anywhere = [r for r in ingress if "from" not in r]
        if labels["app.kubernetes.io/name"] == "foretell-envoy":
            assert [r["ports"] for r in from_anywhere] == [[{"protocol": "TCP", "port": 8080}]]
        else:
            assert not from_anywhere, name
        ports = {p["port"] for rule in egress for p in rule["ports"]}
        assert all("ports" in rule for rule in egress), f"{name}: egress to every port"
        if labels["app.kubernetes.io/name"] == "foretell-envoy":
            assert ports == {53, 50051}
        elif component(pod) == "scheduler":
            # Webhooks: HTTPS out, to public addresses only (the webhooks-egress policy).
            assert ports <= STORE_PORTS | {443}, f"{name}: {ports}"
        else:
            assert ports <= STORE_PORTS, f"{name}: {ports}"
        if component(pod) == "worker":
            assert ports == STORE_PORTS, "workers reach PostgreSQL, Redis and DNS, no more"
            accepted = {p["port"] for rule in ingress for p in rule["ports"]}
            assert accepted == {9464}, f"{name}: metrics scrapes only"
            covered.add(labels[LANE_LABEL])
    assert covered == LANES


# ---------------------------------------------------------------------------------------------
# The worker's seccomp profile and the Envoy config of this topology.

SECCOMP = KUSTOMIZE / "seccomp" / "foretell-nsjail.json"
# nsjail's namespaces, mounts and maps; the worker's own Python and gRPC.
NSJAIL_SYSCALLS = {
    "clone",
    "clone3",
    "unshare",
    "mount",
    "umount2",
    "pivot_root",
    "sethostname",
    "setresuid",
    "setresgid",
    "prctl",
    "seccomp",
    "setrlimit",
    "prlimit64",
    "execve",
    "wait4",
    "socket",
    "connect",
    "epoll_wait",
    "openat",
    "mmap",
}
DENIED = {
    "kexec_load",
    "init_module",
    "finit_module",
    "bpf",
    "keyctl",
    "add_key",
    "ptrace",
    "process_vm_readv",
    "open_by_handle_at",
    "io_uring_setup",
    "setns",
    "reboot",
    "perf_event_open",
    "userfaultfd",
    "fsopen",
    "move_mount",
}


def test_the_worker_seccomp_profile_allows_nsjail_and_refuses_kernel_wide_calls() -> None:
    profile = json.loads(SECCOMP.read_text())
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    [rule] = profile["syscalls"]
    assert rule["action"] == "SCMP_ACT_ALLOW"
    allowed = set(rule["names"])
    assert allowed >= NSJAIL_SYSCALLS
    assert not DENIED & allowed


@pytest.mark.parametrize("namespace", ["foretell", "foretell-dev"])
def test_envoy_config_for_the_cluster_passes_envoy_validate(tmp_path: Path, namespace: str) -> None:
    upstreams = dns_upstreams(f"foretell-{{service}}.{namespace}.svc.cluster.local", 50051)
    text = render_envoy_config(Settings(), upstreams, http_addr=Address(ANY_ADDRESS, 8080))
    config = yaml.safe_load(text)
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    assert set(clusters) == set(SERVICE_NAMES)
    for short, cluster in clusters.items():
        assert cluster["type"] == "STRICT_DNS"
        [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert address == {
            "address": f"foretell-{short}.{namespace}.svc.cluster.local",
            "port_value": 50051,
        }
        [check] = cluster["health_checks"]
        assert check["grpc_health_check"]["service_name"] == SERVICE_NAMES[short]
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    validate_envoy_config(path)


def test_the_gateway_config_command_of_the_envoy_pod(tmp_path: Path) -> None:
    """The init container's command line, as the Envoy Deployment has it."""
    envoy = named(render("production"), "Deployment", "foretell-envoy")
    [init] = envoy["spec"]["template"]["spec"]["initContainers"]
    args = [
        arg.replace("$(POD_NAMESPACE)", "foretell").replace("$(CLUSTER_DOMAIN)", "cluster.local")
        for arg in init["args"]
    ]
    output = tmp_path / "envoy.yaml"
    args[args.index("--output") + 1] = str(output)
    result = subprocess.run(
        [str(FORETELL), *args], capture_output=True, text=True, check=False, timeout=180
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(output.read_text())
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener == {"address": ANY_ADDRESS, "port_value": 8080}
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


# ---------------------------------------------------------------------------------------------
# The roles the worker and scheduler pods run with.


# The jobs each lane's worker takes (foretell.worker): one kind of job per lane.
LANE_FUNCTIONS = {
    Lane.BUILD: {"build_version"},
    Lane.LIVE: {"run_version"},
    Lane.DRY: {"dry_run"},
    Lane.REPLAY: {"replay_run"},
}


@pytest.mark.usefixtures("own_event_loop")
def test_worker_roles_split_jobs_from_periodic_jobs() -> None:
    """What each lane's `--role jobs` pod and the scheduler's `--role cron` pod run."""
    from foretell.worker import create_worker

    settings = Settings(redis_url="redis://127.0.0.1:6379/0", queue_name="q")
    assert set(LANE_FUNCTIONS) == set(Lane)
    for lane, functions in LANE_FUNCTIONS.items():
        jobs = create_worker(settings, lane=lane, role="jobs")
        assert jobs.queue_name == queue_name(settings, lane)
        assert set(jobs.functions) == functions, lane
        assert not jobs.cron_jobs, lane
        assert jobs.max_jobs == concurrency(settings, lane)
    # The cron worker's own jobs never land where job workers would take them, and it takes
    # no build or run.
    cron = create_worker(settings, role="cron")
    assert cron.queue_name == "q:cron"
    assert {c.name for c in cron.cron_jobs} == {
        "cron:scheduler_cycle",
        "cron:bill_subscriptions",
        "cron:checkpoint_ledgers",
        "cron:send_notices",
        "cron:observe_business",
    }
    assert set(cron.functions) == {c.name for c in cron.cron_jobs}
    # Only the live lane carries the periodic jobs (`foretell up` runs role "all").
    both = create_worker(settings)
    assert both.queue_name == "q"
    assert set(both.functions) == {"run_version", *cron.functions}
