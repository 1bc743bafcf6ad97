"""`horizonrl-bench async` makes its environment's test runs take real time: check that they do,
and that a task made slow still grades exactly as before (the solution passes, the bug fails)."""

import time

import pytest

from envs.env import CodingEnv
from envs.solver import scripted_solution
from envs.suite import builtin_suite
from rl.bench import with_test_latency

TASK = builtin_suite(0)[0]


def grade(task, solve: bool):
    with CodingEnv(task) as env:
        if solve:
            for call in scripted_solution(task):
                env.step(call)
        t0 = time.perf_counter()
        result = env.grade()
        return result.passed, time.perf_counter() - t0


@pytest.mark.parametrize("solve", [True, False])
def test_a_slow_task_grades_like_the_original_and_takes_the_latency(solve):
    fast_passed, _ = grade(TASK, solve)
    slow_passed, slow_s = grade(with_test_latency(TASK, 0.5), solve)
    assert slow_passed == fast_passed == solve
    assert slow_s >= 0.5   # a lower bound only: how long the plain grade takes depends on the machine's load


def test_no_latency_leaves_the_task_unchanged():
    assert with_test_latency(TASK, 0.0) is TASK
    slow = with_test_latency(TASK, 0.25)
    assert slow.files == TASK.files and slow.task_id == TASK.task_id
    assert all(text.startswith("import time\ntime.sleep(0.25)\n") for text in slow.hidden_tests.values())
