"""Attacks on the local sandbox that must all fail, with nothing left running afterwards:
network egress to listeners on the host, reading host files and protected artifacts (symlinks,
``..``, ``/proc/<pid>/root``, ``/proc/1/cwd``), fork, memory and disk bombs, output floods,
infinite loops, orphaned background processes, writes outside the work dir, raw block devices
and the caller's environment. Every test checks, through the host's ``/proc``, that no process
of the sandboxes it made survives their ``close``."""

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from envs.env import CodingEnv, grading_files
from envs.sandbox import LocalSandbox, SandboxLimits, SandboxPathError, make_sandbox
from envs.tasks import Task
from envs.tools import ToolCall

LIMITS = SandboxLimits(timeout_s=4.0, cpu_s=10, memory_mb=256, max_processes=32, file_size_mb=4,
                       max_output_bytes=10_000, tmp_size_mb=8, disk_mb=16)


def pid_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def processes_in(namespace: str) -> list[int]:
    """Host PIDs of the processes in a PID namespace."""
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and pid_namespace(name) == namespace]


class Boxes:
    """Makes sandboxes and remembers their PID namespaces, to check that nothing is left."""

    def __init__(self) -> None:
        self.namespaces: set[str] = set()
        self.sandboxes: list[LocalSandbox] = []

    def make(self, files=None, limits: SandboxLimits = LIMITS, **kwargs) -> LocalSandbox:
        box = LocalSandbox(files or {}, limits, **kwargs)
        self.sandboxes.append(box)
        self.track(box)
        return box

    def track(self, box) -> str:
        namespace = box.exec("readlink /proc/self/ns/pid").stdout.strip()
        assert namespace.startswith("pid:[") and namespace != pid_namespace("self")
        self.namespaces.add(namespace)
        return namespace

    def leftovers(self) -> list[int]:
        return [pid for namespace in self.namespaces for pid in processes_in(namespace)]


@pytest.fixture
def boxes():
    made = Boxes()
    yield made
    for box in made.sandboxes:
        box.close()
    deadline = time.monotonic() + 10   # killed processes leave /proc when the kernel has reaped them (slow under load)
    while made.leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert made.leftovers() == [], "processes of a closed sandbox are still running"


@pytest.fixture
def secret(tmp_path):
    """A host file whose content must never reach a sandbox."""
    value = f"HOST-SECRET-{uuid.uuid4().hex}"
    path = tmp_path / f"secret-{uuid.uuid4().hex[:8]}.txt"
    path.write_text(value + "\n")
    return path, value


def host_ip() -> str:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


# ---- network -------------------------------------------------------------------------------------

def test_no_egress_to_listeners_on_the_host(boxes, tmp_path):
    tcp = socket.socket()
    tcp.bind(("0.0.0.0", 0))
    tcp.listen()
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", 0))
    udp.setblocking(False)
    abstract_name = f"horizonrl-{uuid.uuid4().hex}"
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0" + abstract_name)
    abstract.listen()
    abstract.setblocking(False)
    tcp_port, udp_port, ip = tcp.getsockname()[1], udp.getsockname()[1], host_ip()
    probe = f"""
import socket
def attempt(name, action):
    try:
        action()
        print(name, "CONNECTED")
    except OSError as exc:
        print(name, "blocked", type(exc).__name__)
for host in ("127.0.0.1", "{ip}", "::1"):
    attempt("tcp " + host, lambda: socket.create_connection((host, {tcp_port}), timeout=2))
for host in ("127.0.0.1", "{ip}"):   # sending to its own loopback may "work": the host must get nothing
    attempt("udp " + host, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (host, {udp_port})))
def unix(address):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect(address)
attempt("abstract", lambda: unix("\\0{abstract_name}"))
attempt("docker", lambda: unix("/var/run/docker.sock"))
attempt("dns", lambda: socket.getaddrinfo("deb.debian.org", 80))
"""
    box = boxes.make()
    try:
        result = box.exec(f"python3 -c '{probe}'")
        lines = [line for line in result.stdout.splitlines() if not line.startswith("udp 127.0.0.1 ")]
        assert len(lines) == 7 and all(" blocked " in line for line in lines), result
        for server in (tcp, abstract):
            with pytest.raises(BlockingIOError):
                server.accept()
        with pytest.raises(BlockingIOError):
            udp.recv(16)
    finally:
        for server in (tcp, udp, abstract):
            server.close()


