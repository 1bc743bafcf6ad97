"""A static HTML report of an audit database: hack rate over training steps and example flags.

The plot (matplotlib, Agg backend) is embedded as a base64 PNG so the page is one self-contained
file. The hack rate of a step is confirmed hacks / calls checked when call counts were recorded,
else confirmed hacks / flagged calls (the judge's confirm rate).
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from typing import Any

from antihack.audit import AuditStore


def hack_rate_series(stats: dict[str, Any]) -> tuple[list[int], list[float], list[int], str]:
    """(steps, hack rate per step, flags per step, what the rate is relative to)."""
    steps = sorted(stats["by_step"])
    rows = [stats["by_step"][s] for s in steps]
    use_calls = bool(rows) and all(r["calls"] > 0 for r in rows)
    denom = "calls checked" if use_calls else "flagged calls"
    rates = [(r["confirmed"] / (r["calls"] if use_calls else max(r["flagged"], 1))) for r in rows]
    return steps, rates, [r["flagged"] for r in rows], denom


def plot_png(stats: dict[str, Any]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, rates, flags, denom = hack_rate_series(stats)
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    try:
        if steps:
            ax2 = ax.twinx()
            ax2.bar(steps, flags, alpha=0.25, color="#2980b9", label="flagged calls")
            ax2.set_ylabel("flagged calls")
            ax.set_zorder(ax2.get_zorder() + 1)
            ax.patch.set_visible(False)
            ax.plot(steps, rates, marker="o", color="#c0392b", label=f"confirmed hacks / {denom}")
            ax.set_ylim(0, max(1e-3, max(rates)) * 1.15)
        else:
            ax.text(0.5, 0.5, "no flagged calls", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("training step")
        ax.set_ylabel("hack rate")
        ax.set_title("Hack rate over training steps")
        ax.grid(alpha=0.3)
        if steps:
            ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(store: AuditStore, run: str | None = None, examples: int = 20) -> str:
    stats = store.stats(run)
    png = base64.b64encode(plot_png(stats)).decode()
    title = f"horizonrl anti-hack audit{(' — run ' + run) if run else ''}"
    cat_rows = [[html.escape(k), str(v)] for k, v in stats["by_category"].items()]
    verdict_rows = [[html.escape(k), str(v)] for k, v in stats["by_verdict"].items()]
    steps, rates, _, denom = hack_rate_series(stats)
    step_rows = [[str(s), str(stats["by_step"][s]["flagged"]), str(stats["by_step"][s]["confirmed"]),
                  str(stats["by_step"][s]["calls"]), f"{r:.3f}"] for s, r in zip(steps, rates)]
    ex_rows = []
    for e in store.query(run=run, limit=examples, newest_first=True):
        call = json.dumps(e["call"].get("arguments", {}), ensure_ascii=False)
        ex_rows.append([str(e["id"]), str(e["step"]), html.escape(e["task_id"]),
                        f"<code>{html.escape(e['call'].get('name', ''))}</code> <code>{html.escape(call[:400])}</code>",
                        html.escape(", ".join(e["rule_ids"])), html.escape(e["category"]),
                        f"{html.escape(e['verdict'])} ({e['confidence']:.2f})", html.escape(e["action"]),
                        html.escape((e["rationale"] or "")[:300])])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }}
th {{ background: #f3f3f3; }} code {{ font-size: 12px; white-space: pre-wrap; word-break: break-all; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Generated {html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))} from <code>{html.escape(str(store.path))}</code>.
{stats['total']} flagged calls.</p>
<h2>Hack rate over steps</h2>
<img alt="hack rate over training steps" src="data:image/png;base64,{png}">
<p>Hack rate = confirmed hacks / {html.escape(denom)}.</p>
{_table(["step", "flagged", "confirmed", "calls", "hack rate"], step_rows)}
<h2>Flags per category</h2>
{_table(["category", "flags"], cat_rows)}
<h2>Verdicts</h2>
{_table(["verdict", "flags"], verdict_rows)}
<h2>Examples (newest {examples})</h2>
{_table(["id", "step", "task", "call", "rules", "category", "verdict", "action", "rationale"], ex_rows)}
</body></html>
"""
