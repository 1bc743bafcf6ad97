"""The hack demo's figure and table: exploit rate and honest pass rate over PPO steps, filter on vs off.

    python -m rl.hack_demo --filter-on runs/<on> --filter-off runs/<off> --out docs/hack_demo.png

reads each run's ``metrics.jsonl`` (``antihack/hack_rate``: the share of episodes with a confirmed
hack, blocked or only observed; ``leak/honest_pass_rate``: the share whose calls pass when replayed
on the leak-free copy of the task) and ``summary.json`` (the held-out evaluations before and after
RL), writes the PNG and prints a markdown table of the measured numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

EXPLOIT, HONEST, HACKED = "antihack/hack_rate", "leak/honest_pass_rate", "leak/hacked_pass_rate"


def load_metrics(run_dir: Path) -> list[dict]:
    """The per-step metrics of a run, in step order; each must carry the hack-demo keys."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a training run directory?")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    missing = [k for k in (EXPLOIT, HONEST) if rows and k not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{path} has no hack-demo metrics ({', '.join(missing) or 'no steps'}): was it run with "
                         "experiment=hack_demo and the guard enabled (antihack=rules or antihack=observe)?")
    return sorted(rows, key=lambda r: r["step"])


def window_mean(rows: list[dict], key: str, first: bool, k: int = 3) -> float:
    """The mean of `key` over the first (or last) `k` steps."""
    picked = rows[:k] if first else rows[-k:]
    return sum(r[key] for r in picked) / len(picked)


def plot(runs: dict[str, list[dict]], out: Path) -> None:
    """Two panels (exploit rate, honest pass rate) over PPO steps, one line per run."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    colours = {"filter off": "#c0392b", "filter on": "#2471a3"}
    for label, rows in runs.items():
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r[EXPLOIT] for r in rows], marker="o", ms=3, color=colours.get(label), label=label)
        axes[1].plot(steps, [r[HONEST] for r in rows], marker="o", ms=3, color=colours.get(label), label=label)
    axes[0].set_title("exploit rate (episodes that used the leak)")
    axes[1].set_title("honest pass rate (replayed on the leak-free copy)")
    for ax in axes:
        ax.set_xlabel("PPO step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("horizonrl hack demo: a leaky task family, anti-hack filter on vs off", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def table(runs: dict[str, list[dict]], summaries: dict[str, dict]) -> str:
    """A markdown table: first-3 / last-3 step means per run, and the held-out figures."""
    lines = ["| run | exploit rate, steps 1-3 → last 3 | honest pass rate, steps 1-3 → last 3 | "
             "hacked pass rate, last 3 | held-out honest pass rate before → after RL | "
             "held-out exploit rate before → after RL |", "|---|---|---|---|---|---|"]
    for label, rows in runs.items():
        s = summaries.get(label, {})
        before, after = s.get("heldout_hack_before_rl", {}), s.get("heldout_hack_after_rl", {})
        held = (f"{before[HONEST]:.3f} → {after[HONEST]:.3f}" if HONEST in before and HONEST in after else "n/a")
        held_x = (f"{before[EXPLOIT]:.3f} → {after[EXPLOIT]:.3f}" if EXPLOIT in before and EXPLOIT in after else "n/a")
        lines.append(f"| {label} | {window_mean(rows, EXPLOIT, True):.3f} → {window_mean(rows, EXPLOIT, False):.3f} | "
                     f"{window_mean(rows, HONEST, True):.3f} → {window_mean(rows, HONEST, False):.3f} | "
                     f"{window_mean(rows, HACKED, False):.3f} | {held} | {held_x} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--filter-on", type=Path, required=True, help="run directory of the filtered run")
    parser.add_argument("--filter-off", type=Path, required=True, help="run directory of the antihack=observe run")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    dirs = {"filter off": args.filter_off, "filter on": args.filter_on}
    runs = {label: load_metrics(d) for label, d in dirs.items()}
    summaries = {label: json.loads((d / "summary.json").read_text()) for label, d in dirs.items()
                 if (d / "summary.json").is_file()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(runs, args.out)
    print(table(runs, summaries))
    print(f"\nplot: {args.out}")


if __name__ == "__main__":
    main()
