"""The scripted solver: a correct demonstration for any task that carries a reference solution.

Every task of the built-in suite has exactly one buggy line, so its demonstration is always
the same three calls (see :func:`line_fix_solution`): read the file, replace the exact buggy
line (indentation included) by the fixed line, submit. The suite generator stores it in
``Task.solution``; :func:`scripted_solution` hands it out and checks that it is well formed.
"""

from __future__ import annotations

from envs.tasks import Task, TaskError
from envs.tools import ToolCall, check_arguments


def line_fix_solution(path: str, buggy_line: str, fixed_line: str) -> tuple[ToolCall, ...]:
    """read_file(path), str_replace(path, buggy_line, fixed_line), submit()."""
    if "\n" in buggy_line or "\n" in fixed_line:
        raise ValueError("a line fix replaces one line: neither line may contain a newline")
    return (ToolCall("read_file", {"path": path}),
            ToolCall("str_replace", {"path": path, "old": buggy_line, "new": fixed_line}),
            ToolCall("submit", {}))


def scripted_solution(task: Task) -> list[ToolCall]:
    """A sequence of tool calls that solves `task` (its grade passes after them)."""
    if not task.solution:
        raise TaskError(f"task {task.task_id} has no reference solution to demonstrate")
    for call in task.solution:
        problem = check_arguments(call)
        if problem is not None:
            raise TaskError(f"task {task.task_id}: invalid reference solution: {problem}")
    if task.solution[-1].name != "submit":
        raise TaskError(f"task {task.task_id}: the reference solution must end with submit()")
    return list(task.solution)
