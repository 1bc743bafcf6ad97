"""Task records (validation, dict round trip), tool specs and argument checks, the scripted solver."""

import json

import pytest

from envs.solver import line_fix_solution, scripted_solution
from envs.tasks import Task, TaskError
from envs.tools import TOOL_NAMES, TOOL_SPECS, ToolCall, check_arguments


def task_dict(**overrides):
    data = {
        "task_id": "demo-0001", "family": "demo", "split": "train", "difficulty": 1,
        "instruction": "Fix the bug in calc.py: add(2, 3) returned -1, expected 5.",
        "files": {"calc.py": "def add(a, b):\n    return a - b\n"},
        "hidden_tests": {"test_hidden.py": "import unittest\n"},
        "grade_command": ["python3", "-I", "test_hidden.py"],
        "solution": [{"name": "submit", "arguments": {}}],
    }
    data.update(overrides)
    return data


def test_round_trip_through_json():
    task = Task.from_dict(task_dict())
    again = Task.from_dict(json.loads(json.dumps(task.to_dict())))
    assert again == task
    assert again.grade_command == ("python3", "-I", "test_hidden.py")
    assert again.solution == (ToolCall("submit", {}),)


def test_solution_is_optional():
    data = task_dict()
    del data["solution"]
    assert Task.from_dict(data).solution == ()


@pytest.mark.parametrize("overrides, fragment", [
    ({"split": "test"}, "split"),
    ({"difficulty": 0}, "difficulty"),
    ({"difficulty": True}, "difficulty"),
    ({"difficulty": "1"}, "difficulty"),
    ({"task_id": ""}, "task_id"),
    ({"instruction": 3}, "instruction"),
    ({"files": ["calc.py"]}, "files"),
    ({"files": {"../calc.py": "x"}}, "files"),
    ({"files": {"/etc/calc.py": "x"}}, "files"),
    ({"files": {"calc.py": 3}}, "files['calc.py']"),
    ({"hidden_tests": {}}, "hidden_tests"),
    ({"grade_command": []}, "grade_command"),
    ({"grade_command": "python3 test.py"}, "grade_command"),
    ({"grade_command": ["python3", 3]}, "grade_command"),
    ({"solution": [{"name": "submit", "args": {}}]}, "solution"),
    ({"solution": "submit"}, "solution"),
])
def test_malformed_dicts_name_the_field(overrides, fragment):
    with pytest.raises(TaskError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        Task.from_dict(task_dict(**overrides))


def test_missing_and_unknown_fields_are_named():
    data = task_dict()
    del data["hidden_tests"]
    with pytest.raises(TaskError, match="missing field.*hidden_tests"):
        Task.from_dict(data)
    with pytest.raises(TaskError, match="unknown field.*answer"):
        Task.from_dict(task_dict(answer="42"))
    with pytest.raises(TaskError, match="must be a dict"):
        Task.from_dict(["not", "a", "dict"])


def test_direct_construction_is_validated_too():
    with pytest.raises(TaskError, match="grade_command"):
        Task(**{**Task.from_dict(task_dict()).__dict__, "grade_command": ["python3"]})


def test_tool_specs_are_json_schemas():
    assert TOOL_NAMES == ("bash", "read_file", "write_file", "str_replace", "submit")
    for spec in TOOL_SPECS:
        assert set(spec) == {"name", "description", "parameters"}
        params = spec["parameters"]
        assert params["type"] == "object" and params["additionalProperties"] is False
        assert set(params["required"]) == set(params["properties"])
    by_name = {spec["name"]: spec for spec in TOOL_SPECS}
    assert list(by_name["str_replace"]["parameters"]["properties"]) == ["path", "old", "new"]
    assert by_name["submit"]["parameters"]["properties"] == {}


@pytest.mark.parametrize("call, fragment", [
    (ToolCall("ls", {}), 'unknown tool "ls"'),
    (ToolCall("read_file", {}), "missing argument(s): path"),
    (ToolCall("read_file", {"path": "a", "mode": "r"}), "unknown argument(s): mode"),
    (ToolCall("read_file", {"path": 3}), 'argument "path" of read_file must be a string, got int'),
    (ToolCall("write_file", {"path": "a", "content": None}), 'argument "content"'),
    (ToolCall("bash", "ls"), "must be a JSON object"),
    (ToolCall("submit", {"now": True}), "unknown argument(s): now"),
])
def test_check_arguments_explains_what_is_wrong(call, fragment):
    assert fragment in check_arguments(call)


def test_check_arguments_accepts_valid_calls():
    assert check_arguments(ToolCall("str_replace", {"path": "a", "old": "x", "new": ""})) is None
    assert check_arguments(ToolCall("submit", {})) is None


def test_tool_call_from_dict():
    assert ToolCall.from_dict({"name": "bash", "arguments": {"command": "ls"}}) == ToolCall("bash", {"command": "ls"})
    with pytest.raises(ValueError, match="name"):
        ToolCall.from_dict({"arguments": {}})


def test_line_fix_solution_shape():
    calls = line_fix_solution("calc.py", "    return a - b", "    return a + b")
    assert [c.name for c in calls] == ["read_file", "str_replace", "submit"]
    assert calls[1].arguments == {"path": "calc.py", "old": "    return a - b", "new": "    return a + b"}
    with pytest.raises(ValueError, match="one line"):
        line_fix_solution("calc.py", "a\nb", "c")


def test_scripted_solution_needs_a_reference():
    data = task_dict()
    del data["solution"]
    with pytest.raises(TaskError, match="no reference solution"):
        scripted_solution(Task.from_dict(data))
    bad = Task.from_dict(task_dict(solution=[{"name": "read_file", "arguments": {}}]))
    with pytest.raises(TaskError, match="invalid reference solution"):
        scripted_solution(bad)
