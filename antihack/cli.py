"""``horizonrl-audit``: inspect a run's anti-hack audit database, or scan tool calls offline.

    horizonrl-audit --db runs/x/audit.sqlite list [--run R] [--category C] [--verdict V] [--action A]
                                                  [--min-step N] [--max-step N] [--limit N] [--json]
    horizonrl-audit --db PATH show ID [--json]
    horizonrl-audit --db PATH stats [--run R] [--json]
    horizonrl-audit --db PATH export --format jsonl|csv [--out FILE] [filters as for list]
    horizonrl-audit --db PATH report --out FILE.html [--run R] [--examples N]
    horizonrl-audit scan FILE.jsonl [--rules-only] [--judge-config FILE.json] [--threshold T] [--out FILE]

``scan`` reads ``{"id", "task", "call"}`` lines and writes one JSON line per input (see
:mod:`antihack.scan`); without ``--rules-only`` flagged calls go to the judge described by
``--judge-config`` (a JSON object of :class:`~antihack.judge.JudgeConfig` fields).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

from antihack.audit import AuditStore
from antihack.judge import JudgeConfig, make_judge
from antihack.rules import RuleSet
from antihack.scan import scan_lines

EXPORT_FIELDS = ("id", "ts", "run", "task_id", "rollout_id", "step", "weight_version", "tool", "category",
                 "verdict", "confidence", "action", "rule_ids", "rationale", "judge_backend", "judge_cached",
                 "judge_error", "shadow_write", "dummy", "call", "recent_context", "rules")


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="only this run name")
    p.add_argument("--category", help="only this category (e.g. protected_read)")
    p.add_argument("--verdict", choices=["hack", "benign", "uncertain"], help="only this judge verdict")
    p.add_argument("--action", choices=["block", "observe", "allow"], help="only this action")
    p.add_argument("--min-step", type=int, help="first training step (inclusive)")
    p.add_argument("--max-step", type=int, help="last training step (inclusive)")
    p.add_argument("--limit", type=int, help="at most this many rows")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="horizonrl-audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="the audit database (a run directory's audit.sqlite)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list flagged calls")
    _filters(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = sub.add_parser("show", help="one flagged call with its context")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("stats", help="counts per category and per training step")
    p.add_argument("--run")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("export", help="export flags as JSONL or CSV")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("--out", help="output file (default: stdout)")
    _filters(p)
    p = sub.add_parser("report", help="a static HTML report with a hack-rate plot and examples")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--run")
    p.add_argument("--examples", type=int, default=20)
    p = sub.add_parser("scan", help="scan tool calls from a JSONL file")
    p.add_argument("file", help='JSONL with {"id", "task", "call"} per line ("-" for stdin)')
    p.add_argument("--rules-only", action="store_true", help="rules decide alone (a hit is a hack)")
    p.add_argument("--judge-config", help="JSON file with JudgeConfig fields (default backend: none)")
    p.add_argument("--threshold", type=float, default=0.7, help="block threshold on the judge's confidence")
    p.add_argument("--out", help="output file (default: stdout)")
    return parser


def _filter_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"run": args.run, "category": args.category, "verdict": args.verdict, "action": args.action,
            "min_step": args.min_step, "max_step": args.max_step, "limit": args.limit}


def _open_store(args: argparse.Namespace, parser: argparse.ArgumentParser) -> AuditStore:
    if not args.db:
        parser.error(f"--db is required for '{args.command}'")
    if not Path(args.db).exists():
        parser.error(f"audit database {args.db} does not exist")
    return AuditStore(args.db, create=False)


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _call_text(call: dict) -> str:
    args = call.get("arguments", {})
    if call.get("name") == "bash":
        return f"bash: {args.get('command', '')}"
    return f"{call.get('name')}: {args.get('path', '')}"


def cmd_list(store: AuditStore, args: argparse.Namespace, out: TextIO) -> int:
    rows = store.query(**_filter_kwargs(args))
    if args.json:
        for r in rows:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
        return 0
    out.write(f"{'id':>5} {'step':>5} {'run':<12} {'category':<15} {'verdict':<9} {'conf':>4} {'action':<6} "
              f"{'rules':<28} call\n")
    for r in rows:
        out.write(f"{r['id']:>5} {r['step']:>5} {_short(r['run'], 12):<12} {r['category']:<15} {r['verdict']:<9} "
                  f"{r['confidence']:>4.2f} {r['action']:<6} {_short(','.join(r['rule_ids']), 28):<28} "
                  f"{_short(_call_text(r['call']), 80)}\n")
    out.write(f"{len(rows)} flag(s)\n")
    return 0


def cmd_show(store: AuditStore, args: argparse.Namespace, out: TextIO) -> int:
    r = store.get(args.id)
    if r is None:
        sys.stderr.write(f"horizonrl-audit: no flag with id {args.id} in {store.path}\n")
        return 1
    if args.json:
        out.write(json.dumps(r, ensure_ascii=False, indent=2) + "\n")
        return 0
    out.write(f"flag {r['id']}  run={r['run']!r} task={r['task_id']} rollout={r['rollout_id']} step={r['step']} "
              f"weight_version={r['weight_version']}\n")
    out.write(f"verdict: {r['verdict']} (confidence {r['confidence']:.2f}, judge {r['judge_backend']}"
              f"{', cached' if r['judge_cached'] else ''})  action: {r['action']}  category: {r['category']}\n")
    if r["judge_error"]:
        out.write(f"judge error: {r['judge_error']}\n")
    out.write(f"rationale: {r['rationale']}\n\nrecent context:\n")
    for i, turn in enumerate(r["recent_context"], 1):
        out.write(f"  [{i}] {turn}\n")
    out.write("\ncall:\n" + json.dumps(r["call"], ensure_ascii=False, indent=2) + "\n\nrules:\n")
    for h in r["rules"]:
        out.write(f"  - {h['rule']} ({h['category']}): {h['evidence']}\n")
    if r["dummy"] is not None:
        out.write(f"\ndummy observation{' (shadow write)' if r['shadow_write'] else ''}:\n{r['dummy']}\n")
    return 0


def cmd_stats(store: AuditStore, args: argparse.Namespace, out: TextIO) -> int:
    s = store.stats(args.run)
    if args.json:
        out.write(json.dumps(s, indent=2) + "\n")
        return 0
    out.write(f"total flags: {s['total']}\n\nper category:\n")
    for k, v in s["by_category"].items():
        out.write(f"  {k:<16} {v}\n")
    out.write("\nper verdict:\n")
    for k, v in s["by_verdict"].items():
        out.write(f"  {k:<16} {v}\n")
    out.write("\nper step:\n  step  flagged  confirmed  blocked  calls\n")
    for step, row in s["by_step"].items():
        out.write(f"  {step:>4}  {row['flagged']:>7}  {row['confirmed']:>9}  {row['blocked']:>7}  {row['calls']:>5}\n")
    return 0


def cmd_export(store: AuditStore, args: argparse.Namespace, out: TextIO) -> int:
    rows = store.query(**_filter_kwargs(args))
    if args.format == "jsonl":
        for r in rows:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
        return 0
    writer = csv.DictWriter(out, fieldnames=list(EXPORT_FIELDS), extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        row = dict(r)
        for key in ("call", "recent_context", "rules"):
            row[key] = json.dumps(row[key], ensure_ascii=False)
        row["rule_ids"] = ",".join(row["rule_ids"])
        writer.writerow(row)
    return 0


def cmd_report(store: AuditStore, args: argparse.Namespace, out: TextIO) -> int:
    from antihack.report import render_html

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(render_html(store, args.run, args.examples), encoding="utf-8")
    out.write(f"wrote {args.out}\n")
    return 0


def cmd_scan(args: argparse.Namespace, out: TextIO, parser: argparse.ArgumentParser) -> int:
    judge = None
    if not args.rules_only and args.judge_config:
        try:
            config = JudgeConfig.from_dict(json.loads(Path(args.judge_config).read_text()))
            judge = make_judge(config)
        except (OSError, ValueError, TypeError) as exc:
            parser.error(f"cannot use --judge-config {args.judge_config}: {exc}")
    try:
        source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8", errors="replace")
    except OSError as exc:
        parser.error(f"cannot read {args.file}: {exc}")
    with source:
        for result in scan_lines(source, RuleSet(), judge, args.threshold):
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out_path = getattr(args, "out", None) if args.command in ("export", "scan") else None
    out: TextIO = open(out_path, "w", encoding="utf-8", newline="") if out_path else sys.stdout
    try:
        if args.command == "scan":
            return cmd_scan(args, out, parser)
        store = _open_store(args, parser)
        try:
            handler = {"list": cmd_list, "show": cmd_show, "stats": cmd_stats, "export": cmd_export,
                       "report": cmd_report}[args.command]
            return handler(store, args, out)
        finally:
            store.close()
    finally:
        if out_path:
            out.close()


if __name__ == "__main__":
    raise SystemExit(main())
