"""Tool-call parsing tolerates malformed model output; rendering round-trips."""

import pytest

from envs.tools import ToolCall
from rollout.chat import ParseError, parse_tool_call, render_tool_call


def test_round_trip():
    call = ToolCall(name="str_replace", arguments={"path": "a.py", "old": '    return "x"\n', "new": "    return 1"})
    assert parse_tool_call(render_tool_call(call)) == call


def test_text_around_the_call_is_ignored():
    parsed = parse_tool_call('thinking...<tool_call>{"name": "submit", "arguments": {}}</tool_call>trailing')
    assert parsed == ToolCall(name="submit", arguments={})


def test_missing_arguments_default_to_empty():
    assert parse_tool_call('<tool_call>{"name": "submit"}</tool_call>') == ToolCall("submit", {})


@pytest.mark.parametrize("text, fragment", [
    ("", "no tool call"),
    ("just some words", "no tool call"),
    ('<tool_call>{"name": "read_file"', "not closed"),
    ('<tool_call>{"name": read_file}</tool_call>', "not valid JSON"),
    ('<tool_call>{"name": "a", "arguments": {"path": "x"</tool_call>', "not valid JSON"),
    ("<tool_call>[1, 2]</tool_call>", "JSON object"),
    ('<tool_call>{"arguments": {}}</tool_call>', '"name"'),
    ('<tool_call>{"name": 3}</tool_call>', '"name"'),
    ('<tool_call>{"name": "bash", "arguments": "ls"}</tool_call>', '"arguments"'),
    ("<tool_call>\x00\xff\ud800</tool_call>", "not valid JSON"),
])
def test_malformed_output_is_an_error_observation(text, fragment):
    parsed = parse_tool_call(text)
    assert isinstance(parsed, ParseError)
    assert fragment in parsed.message
