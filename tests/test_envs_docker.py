"""The docker backend: a clear error without an engine, docker's stream framing, and -- against a
real engine, skipped when none is reachable or the image is missing -- isolation, limits,
timeouts, clean-up (on close, on a crashed worker, by ``cleanup_stale``), tasks end to end."""

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from envs.docker_sandbox import (DEFAULT_DOCKER_URL, DEFAULT_IMAGE, LABEL, DockerConfig, DockerSandbox, _owner_alive,
                                 _owner_label, _SocketChannel, cleanup_stale, connect)
from envs.env import CodingEnv
from envs.loaders import load_tasks
from envs.pool import PoolConfig, SandboxPool
from envs.sandbox import STDERR, STDOUT, SandboxError, SandboxLimits, make_sandbox
from envs.solver import scripted_solution

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "envs" / "examples"
LIMITS = SandboxLimits(timeout_s=5.0, memory_mb=256, max_processes=32)
UNREACHABLE = DockerConfig(base_url="unix:///nonexistent/horizonrl-docker.sock")


def host_ip() -> str:
    """This host's address on its default route (no packet is sent)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


# ---- without an engine --------------------------------------------------------------------------

def test_no_engine_is_a_clear_error_naming_the_url():
    with pytest.raises(SandboxError) as info:
        DockerSandbox({"a.py": "1"}, LIMITS, UNREACHABLE)
    message = str(info.value)
    assert "no docker engine is reachable at unix:///nonexistent/horizonrl-docker.sock" in message
    assert "dockerd" in message and "base_url" in message and "'local' backend" in message
    with pytest.raises(SandboxError, match="no docker engine is reachable"):
        make_sandbox("docker", {}, LIMITS, docker=UNREACHABLE)
    with pytest.raises(SandboxError, match="no docker engine is reachable"):
        cleanup_stale("anything", UNREACHABLE)


def test_config_is_validated():
    with pytest.raises(ValueError, match="cpus"):
        DockerConfig(cpus=0)
    with pytest.raises(ValueError, match="non-empty"):
        DockerConfig(image="")


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_stream_frames_are_demultiplexed_even_when_split_across_reads():
    ours, engine = socket.socketpair()
    try:
        channel = _SocketChannel(ours)
        data = frame(STDOUT, b"out-1\n") + frame(STDERR, b"err\n") + frame(3, b"engine says no") + frame(STDOUT, b"x" * 70000)
        engine.sendall(data[:5])
        assert channel.receive(1.0) == []                             # half a header: nothing yet
        engine.sendall(data[5:30])
        got = channel.receive(1.0)
        engine.sendall(data[30:])
        while sum(len(chunk) for _, chunk in got) < 6 + 4 + 14 + 70000:
            got += channel.receive(1.0)
        assert got[:3] == [(STDOUT, b"out-1\n"), (STDERR, b"err\n"), (STDERR, b"engine says no")]
        assert b"".join(chunk for stream, chunk in got[3:] if stream == STDOUT) == b"x" * 70000
        assert channel.send(b"echo hi\n", time.monotonic() + 1.0)
        assert engine.recv(100) == b"echo hi\n"
        engine.close()
        assert channel.receive(1.0) == [(STDOUT, b""), (STDERR, b"")]  # end of file on both streams
    finally:
        ours.close()


def test_owner_labels_tell_live_from_dead_owners():
    assert _owner_alive(_owner_label())
    child = subprocess.Popen(["sleep", "0"])
    child.wait()
    host = socket.gethostname()
    assert not _owner_alive(f"{host}:{child.pid}:1")                  # gone (or a different process)
    assert not _owner_alive(f"{host}:{os.getpid()}:0")                # same PID, another start time
    assert not _owner_alive("other-host:1:1") and not _owner_alive("")


# ---- against a real engine ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine():
    """A client of the default engine with the sandbox image, or skip saying why not."""
    try:
        client = connect(DockerConfig())
    except SandboxError as exc:
        pytest.skip(f"no docker engine: {exc}")
    try:
        client.api.inspect_image(DEFAULT_IMAGE)
    except Exception:  # noqa: BLE001 - ImageNotFound or an engine error
        client.close()
        pytest.skip(f"the image {DEFAULT_IMAGE} is not on the engine at {DEFAULT_DOCKER_URL}; build it with "
                    f"`horizonrl-env docker-image --tag {DEFAULT_IMAGE}`")
    yield client
    client.close()


@pytest.fixture
def label():
    return f"test-{uuid.uuid4().hex[:12]}"


def containers(client, label):
    return client.api.containers(all=True, filters={"label": f"{LABEL}={label}"})


def test_commands_streams_and_the_container_settings(engine, label):
    with DockerSandbox({"calc.py": "x = 1\n"}, LIMITS, DockerConfig(label=label)) as box:
        result = box.exec("cat calc.py; echo err >&2; exit 7")
        assert (result.exit_code, result.stdout, result.stderr) == (7, "x = 1\n", "err\n")
        assert box.exec("cd /tmp; export FOO=1").exit_code == 0
        assert box.exec("pwd; echo ${FOO:-unset}; id -u; cat").stdout == "/work\nunset\n65534\n"
        assert box.exec("python3 -c 'print(6 * 7)'").stdout == "42\n"
        info = engine.api.inspect_container(box.container_id)
        host = info["HostConfig"]
        assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
        assert host["Memory"] == 256 * 2**20 and host["MemorySwap"] == 256 * 2**20 and host["PidsLimit"] == 32
        assert host["NanoCpus"] == 10**9 and "no-new-privileges" in host["SecurityOpt"]
        assert info["Config"]["Labels"][LABEL] == label
        box.write_file("new/file.txt", "hello\n")
        assert box.exec("cat new/file.txt && echo more >> new/file.txt").exit_code == 0
        assert box.read_file("new/file.txt") == "hello\nmore\n"


def test_isolation_network_environment_and_file_system(engine, label, monkeypatch):
    monkeypatch.setenv("HORIZONRL_SECRET_TOKEN", "s3cr3t")
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        with DockerSandbox({}, LIMITS, DockerConfig(label=label)) as box:
            net = box.exec(f"python3 -c \"import socket; socket.create_connection(('{host_ip()}', {port}), timeout=2)\";"
                           f" python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)\";"
                           " tail -n +3 /proc/net/dev | cut -d: -f1")
            assert net.stdout.split() == ["lo"] and "Traceback" in net.stderr
            with pytest.raises(BlockingIOError):
                listener.accept()
            env = box.exec("env; cat /proc/1/environ /proc/self/environ | tr '\\0' '\\n'").stdout
            assert "s3cr3t" not in env and "HORIZONRL" not in env
            writes = box.exec("for d in /usr /etc /root /; do touch $d/pwned 2>/dev/null && echo $d; done; "
                              "ls /var/run/docker.sock /run/docker.sock 2>/dev/null; find /dev -type b")
            assert writes.stdout == ""
    finally:
        listener.close()


def test_limits_memory_processes_output_and_timeouts(engine, label):
    limits = SandboxLimits(timeout_s=3.0, memory_mb=128, max_processes=16, max_output_bytes=1000, file_size_mb=1)
    with DockerSandbox({"keep.py": "1\n"}, limits, DockerConfig(label=label)) as box:
        memory = box.exec("python3 -c 'x = bytearray(512 * 1024 * 1024)'")
        assert memory.exit_code != 0 and "MemoryError" in memory.stderr
        forks = box.exec("python3 -c \"\nimport os, time\nn = 0\ntry:\n    while n < 100:\n"
                         "        if os.fork() == 0:\n            time.sleep(3)\n            os._exit(0)\n"
                         "        n += 1\nexcept OSError:\n    print('blocked', n)\n\"")
        assert forks.stdout.startswith("blocked") and int(forks.stdout.split()[1]) < 16
        box.stop()                                                    # its sleeping children hold the pids
        flood = box.exec("head -c 100000 /dev/zero | tr '\\0' a")
        assert flood.truncated and "99000 more bytes" in flood.stdout
        box.exec("head -c 3000000 /dev/zero > big")
        assert (box.workdir / "big").stat().st_size <= 2**20
        first = box.container_id
        slow = box.exec("sleep 100")
        assert slow.timed_out and slow.exit_code == 124 and box.container_id is None
        assert not [c for c in containers(engine, label) if c["Id"] == first]   # removed, synchronously
        assert box.exec("cat keep.py").stdout == "1\n"                 # a fresh container, same files
        assert box.container_id != first


def test_close_removes_the_container_and_the_work_dir(engine, label):
    box = DockerSandbox({"a.py": "1"}, LIMITS, DockerConfig(label=label))
    box.exec("sleep 1000 & echo started")
    assert len(containers(engine, label)) == 1
    box.close()
    box.close()
    assert containers(engine, label) == [] and not box.workdir.exists()


CRASHING_WORKER = """
import os, sys, threading, time
from envs.docker_sandbox import DockerConfig, DockerSandbox
from envs.sandbox import SandboxLimits
box = DockerSandbox({}, SandboxLimits(timeout_s=600), DockerConfig(label=sys.argv[1]))
box.start()
if sys.argv[2] == "busy":
    threading.Thread(target=box.exec, args=("sleep 1000",), daemon=True).start()
    time.sleep(0.5)
