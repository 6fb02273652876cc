"""The sandbox against the real nsjail: the policy template, then hostile and honest scripts run
in real jails, each outcome told apart."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc import aio

import foretell.sandbox
from foretell.sandbox import (
    CgroupHost,
    CgroupVersion,
    JailUser,
    Outcome,
    PolicyTemplateError,
    RunCgroups,
    RunPaths,
    SandboxError,
    SandboxLimits,
    SandboxResult,
    nsjail_binary,
    prepare_run_dir,
    render_policy,
    render_template,
    run_in_sandbox,
    system_python,
    template_parameters,
)
from foretell.sandbox._outcome import Ending, classify
from foretell.sandbox._policy import pbstr

LIMITS = SandboxLimits(wall_seconds=5, cpu_seconds=5, memory_mib=256, pids=32, tmp_mib=4)
SITE_PACKAGES = Path(grpc.__file__).parent.parent


@pytest.fixture(scope="module")
def sandbox_root() -> Iterator[Path]:
    # Under /tmp and o+x all the way: nsjail bind-mounts as the jail's unprivileged user, which
    # cannot enter pytest's 0700 tmp_path.
    root = Path(tempfile.mkdtemp(prefix="ftsbx-", dir="/tmp"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def image_dir(sandbox_root: Path) -> Path:
    """A built image's layout: the provider's code, and wheels installed beside it (here grpcio
    copied from our own environment, the same CPython 3.11 ABI as the jail's runtime)."""
    image = sandbox_root / "image"
    (image / "app").mkdir(parents=True)
    (image / "app" / "model.py").write_text("ANSWER = 42\n")
    site = image / "site-packages"
    shutil.copytree(SITE_PACKAGES / "grpc", site / "grpc")
    shutil.copy(SITE_PACKAGES / "typing_extensions.py", site)
    for directory, _dirs, _files in os.walk(image):
        Path(directory).chmod(0o755)
    return image


@pytest.fixture
def run_dir(sandbox_root: Path) -> Path:
    return sandbox_root / f"r{uuid.uuid4().hex[:8]}"


async def jail(
    image_dir: Path, run_dir: Path, code: str, limits: SandboxLimits = LIMITS
) -> SandboxResult:
    return await run_in_sandbox(image_dir, run_dir, ["-c", textwrap.dedent(code)], limits)


def run_cgroup_dirs() -> set[Path]:
    host = foretell.sandbox.detect_cgroups()
    return {d for parent in host.parent_dirs() if parent.exists() for d in parent.glob("run-*")}


def jailed_pids(marker: str) -> list[int]:
    """Host pids of the processes whose command line carries `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and b"nsjail" not in cmdline:
                pids.append(int(entry.name))
    return pids


# ---- the policy template ------------------------------------------------------------------


def sample_run(image_dir: Path, version: CgroupVersion = CgroupVersion.V1) -> RunPaths:
    cgroups = RunCgroups(CgroupHost(version), "run-test", swap_accounting=True)
    return RunPaths(image_dir, image_dir.parent / "run", system_python(), cgroups)


def test_rendering_fails_on_a_missing_parameter() -> None:
    values: dict[str, object] = {name: 1 for name in template_parameters()}
    del values["memory_bytes"]
    with pytest.raises(PolicyTemplateError, match="memory_bytes"):
        render_template(values)


def test_rendering_fails_on_an_unknown_parameter() -> None:
    values: dict[str, object] = {name: 1 for name in template_parameters()}
    values["memory_byte"] = 1
    with pytest.raises(PolicyTemplateError, match="memory_byte"):
        render_template(values)


def test_the_rendered_policy_is_complete_and_binds_nothing_private(image_dir: Path) -> None:
    policy = render_policy(LIMITS, sample_run(image_dir))
    assert not re.search(r"\{\{|\}\}|\{%|%\}", policy)
    assert "iface_no_lo: true" in policy
    assert 'uidmap { inside_id: "65534" outside_id: "65534" count: 1 }' in policy
    assert f"cgroup_mem_max: {256 * 1024 * 1024}" in policy
    assert f"cgroup_mem_memsw_max: {256 * 1024 * 1024}" in policy
    assert 'cgroup_mem_parent: "NSJAIL/run-test"' in policy
    assert "keep_env: false" in policy
    sources = re.findall(r'src: "([^"]*)"', policy)
    assert sources, "no bind mounts found"
    for source in sources:
        assert not source.startswith(("/root", "/home", "/work", "/var", "/etc")), source
    # Every mount carries a why-comment on the line(s) above it.
    lines = policy.splitlines()
    for number, line in enumerate(lines):
        if line.startswith("mount {") and not lines[number - 1].startswith("mount {"):
            assert lines[number - 1].startswith("#"), line


def test_the_policy_targets_a_delegated_subtree_on_cgroup_v2(image_dir: Path) -> None:
    policy = render_policy(LIMITS, sample_run(image_dir, CgroupVersion.V2))
    assert "use_cgroupv2: true" in policy
    assert 'cgroupv2_mount: "/sys/fs/cgroup/NSJAIL/run-test"' in policy
    assert "cgroup_mem_swap_max: 0" in policy
    assert "cgroup_mem_memsw_max: 0" in policy


def test_strings_cannot_break_out_of_their_field() -> None:
    assert pbstr('a"b\\c\nd') == '"a\\"b\\\\c\\012d"'
    assert pbstr("é") == '"\\303\\251"'


def test_limits_and_user_are_checked() -> None:
    with pytest.raises(ValueError, match="memory_mib"):
        SandboxLimits(memory_mib=0)
    with pytest.raises(ValueError, match="root"):
        JailUser(outside_uid=0)


def test_nsjail_is_the_real_binary_not_a_launcher() -> None:
    with open(nsjail_binary(), "rb") as binary:
        assert binary.read(4) == b"\x7fELF"


def test_the_public_api_is_pinned() -> None:
    assert set(foretell.sandbox.__all__) == {
        "JAIL_IMAGE", "JAIL_SDK", "JAIL_SOCKET", "CgroupHost", "CgroupVersion", "JailDidNotRun",
        "JailUser", "Outcome", "OutputJudge", "PolicyTemplateError", "PythonRuntime",
        "RunCgroups", "RunPaths", "SandboxError", "SandboxLimits", "SandboxResult",
        "SandboxUnavailable", "create_run_cgroups", "detect_cgroups", "nsjail_binary",
        "prepare_run_dir", "render_policy", "render_template", "run_in_sandbox", "sdk_dir",
        "sweep_stale_run_cgroups", "system_python", "template_parameters",
        "PRELOAD_FILE", "Template", "TemplateFailed", "TemplatePool", "read_preload",
        "how_nsjail_ended",
    }  # fmt: skip


# ---- outcomes -----------------------------------------------------------------------------


async def test_a_script_runs_and_prints(image_dir: Path, run_dir: Path) -> None:
    result = await jail(image_dir, run_dir, "import model; print('answer', model.ANSWER)")
    assert result.outcome is Outcome.OK, result.log
    assert result.stdout == "answer 42\n"
    assert result.exit_code == 0
    assert result.duration_s < 1


async def test_an_exception_is_a_model_error_with_its_traceback(
    image_dir: Path, run_dir: Path
) -> None:
    code = """
    def predict():
        raise ValueError("no data for EURUSD")
    predict()
    """
    result = await jail(image_dir, run_dir, code)
    assert result.outcome is Outcome.MODEL_ERROR
    assert result.detail.startswith("Traceback (most recent call last):")
    assert "in predict" in result.detail
    assert result.detail.endswith("ValueError: no data for EURUSD")
    assert result.exit_code == 1


async def test_an_exit_without_traceback_reports_stderr(image_dir: Path, run_dir: Path) -> None:
    result = await jail(image_dir, run_dir, "import sys; sys.exit('no bars for GOOG')")
    assert result.outcome is Outcome.MODEL_ERROR
    assert result.detail == "no bars for GOOG"


async def test_a_cpu_spin_times_out(image_dir: Path, run_dir: Path) -> None:
    limits = replace(LIMITS, wall_seconds=2)
    result = await jail(image_dir, run_dir, "while True: pass", limits)
    assert result.outcome is Outcome.TIMEOUT
    assert "time limit" in result.log  # nsjail's own verdict, not our outside kill
    assert result.detail == "stopped after the 2 s wall-clock limit"
    assert 2 <= result.duration_s < 4


async def test_cpu_time_past_the_rlimit_is_a_timeout(image_dir: Path, run_dir: Path) -> None:
    limits = replace(LIMITS, cpu_seconds=1)
    result = await jail(image_dir, run_dir, "while True: pass", limits)
    assert result.outcome is Outcome.TIMEOUT
    # nsjail sets RLIMIT_CPU's soft and hard limits alike: the kernel sends SIGKILL, not SIGXCPU.
    assert result.signal == 9
    assert result.detail == "stopped after the 1 s CPU-time limit"


async def test_cpu_bandwidth_is_capped_by_the_cgroup(image_dir: Path, run_dir: Path) -> None:
    code = """
    import time
    start = time.monotonic()
    while time.monotonic() - start < 1:
        pass
    print(round(time.process_time(), 2))
    """
    result = await jail(image_dir, run_dir, code, replace(LIMITS, cpu_ms_per_sec=200))
    assert result.outcome is Outcome.OK, result.stderr
    assert float(result.stdout) < 0.5  # ~0.2 s of CPU in 1 s of wall clock


def test_an_early_sigkill_is_not_taken_for_the_cpu_limit() -> None:
    # The jail's process is PID 1 of its namespace, so it cannot even SIGKILL itself: an early
    # SIGKILL with no OOM evidence is the kernel's or ours, and not the CPU limit.
    ending = Ending(True, False, False, None, 9, ())
    limits = replace(LIMITS, cpu_seconds=5)
    verdict = classify(ending, "", limits, killed_from_outside=False, oom=False, duration_s=0.2)
    assert verdict == (Outcome.MODEL_ERROR, "terminated by SIGKILL")
    verdict = classify(ending, "", limits, killed_from_outside=False, oom=False, duration_s=5)
    assert verdict == (Outcome.TIMEOUT, "stopped after the 5 s CPU-time limit")


async def test_memory_past_the_cgroup_limit_is_out_of_memory(
    image_dir: Path, run_dir: Path
) -> None:
    # 1 GiB fits the address-space rlimit (2 GiB), so it is the cgroup's 256 MiB that stops it.
    result = await jail(image_dir, run_dir, "block = bytearray(1 << 30)")
    assert result.outcome is Outcome.OUT_OF_MEMORY, result.log
    assert result.signal == 9
    assert result.detail == "killed at the 256 MiB memory limit"


async def test_an_allocation_past_the_address_space_is_out_of_memory(
    image_dir: Path, run_dir: Path
) -> None:
    limits = replace(LIMITS, address_space_mib=512)
    result = await jail(image_dir, run_dir, "block = bytearray(1 << 30)", limits)
    assert result.outcome is Outcome.OUT_OF_MEMORY
    assert result.detail.endswith("MemoryError")


async def test_a_forbidden_syscall_is_killed_by_policy(image_dir: Path, run_dir: Path) -> None:
    code = """
    import ctypes
    ctypes.CDLL(None).ptrace(0, 0, 0, 0)  # PTRACE_TRACEME
    print("still alive")
    """
    result = await jail(image_dir, run_dir, code)
    assert result.outcome is Outcome.KILLED_BY_POLICY
    assert result.signal == 31  # SIGSYS
    assert "still alive" not in result.stdout


@pytest.mark.parametrize(
    "call",
    [
        "libc.unshare(0x10000000)",  # CLONE_NEWUSER
        'libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)',
        'libc.umount2(b"/tmp", 0)',
        "libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)",  # clone(CLONE_NEWUSER | SIGCHLD)
        "libc.syscall(321, 0, 0, 0)",  # bpf
        "libc.syscall(250, 0, 0, 0, 0, 0)",  # keyctl
    ],
)
async def test_escape_syscalls_are_killed_by_policy(
    image_dir: Path, run_dir: Path, call: str
) -> None:
    code = f"import ctypes\nlibc = ctypes.CDLL(None)\n{call}\nprint('still alive')"
    result = await jail(image_dir, run_dir, code)
    assert result.outcome is Outcome.KILLED_BY_POLICY, (call, result.stdout, result.stderr)


async def test_the_32_bit_syscall_abi_is_killed_by_policy(image_dir: Path, run_dir: Path) -> None:
    # i386 syscalls (int 0x80) have other numbers, socketcall() among them: the filter checks
    # the architecture first and kills anything that is not x86-64.
    code = """
    import ctypes, mmap
    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(b"\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3")  # mov eax, 20 (getpid); int 0x80; ret
    getpid32 = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    print("i386 getpid", getpid32())
    """
    result = await jail(image_dir, run_dir, code)
    assert result.outcome is Outcome.KILLED_BY_POLICY, (result.stdout, result.stderr)


async def test_probed_syscalls_fail_with_an_errno(image_dir: Path, run_dir: Path) -> None:
    code = """
    import ctypes, errno
    libc = ctypes.CDLL(None, use_errno=True)
    for name, number in [("io_uring_setup", 425), ("clone3", 435), ("userfaultfd", 323)]:
        print(name, libc.syscall(number, 0, 0), errno.errorcode[ctypes.get_errno()])
    """
    result = await jail(image_dir, run_dir, code)
    assert result.outcome is Outcome.OK, result.stderr
    assert result.stdout.splitlines() == [
        "io_uring_setup -1 ENOSYS",
        "clone3 -1 ENOSYS",
        "userfaultfd -1 EPERM",
    ]


async def test_output_past_the_cap_is_truncated_keeping_the_end(
    image_dir: Path, run_dir: Path
) -> None:
    code = """
    import sys
    for i in range(20000):
        print("x" * 100)
        print("y" * 100, file=sys.stderr)
    raise RuntimeError("the end")
    """
    limits = replace(LIMITS, output_bytes=8192)
    result = await jail(image_dir, run_dir, code, limits)
    assert result.outcome is Outcome.MODEL_ERROR
    assert result.stdout_truncated
    assert result.stderr_truncated
    assert "bytes of output dropped" in result.stdout
    assert len(result.stdout) < 8192 + 100
    assert result.detail.endswith("RuntimeError: the end")


async def test_a_judge_can_call_the_output_invalid(image_dir: Path, run_dir: Path) -> None:
    result = await run_in_sandbox(
        image_dir,
        run_dir,
        ["-c", "print('not a forecast')"],
        LIMITS,
        judge_output=lambda r: None if r.stdout.startswith("FORECAST") else "expected forecasts",
    )
    assert result.outcome is Outcome.INVALID_OUTPUT
    assert result.detail == "expected forecasts"


# ---- what the jail can and cannot reach ---------------------------------------------------


async def test_no_network_socket_can_be_created(image_dir: Path, run_dir: Path) -> None:
    code = """
    import socket
    for family in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK):
        try:
            kind = socket.SOCK_DGRAM if family == socket.AF_NETLINK else socket.SOCK_STREAM
            socket.socket(family, kind)
            print(family.name, "created")
        except OSError as e:
            print(family.name, e.strerror)
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1)
        print("connected")
    except OSError as e:
        print("connect", e.strerror)
    # A network namespace always has lo; iface_no_lo leaves it down, so it has no address.
    import fcntl, struct
    names = [line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]]
    with socket.socket(socket.AF_UNIX) as s:
        for name in names:
            request = struct.pack("16sH14x", name.encode(), 0)
            flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, request))[1]  # SIOCGIFFLAGS
            print("interface", name, "up" if flags & 1 else "down")
    print("routes", open("/proc/net/route").read().splitlines()[1:])
    """
    result = await jail(image_dir, run_dir, code)
    assert result.outcome is Outcome.OK, result.stderr
    assert result.stdout.splitlines() == [
        "AF_INET Operation not permitted",
        "AF_INET6 Operation not permitted",
        "AF_NETLINK Operation not permitted",
        "connect Operation not permitted",
        "interface lo down",
        "routes []",
    ]


async def test_the_jail_runs_as_an_unprivileged_user_inside_and_out(
    image_dir: Path, run_dir: Path
) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    code = f"""
    import os, time
    print(os.getuid(), os.getgid(), os.geteuid())
    time.sleep(0.3)  # {marker}
    """
    task = asyncio.create_task(jail(image_dir, run_dir, code))
    status = ""
    for _ in range(200):
        if pids := jailed_pids(marker):
            status = Path(f"/proc/{pids[0]}/status").read_text()  # noqa: ASYNC240 - procfs
            break
        await asyncio.sleep(0.005)
    result = await task
    assert result.stdout == "65534 65534 65534\n"
    ids = {line.split(":")[0]: line.split()[1:] for line in status.splitlines() if ":" in line}
    assert ids["Uid"] == ["65534"] * 4, status
    assert ids["Gid"] == ["65534"] * 4
    assert ids["CapEff"] == ["0000000000000000"]


async def test_host_secrets_are_out_of_sight(image_dir: Path, run_dir: Path) -> None:
    code = """
    import os
    for path in ["/root", "/work", "/home", "/var", "/etc/shadow", "/etc/passwd",
                 "/usr/lib/python3/dist-packages", "/usr/bin/sh"]:
        try:
            os.listdir(path) if not path.startswith(("/etc/", "/usr/bin/")) else open(path).read()
            print(path, "READABLE")
        except OSError as e:
            print(path, type(e).__name__)
    """
    result = await jail(image_dir, run_dir, code)
    assert result.outcome is Outcome.OK, result.stderr
    assert "READABLE" not in result.stdout
    assert result.stdout.count("FileNotFoundError") == 8


async def test_the_environment_is_only_the_allow_list(image_dir: Path, run_dir: Path) -> None:
    os.environ["FORETELL_TEST_SECRET"] = "hunter2"
    try:
        result = await jail(image_dir, run_dir, "import os; print(sorted(os.environ.items()))")
    finally:
        del os.environ["FORETELL_TEST_SECRET"]
    assert result.outcome is Outcome.OK
    assert eval(result.stdout) == [  # noqa: S307 - our own repr of a list of pairs
        ("FORETELL_SOCKET", "/run/foretell/feed.sock"),
        ("GRPC_ENABLE_FORK_SUPPORT", "0"),
        ("HOME", "/tmp"),  # noqa: S108 - the jail's own tmpfs
        ("LANG", "C.UTF-8"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("PYTHONNOUSERSITE", "1"),
        ("PYTHONPATH", "/image/app:/image/site-packages"),
        ("TZ", "UTC"),
    ]


async def test_tmp_is_writable_but_bounded(image_dir: Path, run_dir: Path) -> None:
    code = """
    import errno
    with open("/tmp/small", "wb") as f:
        f.write(b"x" * 1024 * 1024)
    print("small ok")
    try:
        with open("/tmp/big", "wb") as f:
            for _ in range(8):
                f.write(b"x" * 1024 * 1024)
                f.flush()
    except OSError as e:
        print("big", errno.errorcode[e.errno])
    """
    result = await jail(image_dir, run_dir, code)  # tmp_mib=4
    assert result.outcome is Outcome.OK, result.stderr
    assert result.stdout.splitlines() == ["small ok", "big ENOSPC"]


async def test_a_file_past_the_size_rlimit_fails(image_dir: Path, run_dir: Path) -> None:
    code = """
    import errno
    try:
        with open("/tmp/big", "wb") as f:
            f.write(b"x" * 3 * 1024 * 1024)
    except OSError as e:
        print(errno.errorcode[e.errno])
    """
    result = await jail(image_dir, run_dir, code, replace(LIMITS, file_size_mib=2))
    assert result.stdout == "EFBIG\n"


async def test_nothing_outside_tmp_is_writable(image_dir: Path, run_dir: Path) -> None:
    code = """
    import errno
    for path in ["/x", "/image/app/x", "/image/site-packages/x", "/run/foretell/x",
                 "/usr/lib/python3.11/x", "/usr/bin/x"]:
        try:
            open(path, "w").close()
            print(path, "WRITTEN")
        except OSError as e:
            print(path, errno.errorcode[e.errno])
    """
    result = await jail(image_dir, run_dir, code)
    assert result.outcome is Outcome.OK, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 6
    assert all(line.endswith(" EROFS") for line in lines), lines


async def test_a_fork_bomb_stops_at_the_pids_limit(image_dir: Path, run_dir: Path) -> None:
    code = """
    import errno, os, time
    children = 0
    try:
        for _ in range(1000):
            if os.fork() == 0:
                time.sleep(10)
                os._exit(0)
            children += 1
    except OSError as e:
        print(children, errno.errorcode[e.errno])
    """
    result = await jail(image_dir, run_dir, code, replace(LIMITS, pids=16))
    assert result.outcome is Outcome.OK, result.stderr
    children, error = result.stdout.split()
    assert int(children) < 16
    assert error == "EAGAIN"
    assert result.duration_s < 2  # the sleeping children died with the jail's PID 1


async def test_the_run_socket_is_the_one_way_out(image_dir: Path, run_dir: Path) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"echo:" + await reader.read(100))
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(echo, prepare_run_dir(run_dir))
    code = """
    import os, socket
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(os.environ["FORETELL_SOCKET"])
        s.sendall(b"ping")
        print(s.recv(100).decode())
    """
    try:
        result = await jail(image_dir, run_dir, code)
    finally:
        server.close()
        await server.wait_closed()
    assert result.outcome is Outcome.OK, result.stderr
    assert result.stdout == "echo:ping\n"


async def test_grpc_works_over_the_run_socket(image_dir: Path, run_dir: Path) -> None:
    async def echo(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        return b"echo:" + request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = aio.server()
    server.add_generic_rpc_handlers([handler])
    server.add_insecure_port(f"unix://{prepare_run_dir(run_dir)}")
    await server.start()
    code = """
    import os, grpc
    with grpc.insecure_channel("unix://" + os.environ["FORETELL_SOCKET"]) as channel:
        print(channel.unary_unary("/test.Echo/Echo")(b"ping", timeout=5).decode())
    """
    try:
        result = await jail(image_dir, run_dir, code)
    finally:
        await server.stop(None)
    assert result.outcome is Outcome.OK, result.stderr
    assert result.stdout == "echo:ping\n"


# ---- supervision --------------------------------------------------------------------------


async def test_cancelling_the_run_kills_the_jail_and_its_cgroups(
    image_dir: Path, run_dir: Path
) -> None:
    before = run_cgroup_dirs()
    marker = f"marker-{uuid.uuid4().hex}"
    task = asyncio.create_task(jail(image_dir, run_dir, f"import time\ntime.sleep(30)  # {marker}"))
    for _ in range(200):
        if jailed_pids(marker):
            break
        await asyncio.sleep(0.005)
    assert jailed_pids(marker), "the jail never started"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert jailed_pids(marker) == []
    assert run_cgroup_dirs() - before == set()


async def test_an_unusable_image_is_a_sandbox_error_not_an_outcome(
    sandbox_root: Path, run_dir: Path
) -> None:
    with pytest.raises(SandboxError, match="no-such-image"):
        await jail(sandbox_root / "no-such-image", run_dir, "print(1)")


async def test_stale_run_cgroups_are_swept_and_live_or_young_ones_kept() -> None:
    """What a worker killed mid-run leaves behind is removed at the next worker's start;
    a cgroup that holds a process, or is younger than any run may last, is not."""
    real = foretell.sandbox.detect_cgroups()
    # A parent of the test's own: a sweep here cannot touch anyone else's runs.
    host = foretell.sandbox.CgroupHost(real.version, real.root, f"FTSWEEP-{uuid.uuid4().hex[:8]}")
    stale, busy = (foretell.sandbox.create_run_cgroups(host) for _ in range(2))
    sleeper = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        (busy.dirs()[0] / "cgroup.procs").write_text(str(sleeper.pid))
        assert foretell.sandbox.sweep_stale_run_cgroups(host, older_than_s=3600) == []
        assert foretell.sandbox.sweep_stale_run_cgroups(host, older_than_s=0) == [stale.name]
        assert not any(d.exists() for d in stale.dirs())
        assert all(d.exists() for d in busy.dirs())
    finally:
        sleeper.kill()
        await sleeper.wait()
        await busy.remove()
        for parent in host.parent_dirs():
            parent.rmdir()
