"""Plain-data inputs of the anti-hack guard: the task context and the tool call.

The guard never sees a model, a sandbox or a tokenizer. It sees

* a :class:`TaskContext` describing what the task protects (hidden tests, grader files), which
  hosts are local, which dependencies may be installed, which files are evaluation tests, and
  the commit the repository was cloned at;
* a tool call, a plain ``{"name": ..., "arguments": {...}}`` dict with one of the tool names in
  :data:`TOOL_NAMES`.

:func:`validate_call` checks a call's shape and :func:`normalise_call` turns it into the
canonical string used as a cache key (whitespace-insensitive for shell commands).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

TOOL_NAMES = ("bash", "read_file", "write_file", "str_replace", "submit")

# The string arguments each tool needs; extra arguments are allowed and ignored.
REQUIRED_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "bash": ("command",),
    "read_file": ("path",),
    "write_file": ("path", "content"),
    "str_replace": ("path", "old", "new"),
    "submit": (),
}


class CallError(ValueError):
    """A tool call that does not have the documented shape."""


@dataclass(frozen=True)
class TaskContext:
    """What the guard knows about the task an episode works on.

    ``workdir`` is the agent's working directory as seen inside the sandbox. ``protected_paths``
    and ``test_paths`` are globs: absolute (``/work/.eval/**``), relative to ``workdir``
    (``tests/hidden/**``) or bare names matched against any path component (``*hidden*``).
    """

    task_id: str
    instruction: str
    workdir: str
    protected_paths: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
    declared_dependencies: tuple[str, ...] = ()
    test_paths: tuple[str, ...] = ()
    base_commit: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.workdir, str) or not self.workdir.startswith("/"):
            raise ValueError(f"TaskContext.workdir must be an absolute path, got {self.workdir!r}")
        for name in ("protected_paths", "allowed_hosts", "declared_dependencies", "test_paths"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"TaskContext.{name} must be a sequence of strings, got the string {value!r}")
            items = tuple(value)
            if not all(isinstance(v, str) for v in items):
                raise ValueError(f"TaskContext.{name} must contain only strings, got {items!r}")
            object.__setattr__(self, name, items)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], task_id: str = "") -> "TaskContext":
        """Build a context from a JSON-like mapping (the ``task`` object of a scan line)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"task must be a JSON object, got {type(data).__name__}")
        known = {"task_id", "instruction", "workdir", "protected_paths", "allowed_hosts",
                 "declared_dependencies", "test_paths", "base_commit"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"task has unknown keys {unknown}; known keys are {sorted(known)}")
        if "workdir" not in data:
            raise ValueError("task is missing 'workdir'")
        kwargs: dict[str, Any] = {k: data[k] for k in known if k in data}
        kwargs.setdefault("task_id", task_id)
        kwargs.setdefault("instruction", "")
        for key in ("protected_paths", "allowed_hosts", "declared_dependencies", "test_paths"):
            if key in kwargs:
                if not isinstance(kwargs[key], (list, tuple)):
                    raise ValueError(f"task.{key} must be a list of strings")
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "instruction": self.instruction, "workdir": self.workdir,
                "protected_paths": list(self.protected_paths), "allowed_hosts": list(self.allowed_hosts),
                "declared_dependencies": list(self.declared_dependencies),
                "test_paths": list(self.test_paths), "base_commit": self.base_commit}


@dataclass(frozen=True)
class ToolCall:
    """A validated tool call. ``arguments`` keeps every argument the model sent."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def arg(self, key: str) -> str:
        value = self.arguments.get(key, "")
        return value if isinstance(value, str) else str(value)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": dict(self.arguments)}


def validate_call(call: Any) -> ToolCall:
    """Check that ``call`` is ``{"name": <tool>, "arguments": {...}}``; raise :class:`CallError` if not."""
    if isinstance(call, ToolCall):
        return call
    if not isinstance(call, Mapping):
        raise CallError(f"a tool call must be a JSON object, got {type(call).__name__}")
    name = call.get("name")
    if not isinstance(name, str):
        raise CallError('a tool call needs a string "name"')
    if name not in TOOL_NAMES:
        raise CallError(f"unknown tool {name!r}; expected one of {list(TOOL_NAMES)}")
    arguments = call.get("arguments", {})
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        raise CallError(f'"arguments" of {name} must be a JSON object, got {type(arguments).__name__}')
    for key in REQUIRED_ARGUMENTS[name]:
        if key not in arguments:
            raise CallError(f"{name} call is missing the argument {key!r}")
        if not isinstance(arguments[key], str):
            raise CallError(f"{name} argument {key!r} must be a string, got {type(arguments[key]).__name__}")
    return ToolCall(name=name, arguments=dict(arguments))


def normalise_call(call: ToolCall) -> str:
    """Canonical text of a call: sorted JSON, shell whitespace collapsed (the judge's cache key)."""
    args = dict(call.arguments)
    if call.name == "bash" and isinstance(args.get("command"), str):
        args["command"] = " ".join(args["command"].split())
    return json.dumps({"name": call.name, "arguments": args}, sort_keys=True, ensure_ascii=False, default=str)
