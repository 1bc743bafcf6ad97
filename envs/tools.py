"""The tools a coding agent may call, as data: the call record and the JSON-schema specs.

A :class:`ToolCall` is what the agent loop parses out of a model turn and what the scripted
solver emits. :data:`TOOL_SPECS` describes every tool in the OpenAI/Hermes function format
(``name``, ``description``, ``parameters`` as a JSON schema); :func:`check_arguments` checks a
call against its spec and returns a message for the agent instead of raising, because a
malformed call is an observation, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """One tool invocation: the tool's name and its JSON arguments."""

    name: str
    arguments: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": dict(self.arguments)}

    @classmethod
    def from_dict(cls, data: Any) -> ToolCall:
        """Build a call from ``{"name": str, "arguments": {...}}``; raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"a tool call must be a dict, got {type(data).__name__}")
        unknown = sorted(set(data) - {"name", "arguments"})
        if unknown:
            raise ValueError(f"unknown tool-call field(s): {', '.join(unknown)}")
        name, arguments = data.get("name"), data.get("arguments", {})
        if not isinstance(name, str) or not name:
            raise ValueError(f'tool-call field "name" must be a non-empty string, got {name!r}')
        if not isinstance(arguments, dict):
            raise ValueError(f'tool-call field "arguments" must be a dict, got {type(arguments).__name__}')
        return cls(name=name, arguments=dict(arguments))


def _spec(name: str, description: str, **properties: str) -> dict[str, Any]:
    """A tool spec whose arguments are all required strings (``property name -> description``)."""
    return {
        "name": name,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": {key: {"type": "string", "description": text} for key, text in properties.items()},
            "required": list(properties),
            "additionalProperties": False,
        },
    }


TOOL_SPECS: list[dict[str, Any]] = [
    _spec("bash", "Run a shell command in the repository; returns the exit code, stdout and stderr.",
          command="The command line to run (bash)."),
    _spec("read_file", "Return the text of a file.",
          path="File path, relative to the repository root."),
    _spec("write_file", "Create or overwrite a file with the given text.",
          path="File path, relative to the repository root.", content="The complete new text of the file."),
    _spec("str_replace", "Replace the one occurrence of `old` in a file with `new`.",
          path="File path, relative to the repository root.",
          old="The exact text to replace; it must occur exactly once in the file.",
          new="The replacement text."),
    _spec("submit", "Finish the episode; the work is then graded."),
]

TOOL_NAMES: tuple[str, ...] = tuple(spec["name"] for spec in TOOL_SPECS)

_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict, "array": list,
}


def tool_spec(name: str) -> dict[str, Any] | None:
    """The spec of the tool called `name`, or None if there is no such tool."""
    return next((spec for spec in TOOL_SPECS if spec["name"] == name), None)


def check_arguments(call: ToolCall) -> str | None:
    """Why `call` does not match its tool's spec (a message for the agent), or None if it does."""
    spec = tool_spec(call.name)
    if spec is None:
        return f'unknown tool "{call.name}". Available tools: {", ".join(TOOL_NAMES)}.'
    if not isinstance(call.arguments, dict):
        return f"the arguments of {call.name} must be a JSON object."
    schema = spec["parameters"]
    properties: dict[str, Any] = schema["properties"]
    missing = [key for key in schema["required"] if key not in call.arguments]
    if missing:
        return f"{call.name} is missing argument(s): {', '.join(missing)}."
    extra = [key for key in call.arguments if key not in properties]
    if extra:
        allowed = ", ".join(properties) or "none"
        return f"{call.name} got unknown argument(s): {', '.join(extra)} (allowed: {allowed})."
    for key, value in call.arguments.items():
        expected = properties[key]["type"]
        if not isinstance(value, _JSON_TYPES[expected]) or (expected != "boolean" and isinstance(value, bool)):
            return f'argument "{key}" of {call.name} must be a {expected}, got {type(value).__name__}.'
    return None
