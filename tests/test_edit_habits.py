"""scripts/edit_habits.py: counts edits that drop the replaced line's indentation in held-out episodes."""

import importlib.util
import json
from pathlib import Path

from envs.tools import ToolCall
from rollout.chat import render_tool_call

spec = importlib.util.spec_from_file_location("edit_habits", Path(__file__).parents[1] / "scripts" / "edit_habits.py")
edit_habits = importlib.util.module_from_spec(spec)
spec.loader.exec_module(edit_habits)


def episode(passed: bool, *calls: ToolCall) -> dict:
    return {"passed": passed, "transcript": [{"action": render_tool_call(c), "observation": "ok"} for c in calls]}


def test_flush_left_edits_are_told_from_kept_indentation(tmp_path):
    read = ToolCall("read_file", {"path": "m.py"})
    flush = ToolCall("str_replace", {"path": "m.py", "old": "    return a - b", "new": "return a + b"})
    kept = ToolCall("str_replace", {"path": "m.py", "old": "    return a - b", "new": "    return a + b"})
    top = ToolCall("str_replace", {"path": "m.py", "old": "X = 1", "new": "X = 2"})   # nothing to drop
    path = tmp_path / "heldout_after_rl.jsonl"
    eps = [episode(False, read, flush), episode(True, read, kept), episode(True, top), episode(False, read),
           {"passed": False, "transcript": [{"action": "<tool_call>{broken", "observation": "Error"}]}]
    path.write_text("".join(json.dumps(e) + "\n" for e in eps))
    out = edit_habits.habits(path)
    assert out == {"episodes": 5, "pass_rate": 0.4, "with_str_replace": 3, "flush_left_share": 0.333,
                   "pass_rate_flush_left": 0.0, "pass_rate_indent_kept": 1.0}
    assert edit_habits.drops_indentation(flush) and not edit_habits.drops_indentation(kept)
    assert not edit_habits.drops_indentation(top)
