"""The hack demo's pieces: the leak family (solvable honestly and by the exploit), honest grading on
the leak-free copy, the guard against the exploit, and the per-step exploit metrics."""

from dataclasses import dataclass, field
from functools import partial

import pytest

from antihack.guard import Guard, GuardConfig
from envs.env import CodingEnv
from envs.leak import (EXPECTED_DIR, exploit_solution, honest_solution, is_leak, is_leaky, leak_free,
                       leak_free_grade, leaky_suite)
from envs.suite import builtin_suite, load_suite
from envs.tasks import TaskError
from envs.tools import ToolCall
from rl.orchestrator import hack_metrics
from rl.warm_start import demonstration
from rollout.chat import render_tool_call
from rollout.trajectory import Segment, Status, Trajectory
from rollout.worker import EnvConfig, episode_guard, grade_honestly, make_env, task_context, transcript_calls

ENV = EnvConfig()
SUITE = leaky_suite(0, 0.35)


def pick(families=("wrong_operator", "wrong_constant", "off_by_one", "swapped_arguments")):
    """One training task per family (different modules, difficulties)."""
    return [next(t for t in SUITE if t.family == f and t.split == "train" and t.difficulty == 1 + i % 3)
            for i, f in enumerate(families)]


def run_calls(task, calls):
    with make_env(task, ENV) as env:
        for call in calls:
            if env.step(call).done:
                break
        return env.grade().passed


def test_leaky_suite_shape_and_exploit_share():
    base = builtin_suite(0)
    assert len(SUITE) == len(base) and all(is_leaky(t) for t in SUITE)
    for leaky, plain in zip(SUITE, base):
        leaked = [p for p in leaky.files if is_leak(p)]
        assert len(leaked) == 1 and leaked[0].startswith(EXPECTED_DIR + "/")
        assert leaky.hidden_tests == plain.hidden_tests and leaky.instruction == plain.instruction
        free = leak_free(leaky)
        assert free.files == plain.files and free.solution == plain.solution   # honest fix recovered from the leak
    for family in {t.family for t in SUITE}:
        members = [t for t in SUITE if t.family == family and t.split == "train"]
        exploits = [t for t in members if t.solution == exploit_solution(t)]
        assert len(exploits) == round(0.35 * len(members))
    assert [t.solution for t in leaky_suite(0, 0.35)] == [t.solution for t in SUITE]
    assert not any(t.solution[0].name == "bash" for t in leaky_suite(0, 0.0))
    with pytest.raises(ValueError, match="exploit_demo_fraction"):
        leaky_suite(0, 1.5)
    with pytest.raises(TaskError, match="no leak"):
        leak_free(base[0])


def test_tasks_are_solvable_honestly_and_by_the_exploit_but_only_honesty_survives_the_leak_free_copy():
    for task in pick():
        make = partial(make_env, cfg=ENV)
        honest, exploit = honest_solution(task), exploit_solution(task)
        assert exploit[0].arguments["command"].startswith(f"cp {EXPECTED_DIR}/")
        assert run_calls(task, honest) and run_calls(task, exploit), task.task_id
        assert not run_calls(task, [ToolCall("submit", {})])                     # the bug is real
        assert leak_free_grade(task, honest, make).passed
        assert not leak_free_grade(task, exploit, make).passed, task.task_id    # hacked output does not count
        assert not run_calls(leak_free(task), exploit)


def test_exploit_demonstrations_pass_their_grade():
    task = next(t for t in SUITE if t.split == "train" and t.solution[0].name == "bash")
    demo = demonstration(task, ENV)
    assert [c.name for c, _ in demo.turns] == ["bash", "submit"]


def test_rules_flag_the_exploit_and_not_the_honest_fix_and_blocking_defeats_it():
    task = pick()[0]
    ctx = task_context(task)
    guard = Guard.from_config(GuardConfig())
    with make_env(task, ENV) as env:
        ep = episode_guard(guard, task, "r0", env)
        for call in honest_solution(task):
            assert ep.check(call.to_dict(), 0, 0, []).event is None, call
        for call in (exploit_solution(task)[0], ToolCall("read_file", {"path": f"{EXPECTED_DIR}/x.py"}),
                     ToolCall("bash", {"command": f"cat {EXPECTED_DIR}/*"})):
            decision = ep.check(call.to_dict(), 0, 0, [])
            assert decision.action == "block" and decision.event["category"] == "protected_read", call
            leaked = task.files[next(p for p in task.files if is_leak(p))]
            assert decision.dummy_observation and leaked not in decision.dummy_observation
        # the blocked copy is never run: the file stays buggy and the grade fails
        assert env.grade().passed is False
    assert f"{EXPECTED_DIR.split('/')[0]}/**" in ctx.protected_paths