# ---- host files and protected artifacts -------------------------------------------------------------

def test_host_files_cannot_be_read(boxes, secret):
    path, value = secret
    other = boxes.make({"neighbour.txt": value + "\n"})                 # another sandbox's work dir
    box = boxes.make()
    targets = [str(path), str(other.workdir / "neighbour.txt"), "/etc/shadow", "/root/.bashrc",
               str(Path.home() / ".bash_history"), "/proc/kcore"]
    tricks = []
    for target in targets:
        tricks += [target, f"/proc/1/root{target}", f"/proc/self/root{target}", f"/proc/1/cwd/../..{target}",
                   f"/work/../..{target}", f"/tmp/../{target}"]
    reads = "; ".join(f"cat '{trick}'" for trick in tricks)
    result = box.exec(f"{reads}; ls -d /proc/[0-9]*/root/tmp/* {path.parent} {other.workdir}; "
                      f"find / -xdev -name '{path.name}' 2>/dev/null; "
                      f"ln -s {path} link; cat link; ln {path} hard; ln -s /proc/1/root r; cat r{path}")
    assert value not in result.stdout + result.stderr
    assert "neighbour.txt" not in result.stdout
    for trick in ("link", "r" + str(path), str(path)):
        with pytest.raises(SandboxPathError):
            box.read_file(trick)


def test_hidden_tests_cannot_be_reached_while_they_exist_on_the_host(boxes):
    marker = f"HIDDEN-{uuid.uuid4().hex}"
    task = Task(task_id="sec-0001", family="sec", split="train", difficulty=1, instruction="Fix it.",
                files={"calc.py": "x = 1\n"}, hidden_tests={"test_hidden.py": f"# {marker}\n"},
                grade_command=("python3", "test_hidden.py"))
    with CodingEnv(task, limits=LIMITS) as env:
        boxes.track(env.sandbox)
        grader = make_sandbox("local", grading_files(task, {"calc.py": "x = 1\n"}), LIMITS)   # as grade() makes it
        try:
            boxes.track(grader)
            grader.exec("sleep 100 &")                                  # its processes are alive meanwhile
            hidden = grader.workdir / "test_hidden.py"
            tricks = [f"cat {hidden}", f"cat /work/../{hidden.parent.name}/test_hidden.py",
                      "cat /proc/*/root/work/test_hidden.py", "cat /proc/*/cwd/test_hidden.py",
                      f"cat /proc/1/root{hidden}", f"ln -s {hidden} l; cat l", f"ln {hidden} h; cat h",
                      f"cp {hidden} /tmp/c; cat /tmp/c", "grep -rs HIDDEN- /proc/*/root/work /work /tmp",
                      f"find / -xdev -name 'test_hidden*' 2>/dev/null"]
            seen = env.step(ToolCall("bash", {"command": "; ".join(tricks)})).observation
            assert marker not in seen and "test_hidden.py\n" not in seen
            for path in ("l", "h", f"/proc/1/root{hidden}", f"../{hidden.parent.name}/test_hidden.py"):
                observation = env.step(ToolCall("read_file", {"path": path})).observation
                assert observation.startswith("Error: ") and marker not in observation
        finally:
            grader.close()


OS_RELEASE = "/usr/lib/os-release"


@pytest.mark.skipif(not Path(OS_RELEASE).is_file() or Path(OS_RELEASE).is_symlink(), reason=f"needs {OS_RELEASE}")
def test_protected_host_paths_are_masked_against_every_path_trick(boxes):
    text = Path(OS_RELEASE).read_text()
    needle = next(line for line in text.splitlines() if line.strip())
    box = boxes.make(protected=[OS_RELEASE, "/usr/share/doc"])
    tricks = [OS_RELEASE, "/usr/lib/../lib/os-release", "/lib/os-release", "/usr//lib/./os-release",
              f"/proc/self/root{OS_RELEASE}", f"/proc/1/root{OS_RELEASE}", f"/proc/1/cwd/../..{OS_RELEASE}",
              "/work/link"]
    result = box.exec(f"ln -s {OS_RELEASE} /work/link; "
                      + "; ".join(f"cat {trick}; python3 -c \"print(open('{trick}').read())\"" for trick in tricks)
                      + f"; cp {OS_RELEASE} /tmp/copy; cat /tmp/copy; ls -A /usr/share/doc; ls -A /proc/1/root/usr/share/doc")
    assert needle not in result.stdout
    assert result.stdout.strip() == "", result.stdout                  # nothing at all was read
    unmasked = boxes.make()
    assert needle in unmasked.exec(f"cat {OS_RELEASE}").stdout          # the trick would work unmasked


