"""The nsjail policy: a template with the run's limits and paths as parameters."""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2
import jinja2.meta

from foretell.sandbox._cgroups import CgroupVersion, RunCgroups
from foretell.sandbox._host import PythonRuntime
from foretell.sandbox._limits import DEFAULT_USER, JailUser, SandboxLimits

TEMPLATE = "nsjail.cfg.j2"
JAIL_IMAGE = "/image"
JAIL_APP = f"{JAIL_IMAGE}/app"
JAIL_SITE_PACKAGES = f"{JAIL_IMAGE}/site-packages"
# The platform's provider SDK (foretell.sdk, its generated protos, grpcio, protobuf), when a run
# needs it: first on the path, so the wire client is the one the platform tested, whatever
# versions the model's own requirements installed.
JAIL_SDK = "/sdk"
JAIL_SOCKET_DIR = "/run/foretell"
SOCKET_NAME = "feed.sock"
JAIL_SOCKET = f"{JAIL_SOCKET_DIR}/{SOCKET_NAME}"


class PolicyTemplateError(Exception):
    """The template and the values given to it do not match."""


@dataclass(frozen=True)
class RunPaths:
    """Where one run happens and as whom: the version's image, the run's directory on the host
    (its `sock/` subdirectory is the jail's only way out; the policy and nsjail's log sit
    beside it, out of the jail's reach), the runtime bound in, the run's cgroups and user."""

    image_dir: Path
    run_dir: Path
    runtime: PythonRuntime
    cgroups: RunCgroups
    user: JailUser = DEFAULT_USER
    # A read-only directory bound at /sdk and put first on PYTHONPATH; None: not bound.
    sdk_dir: Path | None = None

    @property
    def socket_dir(self) -> Path:
        return self.run_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "nsjail.log"

    @property
    def config_file(self) -> Path:
        return self.run_dir / "nsjail.cfg"


def pbstr(value: object) -> str:
    """A protobuf text-format string literal: quoted, with quotes, backslashes, control and
    non-ASCII bytes escaped, so no path or argument can break out of its field."""
    out = []
    for byte in str(value).encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def pbbool(value: object) -> str:
    if not isinstance(value, bool):
        raise PolicyTemplateError(f"not a bool: {value!r}")
    return "true" if value else "false"


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        # StrictUndefined: a placeholder with no value fails the render instead of vanishing.
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - protobuf text, escaped field by field with pbstr.
        keep_trailing_newline=True,
    )
    env.filters["pbstr"] = pbstr
    env.filters["pbbool"] = pbbool
    return env


@functools.cache
def _template_source() -> str:
    return importlib.resources.files(__package__).joinpath(TEMPLATE).read_text()


@functools.cache
def _template() -> jinja2.Template:
    return _environment().from_string(_template_source())


@functools.cache
def template_parameters() -> frozenset[str]:
    """Every placeholder the template uses."""
    ast = _environment().parse(_template_source())
    return frozenset(jinja2.meta.find_undeclared_variables(ast))


def render_template(values: Mapping[str, object]) -> str:
    """Renders the policy from exactly the template's parameters: a missing one or one the
    template does not know (a typo here) is an error, as is any placeholder left in the text."""
    expected = template_parameters()
    missing, unknown = expected - values.keys(), values.keys() - expected
    if missing or unknown:
        raise PolicyTemplateError(
            f"policy parameters: missing {sorted(missing)}, unknown {sorted(unknown)}"
        )
    try:
        text = _template().render(values)
    except jinja2.UndefinedError as e:
        raise PolicyTemplateError(f"policy template: {e}") from e
    if any(marker in text for marker in ("{{", "}}", "{%", "%}")):
        raise PolicyTemplateError("policy template left a placeholder unrendered")
    return text


def policy_values(limits: SandboxLimits, run: RunPaths) -> dict[str, object]:
    cgroups = run.cgroups
    root = cgroups.host.root
    v2 = cgroups.host.version is CgroupVersion.V2
    swap = cgroups.swap_accounting
    return {
        "wall_seconds": limits.wall_seconds,
        "cpu_seconds": limits.cpu_seconds,
        "address_space_mib": limits.address_space_mib,
        "file_size_mib": limits.file_size_mib,
        "open_files": limits.open_files,
        "processes": limits.processes,
        "memory_bytes": limits.memory_bytes,
        "memsw_bytes": limits.memory_bytes if swap and not v2 else 0,
        "swap_bytes": 0 if swap and v2 else -1,
        "pids": limits.pids,
        "cpu_ms_per_sec": limits.cpu_ms_per_sec,
        "tmp_bytes": limits.tmp_mib * 1024 * 1024,
        "cgroup_v2": v2,
        # v2: nsjail creates NSJAIL.<pid> directly in the mount it is given, so it is given
        # the run's own directory; v1: the run's directory relative to each controller's root.
        "cgroupv2_mount": str(cgroups.dirs()[0]) if v2 else str(root),
        "cgroup_mem_mount": str(root / "memory"),
        "cgroup_pids_mount": str(root / "pids"),
        "cgroup_cpu_mount": str(root / "cpu"),
        "cgroup_parent": cgroups.relative,
        "inside_uid": run.user.inside_uid,
        "inside_gid": run.user.inside_gid,
        "outside_uid": run.user.outside_uid,
        "outside_gid": run.user.outside_gid,
        "log_file": str(run.log_file),
        "python_executable": str(run.runtime.executable),
        "python_stdlib": str(run.runtime.stdlib),
        "lib_dir": str(run.runtime.lib_dir),
        "loader": str(run.runtime.loader),
        "loader_source": str(run.runtime.loader.resolve()),
        "python_path": ":".join(
            ([JAIL_SDK] if run.sdk_dir else []) + [JAIL_APP, JAIL_SITE_PACKAGES]
        ),
        "sdk_dir": str(run.sdk_dir) if run.sdk_dir else "",
        "jail_sdk": JAIL_SDK,
        "image_app": str(run.image_dir / "app"),
        "image_site_packages": str(run.image_dir / "site-packages"),
        "socket_dir": str(run.socket_dir),
        "jail_socket_dir": JAIL_SOCKET_DIR,
        "jail_socket": JAIL_SOCKET,
        "warm": False,
    }


def render_policy(limits: SandboxLimits, run: RunPaths) -> str:
    """The nsjail config (protobuf text) for one run."""
    return render_template(policy_values(limits, run))
