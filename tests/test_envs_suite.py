"""The built-in suite: size, families, a fixed and honest train/held-out split, task shape,
and -- through real sandboxes and the real grader -- every task is solved by the scripted
solver and fails while unsolved."""

import ast
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from envs.env import CodingEnv
from envs.sandbox import SandboxLimits
from envs.solver import scripted_solution
from envs.suite import builtin_suite, load_suite, load_tasks_jsonl, save_tasks_jsonl, split_suite
from envs.tasks import TaskError

SUITE = builtin_suite(0)
TRAIN, HELDOUT = split_suite(SUITE, "train"), split_suite(SUITE, "heldout")


@dataclass
class Spec:
    name: str = "builtin"
    seed: int = 0
    families: list = field(default_factory=list)
    exploit_demo_fraction: float = 0.0


def defined_names(task):
    tree = ast.parse(next(iter(task.files.values())))
    functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    return functions


def test_size_families_difficulties_and_split():
    assert len(SUITE) >= 300
    families = Counter(task.family for task in SUITE)
    assert len(families) >= 6
    assert len({task.task_id for task in SUITE}) == len(SUITE)
    assert {task.difficulty for task in SUITE} == {1, 2, 3}
    assert 0.1 <= len(HELDOUT) / len(SUITE) <= 0.3
    assert len(TRAIN) + len(HELDOUT) == len(SUITE)
    for family in families:
        splits = {task.split for task in SUITE if task.family == family}
        assert splits == {"train", "heldout"}, family
    assert re.fullmatch(r"wrong_operator-\d{4}", SUITE[0].task_id)


def test_deterministic_and_seeded():
    assert builtin_suite(0) == SUITE
    other = builtin_suite(1)
    assert [t.task_id for t in other] == [t.task_id for t in SUITE]
    assert [t.split for t in other] == [t.split for t in SUITE]       # the split is fixed
    assert other != SUITE                                              # the draws are not


def signature(task):
    """(family, function names, parameter names) of a task's code: what makes its code what it is."""
    tree = ast.parse(next(iter(task.files.values())))
    return task.family, tuple(sorted((node.name, tuple(a.arg for a in node.args.args))
                                     for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)))


def test_heldout_tasks_differ_from_training_tasks():
    train_signatures = {signature(t) for t in TRAIN}
    train_texts = {text for t in TRAIN for text in t.files.values()}
    for task in HELDOUT:
        assert signature(task) not in train_signatures, task.task_id
        assert not set(task.files.values()) & train_texts, task.task_id


@pytest.mark.parametrize("task", SUITE, ids=lambda t: t.task_id)
def test_task_shape(task):
    assert len(task.files) == 1
    (path, text), = task.files.items()
    assert path.endswith(".py") and path[:-3] not in sys.stdlib_module_names
    assert len(text) < 300 and 3 <= len(text.splitlines()) <= 10
    functions = defined_names(task)
    assert 1 <= len(functions) <= 2
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef):
            doc = ast.get_docstring(node)
            assert doc and "\n" not in doc
    match = re.fullmatch(r"Fix the bug in (\S+): (\w+)\((.*)\) (returned|raised) (.+), expected (.+)\.",
                         task.instruction)
    assert match and match[1] == path and match[2] in functions
    # the demonstration replaces exactly one whole line, indentation included
    read, replace, submit = scripted_solution(task)
    assert (read.name, replace.name, submit.name) == ("read_file", "str_replace", "submit")
    old, new = replace.arguments["old"], replace.arguments["new"]
    assert old in text.splitlines() and text.count(old) == 1 and old != new
    fixed = text.replace(old, new).splitlines()
    assert sum(a != b for a, b in zip(text.splitlines(), fixed)) == 1
    # the hidden test checks the instruction's case and more
    hidden = task.hidden_tests["test_hidden.py"]
    assert f"{match[2]}({match[3]})" in hidden
    assert hidden.count("def test_") >= 4
    assert "test_hidden.py" in task.grade_command
    assert "test_hidden" not in text


def test_scripted_solver_solves_every_task_and_unsolved_tasks_fail():
    limits = SandboxLimits(timeout_s=20.0)

    def grades(task):
        with CodingEnv(task, limits=limits) as env:
            unsolved = env.grade()
            observations = [env.step(call) for call in scripted_solution(task)]
            solved = env.grade()
        assert not any(obs.error for obs in observations), (task.task_id, observations)
        assert observations[-1].done
        return task.task_id, unsolved, solved

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(grades, SUITE))
    wrongly_passing = [tid for tid, unsolved, _ in results if unsolved.passed or unsolved.reward != 0.0]
    not_solved = [(tid, solved.output[-300:]) for tid, _, solved in results if not solved.passed]
    assert not wrongly_passing
    assert not not_solved
    assert all(solved.reward == 1.0 for _, _, solved in results)


def test_load_suite_filters_and_splits():
    train = load_suite(Spec(), "train")
    assert train == TRAIN
    only = load_suite(Spec(families=["off_by_one", "missing_case"]), "heldout")
    assert only and {t.family for t in only} == {"off_by_one", "missing_case"}
    assert all(t.split == "heldout" for t in only)
    with pytest.raises(ValueError, match="no family nope"):
        load_suite(Spec(families=["nope"]), "train")
    with pytest.raises(ValueError, match="unknown suite"):
        load_suite(Spec(name="bigsuite"), "train")
    with pytest.raises(ValueError, match="unknown split"):
        split_suite(SUITE, "test")


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "suite.jsonl"
    save_tasks_jsonl(SUITE[:20], path)
    assert load_tasks_jsonl(path) == SUITE[:20]
    assert load_suite(Spec(name=str(path)), "train") == split_suite(SUITE[:20], "train")
    path.write_text(path.read_text() + '{"task_id": "x"}\n')
    with pytest.raises(TaskError, match=r"suite.jsonl:21: .*missing field"):
        load_tasks_jsonl(path)