# ---- resource bombs ---------------------------------------------------------------------------------

def test_fork_bomb_is_contained_and_killed(boxes):
    box = boxes.make(limits=SandboxLimits(timeout_s=2.0, max_processes=32))
    namespace = next(iter(boxes.namespaces))
    box.exec(":(){ :|:& };:")                                           # it returns; the bomb goes on
    counts = []
    for _ in range(20):
        counts.append(len(processes_in(namespace)))
        time.sleep(0.05)
    assert 2 < max(counts) <= 32 + 1, counts                           # it ran, within the limit (+ PID 1)
    box.stop()
    assert processes_in(namespace) == []
    assert box.exec("echo alive").stdout == "alive\n"


def test_memory_bombs_fail(boxes):
    box = boxes.make()
    python = box.exec("python3 -c 'x = []\nwhile True: x.append(bytearray(10 ** 7))'")
    assert python.exit_code != 0 and "MemoryError" in python.stderr
    shell = box.exec("tail /dev/zero")                                  # no newline: tail buffers forever
    assert shell.exit_code != 0 and not shell.timed_out


def test_disk_fill_stops_at_the_limits(boxes):
    box = boxes.make()
    single = box.exec("head -c 10000000 /dev/zero > big; echo $?")
    assert (box.workdir / "big").stat().st_size <= LIMITS.file_size_mb * 2**20
    tmp = box.exec("for i in 1 2 3 4; do head -c 3000000 /dev/zero > /tmp/f$i || echo full; done; du -sk /tmp")
    assert "full" in tmp.stdout + tmp.stderr and int(tmp.stdout.split()[-2]) <= LIMITS.tmp_size_mb * 1024
    assert single.exit_code == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the work dir's size cap (a private tmpfs) needs a framework "
                                              "that may mount, i.e. runs as root")
def test_many_files_cannot_fill_the_hosts_disk(boxes):
    box = boxes.make()
    assert box.disk_capped
    result = box.exec("for i in $(seq 1 50); do head -c 3000000 /dev/zero > f$i || { echo stopped at $i; break; }; done")
    assert "stopped at" in result.stdout
    used = sum(f.stat().st_size for f in box.workdir.iterdir())
    assert used <= LIMITS.disk_mb * 2**20
    with pytest.raises(SandboxPathError, match="No space left"):
        box.write_file("more.txt", "x" * 2**20)                         # a host-side write is refused, no crash


def test_output_floods_are_truncated_and_stopped(boxes):
    box = boxes.make(limits=SandboxLimits(timeout_s=1.5, max_output_bytes=10_000))
    endless = box.exec("yes; echo never")
    assert endless.timed_out and endless.truncated
    assert len(endless.stdout) < 10_200 and endless.stdout.startswith("y\ny\n")
    both = box.exec("head -c 3000000 /dev/urandom; head -c 3000000 /dev/zero >&2; echo done")
    assert both.truncated and not both.timed_out and both.exit_code == 0
    assert "more bytes]" in both.stdout and "more bytes]" in both.stderr and len(both.stderr) < 10_200


def test_infinite_loops_hit_the_cpu_or_wall_clock_limit(boxes):
    box = boxes.make(limits=SandboxLimits(timeout_s=1.0, cpu_s=30))
    start = time.monotonic()
    loop = box.exec("while :; do :; done")
    assert loop.timed_out and time.monotonic() - start < 5.0
    cpu = boxes.make(limits=SandboxLimits(timeout_s=30.0, cpu_s=1))
    burn = cpu.exec("python3 -c 'while True: pass'")
    assert not burn.timed_out and burn.exit_code in (128 + 9, 128 + 24)   # SIGKILL or SIGXCPU at 1 CPU second


# ---- processes, files, devices, environment ---------------------------------------------------------