print(box.container_id, box.workdir, flush=True)
os._exit(1)
"""


def crash_a_worker(label: str, mode: str) -> tuple[str, Path]:
    done = subprocess.run([sys.executable, "-c", CRASHING_WORKER, label, mode], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    container, workdir = done.stdout.split()
    return container, Path(workdir)


def test_a_crashed_workers_idle_container_removes_itself(engine, label):
    container, workdir = crash_a_worker(label, "idle")
    deadline = time.monotonic() + 20
    while containers(engine, label) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert containers(engine, label) == []                            # stdin closed -> shell exits -> removed
    assert cleanup_stale(label) == []
    if workdir.exists():                                              # the host dir is left; clean it up
        subprocess.run(["umount", "-l", str(workdir)], capture_output=True)
        subprocess.run(["rm", "-rf", str(workdir)])


def test_cleanup_stale_removes_what_a_crashed_worker_left(engine, label):
    container, workdir = crash_a_worker(label, "busy")
    time.sleep(1.0)
    assert [c["Id"] for c in containers(engine, label)] == [container]  # its shell is busy: it stays
    with DockerSandbox({}, LIMITS, DockerConfig(label=label)) as live:
        live.start()                                                  # a live owner's container is kept
        assert cleanup_stale(label) == [container]
        assert [c["Id"] for c in containers(engine, label)] == [live.container_id]
        assert not workdir.exists()
        assert cleanup_stale(label, include_live_owners=True) == [live.container_id]
    assert containers(engine, label) == []


@pytest.mark.parametrize("task_id", ["calc__clamp-1", "hello-file"])
def test_example_tasks_end_to_end_in_docker(engine, task_id):
    tasks = {t.task_id: t for source in ("swebench/tasks.jsonl", "terminal_bench")
             for t in load_tasks(EXAMPLES / source).tasks}
    task = tasks[task_id]
    with CodingEnv(task, backend="docker", limits=SandboxLimits(timeout_s=30.0)) as env:
        before = env.grade()
        assert not before.passed
        for call in scripted_solution(task):
            env.step(call)
        after = env.grade()
        assert after.passed, after.output
    if task_id == "calc__clamp-1":
        assert "with pytest" in after.output                          # the image has pytest


def test_a_pool_of_docker_sandboxes_recycles_containers(engine, label):
    config = PoolConfig(backend="docker", limits=LIMITS, warm=1, max_live=2, docker=DockerConfig(label=label))
    with SandboxPool(config) as pool:
        first = pool.acquire({"a.py": "1\n"})
        container = first._inner().container_id
        first.exec("echo x > /tmp/x; sleep 1000 &")
        first.close()
        assert not [c for c in containers(engine, label) if c["Id"] == container]
        second = pool.acquire({"b.py": "2\n"})
        assert second.exec("ls; ls /tmp").stdout == "b.py\n"
        second.close()
    assert containers(engine, label) == []


def test_a_missing_image_is_a_clear_error(engine, label):
    with pytest.raises(SandboxError, match="horizonrl-env docker-image"):
        DockerSandbox({}, LIMITS, DockerConfig(image="horizonrl-no-such-image:none", label=label))
    assert json.dumps(containers(engine, label)) == "[]"


# ---- the training path: env=docker ----------------------------------------------------------------

def test_training_config_selects_docker_and_bounds_the_pool():
    from rl.config import RolloutConfig, TrainConfig
    from rollout.worker import DockerEnvConfig, EnvConfig

    with pytest.raises(ValueError, match="env.backend = 'podman'"):
        EnvConfig(backend="podman")
    with pytest.raises(ValueError, match="env.docker.max_live = 16 must be at least 2 x rollout.max_concurrent_per_worker = 32"):
        TrainConfig(env=EnvConfig(backend="docker", docker=DockerEnvConfig(max_live=16)),
                    rollout=RolloutConfig(max_concurrent_per_worker=16))
    cfg = EnvConfig(backend="docker", docker=DockerEnvConfig(image="img:1", label="run-a", cpus=0.5))
    assert cfg.docker_config() == DockerConfig(image="img:1", label="run-a", cpus=0.5)


def test_a_training_worker_removes_a_crashed_workers_containers_then_runs_episodes_from_its_pool(engine, label):
    from envs.suite import builtin_suite
    from rollout.worker import DockerEnvConfig, EnvConfig, make_env, sandbox_pool

    crashed, _ = crash_a_worker(label, "busy")       # a worker of an earlier run died with a busy container
    time.sleep(1.0)
    assert [c["Id"] for c in containers(engine, label)] == [crashed]
    cfg = EnvConfig(backend="docker", exec_timeout_s=30.0, docker=DockerEnvConfig(label=label, max_live=2, warm=1))
    pool = sandbox_pool(cfg)                          # what RolloutWorker does at start
    try:
        assert crashed not in [c["Id"] for c in containers(engine, label)]
        task = builtin_suite(0)[0]
        for solve in (True, False, True):
            with make_env(task, cfg, factory=pool.acquire) as env:
                if solve:
                    for call in scripted_solution(task):
                        env.step(call)
                assert env.grade().passed == solve
            assert len(containers(engine, label)) <= 2    # the pool's bound: agent + grader containers
        assert pool.stats().recycled >= 1
    finally:
        pool.close()
    assert containers(engine, label) == []