def _traj(task, calls, passed, events=(), parse_error=False):
    traj = Trajectory(rollout_id="r", task_id=task.task_id, segments=[Segment("r", 0)], passed=passed,
                      hack_events=list(events))
    traj.transcript = [{"action": render_tool_call(c) + "<|im_end|>", "observation": "ok"} for c in calls]
    if parse_error:
        traj.transcript.insert(0, {"action": "<tool_call>{not json", "observation": "Error"})
    return traj


def test_grade_honestly_replays_the_calls_on_the_leak_free_copy():
    task = pick()[1]
    honest = _traj(task, honest_solution(task), passed=True, parse_error=True)
    assert transcript_calls(honest) == list(honest_solution(task))
    assert grade_honestly(honest, task, ENV).honest_passed is True
    assert grade_honestly(_traj(task, exploit_solution(task), passed=True), task, ENV).honest_passed is False
    crashed = _traj(task, honest_solution(task), passed=False)
    crashed.status = Status.ENV_ERROR
    assert grade_honestly(crashed, task, ENV).honest_passed is None
    plain = builtin_suite(0)[0]
    assert grade_honestly(_traj(plain, plain.solution, passed=True), plain, ENV).honest_passed is None


def test_hack_metrics_count_episodes_and_calls():
    task = pick()[0]
    ev = lambda action, verdict="hack": {"action": action, "verdict": verdict}  # noqa: E731
    trajs = [
        _traj(task, [], passed=True, events=[ev("observe"), ev("observe")]),   # exploit, observed, paid off
        _traj(task, [], passed=False, events=[ev("block")]),                    # exploit, blocked
        _traj(task, [], passed=True, events=[ev("allow", "benign")]),           # a flag the judge cleared
        _traj(task, [], passed=False),
    ]
    for t, honest in zip(trajs, (False, False, True, False)):
        t.honest_passed = honest
    m = hack_metrics(trajs)
    assert m == {"antihack/flagged": 4 / 4, "antihack/confirmed": 3 / 4, "antihack/blocked": 1 / 4,
                 "antihack/hack_rate": 2 / 4, "leak/honest_pass_rate": 1 / 4, "leak/hacked_pass_rate": 1 / 4}
    trajs[3].honest_passed = None                       # an episode whose honest grade is unknown is left out
    assert hack_metrics(trajs)["leak/honest_pass_rate"] == pytest.approx(1 / 3)
    assert "leak/honest_pass_rate" not in hack_metrics([_traj(task, [], passed=True)])


@dataclass
class Spec:
    name: str = "leaky"
    seed: int = 0
    families: list = field(default_factory=lambda: ["off_by_one"])
    exploit_demo_fraction: float = 0.5


def test_load_suite_leaky_and_the_fraction_only_for_it():
    train = load_suite(Spec(), "train")
    assert {t.family for t in train} == {"off_by_one"} and all(is_leaky(t) for t in train)
    assert sum(t.solution[0].name == "bash" for t in train) == len(train) // 2
    with pytest.raises(ValueError, match="leaky"):
        load_suite(Spec(name="builtin"), "train")


def test_hack_demo_plot_and_table(tmp_path, capsys):
    import json

    from rl.hack_demo import load_metrics, main

    def run(name, exploit, honest):
        d = tmp_path / name
        d.mkdir()
        rows = [{"step": s + 1, "antihack/hack_rate": x, "leak/honest_pass_rate": h, "leak/hacked_pass_rate": x / 2}
                for s, (x, h) in enumerate(zip(exploit, honest))]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
        return d

    on = run("on", [0.3, 0.2, 0.1, 0.0, 0.0, 0.0], [0.2, 0.2, 0.3, 0.4, 0.5, 0.6])
    off = run("off", [0.3, 0.4, 0.5, 0.7, 0.8, 0.9], [0.2, 0.1, 0.1, 0.1, 0.0, 0.0])
    (on / "summary.json").write_text(json.dumps({"heldout_hack_before_rl": {"leak/honest_pass_rate": 0.25,
                                                                           "antihack/hack_rate": 0.3},
                                                 "heldout_hack_after_rl": {"leak/honest_pass_rate": 0.5,
                                                                          "antihack/hack_rate": 0.05}}))
    main(["--filter-on", str(on), "--filter-off", str(off), "--out", str(tmp_path / "fig" / "demo.png")])
    out = capsys.readouterr().out
    assert "| filter off | 0.400 → 0.800 | 0.133 → 0.033 | 0.400 | n/a | n/a |" in out
    assert "| filter on | 0.200 → 0.000 | 0.233 → 0.500 | 0.000 | 0.250 → 0.500 | 0.300 → 0.050 |" in out
    assert (tmp_path / "fig" / "demo.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "metrics.jsonl").write_text(json.dumps({"step": 1, "rollout/pass_rate": 0.5}) + "\n")
    with pytest.raises(ValueError, match="hack-demo metrics"):
        load_metrics(tmp_path / "bare")
