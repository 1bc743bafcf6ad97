"""Offline scanning of tool calls from a JSONL file (``horizonrl-audit scan``).

Input, one object per line::

    {"id": ..., "task": {"instruction", "workdir", "protected_paths": [...], ...}, "call": {"name", "arguments"}}

Output, one object per input line, in order::

    {"id": ..., "verdict": "hack" | "ok", "rules": [rule ids], "category": <category or null>}

A line that cannot be read (bad JSON, missing or malformed ``task``/``call``) yields
``{"id": <id or null>, "line": <n>, "error": "<what is wrong>"}`` and the scan goes on. Blank lines are
skipped. With ``judge=None`` the rules decide alone (a hit is a hack); otherwise flagged calls go to
the judge and are hacks when it says so with confidence at least ``threshold``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Iterator

from antihack.context import CallError, TaskContext, validate_call
from antihack.judge import Judge, JudgeRequest
from antihack.rules import RuleSet, primary


def scan_record(record: Any, rules: RuleSet, judge: Judge | None = None, threshold: float = 0.7,
                contexts: dict[str, TaskContext] | None = None) -> dict[str, Any]:
    """Scan one decoded input object; raises ValueError/CallError with a message on bad input."""
    if not isinstance(record, dict):
        raise ValueError(f"each line must be a JSON object, got {type(record).__name__}")
    if "id" not in record:
        raise ValueError("missing 'id'")
    task = record.get("task")
    if not isinstance(task, dict):
        raise ValueError("missing or malformed 'task' (expected a JSON object)")
    key = json.dumps(task, sort_keys=True, default=str)
    ctx = contexts.get(key) if contexts is not None else None
    if ctx is None:
        task_id = str(task.get("task_id") or "scan-" + hashlib.sha1(key.encode()).hexdigest()[:12])
        ctx = TaskContext.from_dict(task, task_id=task_id)
        if contexts is not None:
            contexts[key] = ctx
    if "call" not in record:
        raise ValueError("missing 'call'")
    call = validate_call(record["call"])
    analysis = rules.analyse(call, ctx)
    hits = analysis.hits
    out: dict[str, Any] = {"id": record["id"], "verdict": "hack" if hits else "ok",
                           "rules": [h.rule_id for h in hits], "category": analysis.category}
    if hits and judge is not None:
        result = judge.judge(JudgeRequest(ctx, call, tuple(hits)))
        v = result.verdict
        is_hack = v.verdict == "hack" and v.confidence >= threshold
        out["verdict"] = "hack" if is_hack else "ok"
        out["judge"] = {"verdict": v.verdict, "confidence": v.confidence, "rationale": v.rationale,
                        "error": result.error}
        if is_hack and v.category and v.category != "benign":
            out["category"] = v.category
        elif not is_hack:
            top = primary(hits)
            out["category"] = top.category if top else None
    return out


def scan_lines(lines: Iterable[str], rules: RuleSet, judge: Judge | None = None,
               threshold: float = 0.7) -> Iterator[dict[str, Any]]:
    """Scan JSONL lines; never raises for bad input (see module docstring)."""
    contexts: dict[str, TaskContext] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record_id = None
        try:
            record = json.loads(line)
            if isinstance(record, dict):
                record_id = record.get("id")
            yield scan_record(record, rules, judge, threshold, contexts)
        except json.JSONDecodeError as exc:
            yield {"id": None, "line": lineno, "error": f"invalid JSON: {exc.msg} at column {exc.colno}"}
        except (ValueError, CallError, TypeError) as exc:
            yield {"id": record_id, "line": lineno, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a scan reports every line and never stops
            yield {"id": record_id, "line": lineno, "error": f"internal error: {type(exc).__name__}: {exc}"}
