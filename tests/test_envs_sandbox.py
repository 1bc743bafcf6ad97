"""The bubblewrap sandbox: isolation (network, filesystem, environment, hidden tests), limits
(time, processes, memory, output), clean-up (no process survives), the persistent shell's
framing, and host-side path safety."""

import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from envs.docker_sandbox import DockerConfig
from envs.env import CodingEnv
from envs.sandbox import LocalSandbox, SandboxError, SandboxLimits, SandboxPathError, make_sandbox
from envs.tasks import Task

FAST = SandboxLimits(timeout_s=5.0)


def pids_with(marker: str) -> list[int]:
    """Host PIDs whose command line contains `marker` (a psutil-free /proc scan)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as handle:
                    if marker.encode() in handle.read():
                        pids.append(int(name))
            except OSError:
                pass
    return pids


def wait_for(marker: str, count: int, timeout: float = 10.0) -> int:
    """How many processes carry `marker` once `count` do (or `timeout` passes): they start async."""
    deadline = time.monotonic() + timeout
    while len(pids_with(marker)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return len(pids_with(marker))


def sleeper(marker: str, seconds: int = 1000) -> str:
    """A shell command for a python process that sleeps, with `marker` in its command line."""
    return f"python3 -c 'import time; time.sleep({seconds})' {marker}"


@pytest.fixture
def box():
    sandbox = LocalSandbox({"calc.py": "x = 1\n", "pkg/mod.py": "y = 2\n"}, FAST)
    yield sandbox
    sandbox.close()


# ---- the shell and its framing ----------------------------------------------------------------

def test_exec_separates_streams_and_reports_exit_codes(box):
    result = box.exec("echo out; echo err >&2; exit 7")
    assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert not result.truncated and not result.timed_out
    assert box.exec("printf abc").stdout == "abc"                     # no trailing newline kept as is
    assert box.exec("false").exit_code == 1
    assert box.exec("printf '\\nfake:0\\n'; exit 3").exit_code == 3     # look-alike framing is plain output
    assert box.exec("echo x > /dev/stderr").stderr == "x\n"


def test_commands_run_in_work_dir_with_stdin_closed_and_no_state_leaks(box):
    assert box.exec("pwd; cat calc.py").stdout == "/work\nx = 1\n"
    assert box.exec("cat").stdout == ""                               # stdin is /dev/null: no hang
    box.exec("cd /tmp; export FOO=1")
    assert box.exec("pwd; echo ${FOO:-unset}").stdout == "/work\nunset\n"
    multi = box.exec("cat <<'EOF' > note.txt\nit's \"quoted\" $HOME\nEOF\ncat note.txt")
    assert multi.stdout == "it's \"quoted\" $HOME\n"
    assert box.exec("head -c 64 /dev/urandom > /dev/null; head -c 300 /dev/urandom").exit_code == 0


def test_output_is_capped_and_marked():
    with LocalSandbox({}, SandboxLimits(max_output_bytes=1000)) as sandbox:
        result = sandbox.exec("head -c 200000 /dev/zero | tr '\\0' a; echo tail >&2")
        assert result.truncated and result.exit_code == 0
        assert result.stdout.startswith("a" * 1000) and "output truncated: 199000 more bytes" in result.stdout
        assert result.stderr == "tail\n"


def test_a_killed_shell_is_restarted_and_files_are_kept(box):
    dead = box.exec("kill -9 $$")
    assert dead.exit_code == -1 and "shell exited" in dead.stderr
    assert box.exec("cat calc.py").stdout == "x = 1\n"


def test_late_output_of_a_background_job_is_not_mixed_into_the_next_command(box):
    box.exec("(sleep 0.3; echo LATE) &")
    time.sleep(1.5)
    assert box.exec("echo now").stdout == "now\n"


# ---- limits and clean-up --------------------------------------------------------------------

def test_timeout_kills_the_whole_tree_and_the_sandbox_recovers():
    marker = f"runaway-{uuid.uuid4().hex}"
    with LocalSandbox({"calc.py": "x = 1\n"}, SandboxLimits(timeout_s=1.0)) as sandbox:
        start = time.monotonic()
        result = sandbox.exec(f"python3 -c 'while True: pass' {marker} & setsid {sleeper(marker)} & "
                              f"python3 -c 'while True: pass' {marker}")
        elapsed = time.monotonic() - start
        assert result.timed_out and result.exit_code == 124 and "timed out" in result.stderr
        assert elapsed < 5.0
        assert pids_with(marker) == []
        assert sandbox.exec("cat calc.py").stdout == "x = 1\n"


def test_sleep_times_out(box):
    result = box.exec("sleep 100", timeout=0.5)
    assert result.timed_out and result.exit_code == 124


def test_background_process_does_not_survive_close():
    marker = f"background-{uuid.uuid4().hex}"
    sandbox = LocalSandbox({}, FAST)
    result = sandbox.exec(f"{sleeper(marker)} & setsid {sleeper(marker)} &")
    assert result.exit_code == 0 and not result.timed_out
    assert wait_for(marker, 2) == 2                                      # it really runs
    sandbox.close()
    assert pids_with(marker) == []
    assert not sandbox.workdir.exists()


def test_process_limit_stops_a_fork_bomb():
    limits = SandboxLimits(timeout_s=2.0, max_processes=16)
    with LocalSandbox({}, limits) as sandbox:
        counted = sandbox.exec(
            "python3 -c \"\nimport os, time\nn = 0\ntry:\n    while n < 200:\n        if os.fork() == 0:\n"
            "            time.sleep(3)\n            os._exit(0)\n        n += 1\nexcept OSError as e:\n"
            "    print('blocked', n, e.errno)\n\"")
        assert counted.stdout.startswith("blocked"), counted
        assert int(counted.stdout.split()[1]) < 16
        sandbox.stop()                                                   # its sleeping children hold the slots
        marker = f"bomb-{uuid.uuid4().hex}"
        counts = []
        with ThreadPoolExecutor(1) as pool:                               # watch it from the host
            bomb = pool.submit(sandbox.exec, "python3 -c \"\nimport os\nwhile True:\n    try:\n"
                               f"        os.fork()\n    except OSError:\n        pass\n\" {marker}")
            while not bomb.done():
                counts.append(len(pids_with(marker)))
                time.sleep(0.05)
        assert bomb.result().timed_out
        assert 1 < max(counts) <= 16                                     # it ran, within its limit
        assert pids_with(marker) == []                                   # killed, synchronously
        assert sandbox.exec("echo alive").stdout == "alive\n"


def test_memory_limit():
    with LocalSandbox({}, SandboxLimits(memory_mb=256)) as sandbox:
        result = sandbox.exec("python3 -c 'x = bytearray(1024 ** 3)'")
        assert result.exit_code != 0 and "MemoryError" in result.stderr


def test_file_size_limit():
    with LocalSandbox({}, SandboxLimits(file_size_mb=1)) as sandbox:
        result = sandbox.exec("head -c 3000000 /dev/zero > big; ls -l big")
        assert result.exit_code != 0 or "1048576" in result.stdout
        assert (sandbox.workdir / "big").stat().st_size <= 2**20


# ---- isolation --------------------------------------------------------------------------------

def test_no_network_even_to_the_hosts_loopback(box):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        result = box.exec(f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)\"")
        assert result.exit_code != 0 and ("refused" in result.stderr or "unreachable" in result.stderr)
        with pytest.raises(BlockingIOError):
            listener.accept()
        interfaces = box.exec("cat /proc/net/dev").stdout
        assert [line.split(":")[0].strip() for line in interfaces.splitlines()[2:]] == ["lo"]
    finally:
        listener.close()


def test_cannot_write_outside_the_work_dir(box):
    name = f"pwned-{uuid.uuid4().hex}"
    home = Path.home()
    result = box.exec(f"for d in /usr /etc /root {home} /work/.. / /bin /dev /proc; do echo x > $d/{name}; done; "
                      "echo x >> /etc/passwd; echo x > /tmp/ok && cat /tmp/ok")
    assert result.stdout == "x\n"                                        # only the private /tmp works
    for directory in (Path("/usr"), Path("/etc"), Path("/root"), home, box.workdir.parent, Path("/")):
        assert not (directory / name).exists(), directory
    assert box.exec("ls /tmp").stdout == "ok\n"


def test_the_callers_environment_does_not_leak(box, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "secret123")
    with LocalSandbox({}, FAST) as fresh:                                # started after the variable is set
        result = fresh.exec("env; cat /proc/*/environ | tr '\\0' '\\n'")
        assert "secret123" not in result.stdout + result.stderr
        assert "WANDB" not in result.stdout
        names = {line.split("=")[0] for line in fresh.exec("env").stdout.splitlines()}
        assert names <= {"PATH", "HOME", "LANG", "PWD", "SHLVL", "_"}


def test_hidden_tests_are_nowhere_in_the_agents_sandbox(tmp_path):
    secret = uuid.uuid4().hex
    task = Task(task_id="secret-0001", family="secret", split="train", difficulty=1,
                instruction="Fix calc.py.", files={"calc.py": "def f():\n    return 1\n"},
                hidden_tests={f"test_hidden_{secret}.py": f"# HIDDEN-{secret}\nimport sys\nsys.exit(0)\n"},
                grade_command=("python3", f"test_hidden_{secret}.py"))
    with CodingEnv(task, limits=SandboxLimits(timeout_s=30.0)) as env:
        assert env.grade().passed                                        # grading did write them somewhere
        (tmp_path / f"copy_{secret}.py").write_text(f"# HIDDEN-{secret}\n")   # and a host copy exists
        half = len(secret) // 2
        search = env.sandbox.exec(
            f"S={secret[:half]}; S=${{S}}{secret[half:]}; "
            "find / -path /proc -prune -o -name \"*$S*\" -print 2>/dev/null; "
            "grep -rl --exclude-dir=proc --exclude-dir=sys --exclude-dir=usr \"HIDDEN-$S\" / 2>/dev/null; "
            "echo searched", timeout=30.0)
        assert search.stdout == "searched\n"


# ---- host-side files --------------------------------------------------------------------------

def test_read_and_write_resolve_paths_like_the_sandbox(box):
    assert box.read_file("calc.py") == box.read_file("/work/calc.py") == box.read_file("./calc.py") == "x = 1\n"
    box.write_file("new/dir/file.py", "z = 3\n")
    assert box.exec("cat new/dir/file.py; id -u").stdout.splitlines()[0] == "z = 3"
    assert box.exec("echo more >> new/dir/file.py").exit_code == 0       # the sandbox may edit host-written files
    box.exec("ln -s calc.py alias.py; ln -s /work/pkg abs_pkg")
    assert box.read_file("alias.py") == "x = 1\n"
    assert box.read_file("abs_pkg/mod.py") == "y = 2\n"
    box.write_file("alias.py", "x = 9\n")
    assert box.read_file("calc.py") == "x = 9\n"


@pytest.mark.parametrize("path, fragment", [
    ("../etc/passwd", "'..' is not allowed"),
    ("pkg/../../x", "'..' is not allowed"),
    ("/etc/passwd", "outside /work"),
    ("/work", "work dir itself"),
    ("", "empty"),
    ("missing.py", "file not found: missing.py"),
    ("pkg", "is a directory"),
    ("calc.py/x", "not a directory"),
])
def test_bad_paths_are_refused_with_clear_messages(box, path, fragment):
    with pytest.raises(SandboxPathError, match=fragment):
        box.read_file(path)


def test_symlinks_cannot_lead_out_of_the_work_dir(box, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("host secret")
    os.symlink(outside, box.workdir / "host_link")
    box.exec("ln -s /etc/passwd passwd_link; ln -s ../.. up; ln -s /tmp tmp_link; mkfifo fifo")
    for path in ("host_link", "passwd_link", "up/etc/passwd", "tmp_link/x"):
        with pytest.raises(SandboxPathError):
            box.read_file(path)
        with pytest.raises(SandboxPathError):
            box.write_file(path, "pwned")
    assert outside.read_text() == "host secret"
    with pytest.raises(SandboxPathError, match="not a regular file"):
        box.read_file("fifo")                                            # refused, and no hang
    box.exec("ln -s loop loop")
    with pytest.raises(SandboxPathError, match="too many levels"):
        box.read_file("loop")


def test_oversized_files_are_refused():
    with LocalSandbox({}, SandboxLimits(file_size_mb=1)) as sandbox:
        with pytest.raises(SandboxPathError, match="limit"):
            sandbox.write_file("big.txt", "a" * (2**20 + 1))


# ---- construction -----------------------------------------------------------------------------

def test_make_sandbox_backends():
    with make_sandbox("local", {"a.py": "1"}, FAST) as sandbox:
        assert isinstance(sandbox, LocalSandbox)
    with pytest.raises(ValueError, match="unknown sandbox backend 'kvm'"):
        make_sandbox("kvm", {}, FAST)
    unreachable = DockerConfig(base_url="unix:///nonexistent/horizonrl-docker.sock")
    with pytest.raises(SandboxError, match="no docker engine is reachable at unix:///nonexistent/horizonrl-docker.sock"):
        make_sandbox("docker", {}, FAST, docker=unreachable)


def test_missing_bubblewrap_is_a_clear_error():
    with pytest.raises(SandboxError, match="install Debian's bubblewrap"):
        LocalSandbox({}, FAST, bwrap="bwrap-that-does-not-exist")


def test_never_runs_as_root():
    with pytest.raises(SandboxError, match="root"):
        LocalSandbox({}, FAST, run_as=(0, 0))


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_processes"):
        SandboxLimits(max_processes=0)


def test_close_is_idempotent_and_removes_the_work_dir():
    sandbox = LocalSandbox({"a.py": "1"}, FAST)
    sandbox.exec("chmod 000 /work/a.py; mkdir d; touch d/x; chmod 000 d")
    sandbox.close()
    sandbox.close()
    assert not sandbox.workdir.exists()
