"""A coding task: what the agent is told, the repository it sees, and how it is graded.

Invariants:

* ``files`` is the repository the agent's sandbox starts from; ``hidden_tests`` are protected
  evaluation artifacts that are never placed in the agent's sandbox: they are written only
  into the pristine grading directory (see :meth:`envs.env.CodingEnv.grade`).
* ``grade_command`` runs with the grading directory as its working directory; exit code 0
  means the task is solved.
* ``setup_command`` (optional) runs in the agent's sandbox, in its work dir, before the agent's
  first step (e.g. ``git init`` of a SWE-bench snapshot, a Terminal-Bench ``setup.sh``); a
  failure is an infrastructure error, not the agent's.
* All file paths are relative POSIX paths without ``..``.
* Files under ``.eval/`` (:data:`EVAL_ARTIFACTS_DIR`) are evaluation artifacts: the anti-hack guard
  protects them; a task that places some in the agent's sandbox leaks them on purpose (see
  :mod:`envs.leak`, the hack-demo family).
* ``solution`` (optional) is a reference demonstration, a tuple of tool calls that solves the
  task; it is host-side metadata and never shown to the agent.

A task is plain data: :meth:`Task.to_dict` / :meth:`Task.from_dict` round-trip it through
JSON, and a malformed dict raises :class:`TaskError` naming the bad field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from envs.tools import ToolCall

SPLITS: tuple[str, ...] = ("train", "heldout")
EVAL_ARTIFACTS_DIR = ".eval"
DIFFICULTIES: tuple[int, ...] = (1, 2, 3)


class TaskError(ValueError):
    """A task (or a task dict) is malformed; the message names the field."""


def check_relative_path(path: Any, field: str) -> str:
    """Return `path` if it is a safe relative POSIX path, else raise TaskError naming `field`."""
    if not isinstance(path, str) or not path:
        raise TaskError(f"{field}: a file path must be a non-empty string, got {path!r}")
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or "\x00" in path or path.endswith("/"):
        raise TaskError(f"{field}: file path {path!r} must be relative, without '..', NUL or a trailing '/'")
    return path


def _copy_if_dict(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


def _check_files(value: Any, field: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TaskError(f"{field} must be a dict of relative path -> text, got {type(value).__name__}")
    for path, text in value.items():
        check_relative_path(path, field)
        if not isinstance(text, str):
            raise TaskError(f"{field}[{path!r}] must be a string, got {type(text).__name__}")
    return value


@dataclass(frozen=True)
class Task:
    """One task of a suite. See the module docstring for the invariants."""

    task_id: str                          # e.g. "wrong_operator-0007"
    family: str
    split: str                            # "train" | "heldout"
    difficulty: int                       # 1..3
    instruction: str                      # what the agent is told
    files: dict[str, str]                 # repository files visible to the agent
    hidden_tests: dict[str, str]          # protected; never placed in the agent's sandbox
    grade_command: tuple[str, ...]        # run in the grading dir; exit code 0 == pass
    solution: tuple[ToolCall, ...] = ()   # optional reference demonstration (host-side only)
    setup_command: tuple[str, ...] = ()   # optional; run in the agent's sandbox before the first step

    def __post_init__(self) -> None:
        for field in ("task_id", "family", "instruction"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip():
                raise TaskError(f"{field} must be a non-empty string, got {value!r}")
        if self.split not in SPLITS:
            raise TaskError(f"split must be one of {SPLITS}, got {self.split!r} (task {self.task_id})")
        if isinstance(self.difficulty, bool) or self.difficulty not in DIFFICULTIES:
            raise TaskError(f"difficulty must be an int in {DIFFICULTIES}, got {self.difficulty!r} (task {self.task_id})")
        _check_files(self.files, "files")
        _check_files(self.hidden_tests, "hidden_tests")
        if not self.hidden_tests:
            raise TaskError(f"hidden_tests must not be empty (task {self.task_id})")
        if (not isinstance(self.grade_command, tuple) or not self.grade_command
                or not all(isinstance(arg, str) and arg for arg in self.grade_command)):
            raise TaskError(f"grade_command must be a non-empty tuple of non-empty strings, got {self.grade_command!r}")
        if (not isinstance(self.setup_command, tuple)
                or not all(isinstance(arg, str) and arg for arg in self.setup_command)):
            raise TaskError(f"setup_command must be a tuple of non-empty strings, got {self.setup_command!r} "
                            f"(task {self.task_id})")
        if not isinstance(self.solution, tuple) or not all(isinstance(c, ToolCall) for c in self.solution):
            raise TaskError(f"solution must be a tuple of ToolCall, got {self.solution!r} (task {self.task_id})")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` inverts it (``setup_command`` only when set)."""
        data = {
            "task_id": self.task_id, "family": self.family, "split": self.split,
            "difficulty": self.difficulty, "instruction": self.instruction,
            "files": dict(self.files), "hidden_tests": dict(self.hidden_tests),
            "grade_command": list(self.grade_command),
            "solution": [call.to_dict() for call in self.solution],
        }
        if self.setup_command:
            data["setup_command"] = list(self.setup_command)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Task:
        """Build and validate a task; raises TaskError naming the missing, unknown or bad field."""
        if not isinstance(data, dict):
            raise TaskError(f"a task must be a dict, got {type(data).__name__}")
        required = ("task_id", "family", "split", "difficulty", "instruction", "files", "hidden_tests", "grade_command")
        missing = [key for key in required if key not in data]
        if missing:
            raise TaskError(f"task {data.get('task_id', '?')!r} is missing field(s): {', '.join(missing)}")
        unknown = sorted(set(data) - set(required) - {"solution", "setup_command"})
        if unknown:
            raise TaskError(f"task {data['task_id']!r} has unknown field(s): {', '.join(unknown)}")
        command = data["grade_command"]
        if not isinstance(command, (list, tuple)):
            raise TaskError(f"grade_command must be a list of strings, got {type(command).__name__}")
        setup = data.get("setup_command", [])
        if not isinstance(setup, (list, tuple)):
            raise TaskError(f"setup_command must be a list of strings, got {type(setup).__name__}")
        solution = data.get("solution", [])
        if not isinstance(solution, (list, tuple)):
            raise TaskError(f"solution must be a list of tool calls, got {type(solution).__name__}")
        try:
            calls = tuple(ToolCall.from_dict(call) for call in solution)
        except ValueError as exc:
            raise TaskError(f"solution: {exc}") from None
        return cls(task_id=data["task_id"], family=data["family"], split=data["split"],
                   difficulty=data["difficulty"], instruction=data["instruction"],
                   files=_copy_if_dict(data["files"]), hidden_tests=_copy_if_dict(data["hidden_tests"]),
                   grade_command=tuple(command), solution=calls, setup_command=tuple(setup))
