"""The sandbox pool: warm sandboxes are handed out with exactly the task's files, recycled with no
process, file or shell state left from the previous episode, and bounded by its config."""

import os
import threading
import time
import uuid

import pytest

from envs.env import CodingEnv
from envs.pool import PoolConfig, SandboxPool
from envs.sandbox import LocalSandbox, SandboxError, SandboxLimits
from envs.tasks import Task

LIMITS = SandboxLimits(timeout_s=5.0)
TASK = Task(task_id="pool-0001", family="demo", split="train", difficulty=1, instruction="Fix calc.py.",
            files={"calc.py": "def add(a, b):\n    return a - b\n"},
            hidden_tests={"test_hidden.py": "from calc import add\nassert add(2, 3) == 5\n"},
            grade_command=("python3", "test_hidden.py"))


def pids_with(marker: str) -> list[int]:
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


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def pool():
    with SandboxPool(PoolConfig(limits=LIMITS, warm=2, max_live=3, acquire_timeout_s=1.0)) as sandboxes:
        yield sandboxes


def test_warm_sandboxes_are_handed_out_with_exactly_the_task_files():
    # max_live = warm: the refiller has no room to start another, so `created` shows whether acquire did
    # (with room, the refiller may replace the handed-out sandbox at any moment)
    with SandboxPool(PoolConfig(limits=LIMITS, warm=2, max_live=2, acquire_timeout_s=1.0)) as pool:
        assert pool.wait_warm(20.0)
        before = pool.stats()
        assert (before.warm, before.live, before.in_use) == (2, 2, 0)
        with pool.acquire({"calc.py": "x = 1\n", "pkg/mod.py": "y = 2\n"}) as sandbox:
            assert pool.stats().created == before.created                 # no new sandbox: a warm one
            listing = sandbox.exec("find . -type f | sort; cat calc.py").stdout
            assert listing == "./calc.py\n./pkg/mod.py\nx = 1\n"
            assert sandbox.read_file("pkg/mod.py") == "y = 2\n"
            assert pool.stats().in_use == 1


def test_recycling_leaves_nothing_of_the_previous_episode(pool):
    marker = f"leftover-{uuid.uuid4().hex}"
    first = pool.acquire({"a.py": "1\n"})
    workdir = first.workdir
    result = first.exec(f"echo secret > /tmp/note; echo junk > b.txt; "
                        f"(setsid python3 -c 'import time; time.sleep(1000)' {marker} &) ; echo started")
    assert result.stdout == "started\n"
    assert wait_until(lambda: len(pids_with(marker)) == 1)
    first.close()
    assert pids_with(marker) == []                                     # killed at once, synchronously
    with pytest.raises(SandboxError, match="given back"):
        first.exec("true")
    assert wait_until(lambda: pool.stats().recycled == 1)
    seen = set()
    for _ in range(3):                                                 # every sandbox of the pool
        sandbox = pool.acquire({"c.py": "3\n"})
        seen.add(sandbox.workdir)
        out = sandbox.exec("ls -A; ls -A /tmp; cat /tmp/note 2>&1 | head -1").stdout
        assert out.startswith("c.py\n") and "b.txt" not in out and "a.py" not in out and "secret" not in out
        sandbox.close()
    assert workdir in seen                                             # the first one was reused


def test_max_live_bounds_the_pool_and_a_release_wakes_a_waiter(pool):
    held = [pool.acquire({}) for _ in range(3)]
    assert pool.stats().live == 3
    start = time.monotonic()
    with pytest.raises(SandboxError, match=r"all 3 are in use \(PoolConfig.max_live\)"):
        pool.acquire({})
    assert time.monotonic() - start >= 0.9
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire({"late.py": "1\n"})))
    waiter.start()
    time.sleep(0.1)
    held.pop().close()
    waiter.join(5.0)
    assert got and got[0].read_file("late.py") == "1\n"
    assert pool.stats().live <= 3
    for sandbox in held + got:
        sandbox.close()


def test_sandboxes_are_discarded_after_max_uses():
    with SandboxPool(PoolConfig(limits=LIMITS, warm=0, max_live=2, max_uses=2)) as pool:
        first = pool.acquire({})
        workdir = first.workdir
        first.close()
        assert wait_until(lambda: pool.stats().warm == 1)
        second = pool.acquire({})
        assert second.workdir == workdir                              # the recycled one, second use
        second.close()
        stats = pool.stats()
        assert (stats.discarded, stats.live, stats.warm) == (1, 0, 0)
        assert not workdir.exists()


def test_coding_env_runs_on_pooled_sandboxes(pool):
    for _ in range(2):
        with CodingEnv(TASK, limits=LIMITS, factory=pool.acquire) as env:
            assert not env.grade().passed
            env.sandbox.write_file("calc.py", "def add(a, b):\n    return a + b\n")
            assert env.grade().passed
    stats = pool.stats()
    assert stats.in_use == 0 and stats.live <= 3
    assert wait_until(lambda: pool.stats().recycled >= 3)             # agent and grader sandboxes came back


def test_limits_must_match_the_pool(pool):
    with pytest.raises(ValueError, match="this pool's sandboxes have limits"):
        pool.acquire({}, SandboxLimits(timeout_s=99.0))


def test_close_kills_and_deletes_everything():
    marker = f"pooled-{uuid.uuid4().hex}"
    pool = SandboxPool(PoolConfig(limits=LIMITS, warm=2, max_live=4))
    assert pool.wait_warm(20.0)
    busy = pool.acquire({})
    busy.exec(f"python3 -c 'import time; time.sleep(1000)' {marker} &")
    assert wait_until(lambda: len(pids_with(marker)) == 1)
    workdirs = [busy.workdir] + [slot.sandbox.workdir for slot in pool._warm]
    pool.close()
    pool.close()
    assert pids_with(marker) == []
    assert not any(path.exists() for path in workdirs)
    with pytest.raises(SandboxError, match="closed"):
        pool.acquire({})
    busy.close()                                                      # a late give-back is harmless


def test_a_failing_backend_frees_its_place():
    calls = []

    def broken(files, limits):
        calls.append(1)
        raise SandboxError("no sandbox today")

    with SandboxPool(PoolConfig(limits=LIMITS, warm=0, max_live=1), factory=broken) as pool:
        for _ in range(2):
            with pytest.raises(SandboxError, match="no sandbox today"):
                pool.acquire({})
        assert pool.stats().live == 0 and len(calls) == 2


def test_a_sandbox_that_cannot_start_is_closed():
    made = []

    def unstartable(files, limits):
        sandbox = LocalSandbox(files, limits, bwrap="bwrap")
        sandbox._bwrap = "/bin/false"                                 # its shell can never start
        made.append(sandbox)
        return sandbox

    with SandboxPool(PoolConfig(limits=LIMITS, warm=0, max_live=1), factory=unstartable) as pool:
        with pytest.raises(SandboxError, match="bubblewrap sandbox"):
            pool.acquire({"a.py": "1"})
        assert pool.stats().live == 0 and not made[0].workdir.exists()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"backend": "kvm"}, "backend"),
    ({"max_live": 0}, "max_live"),
    ({"warm": 5, "max_live": 4}, "warm"),
    ({"max_uses": 0}, "max_uses"),
    ({"acquire_timeout_s": 0}, "acquire_timeout_s"),
])
def test_config_is_validated(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        PoolConfig(**kwargs)