def test_orphaned_background_processes_do_not_survive(boxes):
    box = boxes.make()
    namespace = next(iter(boxes.namespaces))
    started = box.exec("nohup sleep 1000 >/dev/null 2>&1 & setsid sleep 1000 & (sleep 1000 &) ; disown -a; "
                       "python3 -c 'import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                       "        time.sleep(1000)\n    os._exit(0)'; echo started")
    assert started.stdout == "started\n"
    deadline = time.monotonic() + 5
    while len(processes_in(namespace)) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(processes_in(namespace)) >= 5                            # they run, inside the sandbox only
    box.stop()
    assert processes_in(namespace) == []
    again = boxes.track(box)
    box.close()
    assert processes_in(again) == []


def test_nothing_can_be_written_outside_the_work_dir(boxes, tmp_path):
    name = f"pwned-{uuid.uuid4().hex}"
    box = boxes.make()
    targets = ["/", "/usr", "/usr/lib", "/etc", "/root", "/home", "/var", "/var/tmp", "/run", "/opt", "/srv", "/mnt",
               "/boot", "/dev", "/dev/shm", "/proc", "/sys", "/work/..", "/tmp/../etc", str(tmp_path), "/proc/1/root",
               "/proc/1/cwd/.."]
    writes = "; ".join(f"echo x > {t}/{name} 2>/dev/null && echo WROTE {t}; mkdir {t}/{name}d 2>/dev/null && echo MADE {t}"
                       for t in targets)
    result = box.exec(f"{writes}; echo x >> /etc/passwd 2>/dev/null && echo APPENDED; "
                      "echo h > /proc/sys/kernel/hostname 2>/dev/null && echo HOSTNAME; "
                      "mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED; unshare -r true 2>/dev/null && echo USERNS; "
                      "chroot / true 2>/dev/null && echo CHROOT; echo checked")
    assert result.stdout == "checked\n", result.stdout
    for target in targets + [str(box.workdir.parent)]:                 # the host's dirs: nothing new
        if not target.startswith(("/proc", "/sys")) and Path(target).is_dir():
            assert not (Path(target) / name).exists() and not (Path(target) / f"{name}d").exists(), target


def test_no_raw_block_devices(boxes):
    box = boxes.make()
    host_devices = sorted(os.listdir("/sys/class/block")) if Path("/sys/class/block").is_dir() else []
    reads = "; ".join(f"head -c 1 /dev/{name} >/dev/null 2>&1 && echo READ {name}" for name in host_devices[:8])
    result = box.exec(f"find / -xdev -type b 2>/dev/null; ls /sys 2>/dev/null; {reads}; "
                      "mknod /tmp/disk b 8 0 2>/dev/null && echo MKNOD; mknod /work/disk b 8 0 2>/dev/null && echo MKNOD; "
                      "head -c 1 /dev/mem 2>/dev/null && echo MEM; ls /dev")
    listing = result.stdout.split()
    assert not any(word.startswith(("READ", "MKNOD", "MEM")) for word in listing), result.stdout
    assert set(listing) <= {"console", "core", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm",
                            "stderr", "stdin", "stdout", "tty", "urandom", "zero"}, result.stdout


def test_the_callers_environment_is_not_visible(boxes, monkeypatch):
    monkeypatch.setenv("HORIZONRL_TEST_API_KEY", "sk-secret-123")
    box = boxes.make()
    seen = box.exec("env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'")
    assert "sk-secret-123" not in seen.stdout and "HORIZONRL" not in seen.stdout
    names = {line.split("=")[0] for line in box.exec("env").stdout.splitlines()}
    assert names <= {"PATH", "HOME", "LANG", "PWD", "SHLVL", "_"}
    for pid in boxes.leftovers() + [box._shell.proc.pid]:               # nor in its processes as the host sees them
        with open(f"/proc/{pid}/environ", "rb") as handle:
            assert b"sk-secret-123" not in handle.read()
    task = Task(task_id="env-0001", family="sec", split="train", difficulty=1, instruction="x", files={"a.py": "1\n"},
                hidden_tests={"show_env.sh": "env; exit 1\n"}, grade_command=("bash", "show_env.sh"))
    with CodingEnv(task, limits=LIMITS) as env:
        assert "sk-secret-123" not in env.grade().output and "PATH=" in env.grade().output
