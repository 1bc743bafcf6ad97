"""How a run's policy writes its edits, before and after RL, from the held-out episodes that
`horizonrl-train` writes beside `summary.json` (`heldout_before_rl.jsonl`, `heldout_after_rl.jsonl`).

    python scripts/edit_habits.py runs/<run>          # one JSON object on stdout

For each side: episodes, pass rate, episodes with a parsed ``str_replace``, and the share of those
whose edit drops the indentation of the line it replaces (``new`` flush left where ``old`` was
indented: the habit the default preset's warm-start demonstrator has, which only the reward can
correct), with the pass rate of the episodes with and without such an edit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from envs.tools import ToolCall
from rollout.chat import parse_tool_call


def drops_indentation(call: ToolCall) -> bool:
    """A single-line ``str_replace`` whose ``new`` lost the leading whitespace ``old`` had."""
    old, new = str(call.arguments.get("old", "")), str(call.arguments.get("new", ""))
    indented = old[: len(old) - len(old.lstrip())]
    return bool(indented) and bool(new) and not new.startswith(indented) and new == new.lstrip()


def habits(path: Path) -> dict:
    episodes = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    edited, flush, kept = [], [], []
    for ep in episodes:
        calls = [parse_tool_call(turn["action"]) for turn in ep["transcript"] if "action" in turn]
        edits = [c for c in calls if isinstance(c, ToolCall) and c.name == "str_replace"]
        if edits:
            edited.append(ep)
            (flush if any(drops_indentation(c) for c in edits) else kept).append(ep)

    def rate(eps: list[dict]) -> float | None:
        return round(sum(e["passed"] for e in eps) / len(eps), 3) if eps else None

    return {"episodes": len(episodes), "pass_rate": rate(episodes), "with_str_replace": len(edited),
            "flush_left_share": round(len(flush) / len(edited), 3) if edited else None,
            "pass_rate_flush_left": rate(flush), "pass_rate_indent_kept": rate(kept)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    out = {}
    for side in ("before", "after"):
        path = args.run_dir / f"heldout_{side}_rl.jsonl"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: it is written by horizonrl-train at the end of a run")
        out[side] = habits(path)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
