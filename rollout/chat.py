"""Chat format, tool-call rendering and parsing, token-in/token-out rendering.

The format is the Qwen/Hermes one that open coding agents use::

    <|im_start|>system\n{system}<|im_end|>\n
    <|im_start|>user\n{task}<|im_end|>\n
    <|im_start|>assistant\n<tool_call>{"name": ..., "arguments": {...}}</tool_call><|im_end|>\n
    <|im_start|>tool\n{observation}<|im_end|>\n
    <|im_start|>assistant\n ...

Invariants kept here:

* History is never decoded and re-tokenised. The agent loop appends the exact ids the engine
  sampled; only *new* text (observations, headers) is tokenised, piece by piece, with
  :func:`encode_text` — so the ids of a turn never depend on what follows it.
* A malformed model output never raises: :func:`parse_tool_call` returns a
  :class:`ParseError` whose message becomes the observation the agent sees next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from envs.tools import TOOL_SPECS, ToolCall

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, TOOL_CALL_OPEN, TOOL_CALL_CLOSE)


def system_prompt() -> str:
    """The system message: the tools and how to call them, kept short (it is in every context)."""
    tools = ", ".join(f"{spec['name']}({', '.join(spec['parameters'].get('properties', {}))})" for spec in TOOL_SPECS)
    return (f"You are a coding agent. Fix the bug, then submit. One tool call per turn: "
            f'{TOOL_CALL_OPEN}{{"name": ..., "arguments": {{...}}}}{TOOL_CALL_CLOSE}. Tools: {tools}.')


def render_tool_call(call: ToolCall) -> str:
    """The assistant text for one tool call (what a demonstration teaches the policy to emit)."""
    body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


@dataclass(frozen=True)
class ParseError:
    """A model output that is not a valid tool call; `message` is shown to the agent."""

    message: str


def parse_tool_call(text: str) -> ToolCall | ParseError:
    """Parse one assistant turn into a tool call; never raises on bad model output."""
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        return ParseError(f"Error: no tool call found. Reply with {TOOL_CALL_OPEN}{{...}}{TOOL_CALL_CLOSE}.")
    end = text.find(TOOL_CALL_CLOSE, start)
    if end < 0:
        return ParseError(f"Error: the tool call is not closed with {TOOL_CALL_CLOSE}.")
    body = text[start + len(TOOL_CALL_OPEN):end].strip()
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        return ParseError(f"Error: the tool call is not valid JSON ({exc.msg} at char {exc.pos}).")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ParseError('Error: the tool call must be a JSON object with a string "name".')
    arguments = obj.get("arguments", {})
    if not isinstance(arguments, dict):
        return ParseError('Error: "arguments" must be a JSON object.')
    return ToolCall(name=obj["name"], arguments=arguments)


def message_header(role: str) -> str:
    return f"{IM_START}{role}\n"


def message(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of a piece of new text (special tokens recognised, nothing added)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_text(instruction: str) -> str:
    """System + task + the assistant header: the context of the first turn."""
    return message("system", system_prompt()) + message("user", instruction) + message_header("assistant")


def observation_text(observation: str) -> str:
    """What follows an assistant turn (already ended by its <|im_end|>): the tool's answer and the next header."""
    return "\n" + message("tool", observation) + message_header("assistant")


def chat_template() -> str:
    """A jinja chat template equivalent to the rendering above, saved with the tokenizer."""
    return (
        "{% for m in messages %}" + IM_START + "{{ m['role'] }}\n{{ m['content'] }}" + IM_END + "\n{% endfor %}"
        "{% if add_generation_prompt %}" + IM_START + "assistant\n{% endif %}"
    )


def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """Generation stops at the end of the assistant message (or end of text)."""
    return (tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT))
