"""summary.json of a distillation run and its console lines.

``domains.<name>``: ``before`` / ``after`` (the student's held-out pass rate on the domain, a fraction
in [0, 1]), ``expert`` (the domain's expert on the same tasks, same sampling), ``recovery`` =
(after − before) / (expert − before), and ``reverse_kl`` = {first, last}: the sampled per-token
reverse KL(π_student‖π_expert) on the domain's training rollouts of the first and the last step;
``reverse_kl_heldout`` = {before, after}: the same on the held-out evaluation episodes. With an
off-policy phase (``opd.offpolicy_samples_per_task``), ``after_offpolicy`` = {pass_rate, recovery,
reverse_kl_heldout}: the student between the two phases. ``plot``: ``distill.png`` beside it
(:func:`plot_distill`; ``python -m opd.report RUN_DIR [OUT.png]`` redraws it from a finished run).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from opd.advantages import recovery
from opd.config import DistillConfig
from opd.evaluation import DomainEval
from opd.offpolicy import offpolicy_samples
from rl.observe import RunLogger, plt   # pyplot on the Agg backend

PLOT_NAME = "distill.png"


def domain_line(domain: str, tag: str, student: DomainEval, expert: DomainEval, before: DomainEval | None = None) -> str:
    line = (f"held-out {domain}: student {tag} {student.result.pass_rate:.3f}, expert {expert.result.pass_rate:.3f} "
            f"({student.result.episodes} episodes each), reverse KL to the expert {student.reverse_kl:.3f}")
    if before is not None:
        line += f", recovery {recovery(before.result.pass_rate, student.result.pass_rate, expert.result.pass_rate):.2f}"
    return line


def _first_last(history: list[dict], key: str) -> dict[str, float]:
    values = [row[key] for row in history if key in row]
    return {"first": values[0], "last": values[-1]} if values else {"first": float("nan"), "last": float("nan")}


def distill_summary(cfg: DistillConfig, before: dict[str, DomainEval], after: dict[str, DomainEval],
                    expert: dict[str, DomainEval], log: RunLogger, student_dir: Path, distill_wall_time_s: float,
                    offpolicy: dict[str, DomainEval] | None = None) -> dict:
    domains = {}
    for d in sorted(after):
        b, a, e = before[d].result.pass_rate, after[d].result.pass_rate, expert[d].result.pass_rate
        domains[d] = {"before": b, "after": a, "expert": e, "recovery": recovery(b, a, e),
                      "reverse_kl": _first_last(log.history, f"opd/reverse_kl/{d}"),
                      "reverse_kl_heldout": {"before": before[d].reverse_kl, "after": after[d].reverse_kl},
                      "heldout_episodes": after[d].result.episodes,
                      "expert_name": next(x.name for x in cfg.opd.experts if x.domain == d)}
        if offpolicy is not None:
            o = offpolicy[d].result.pass_rate
            domains[d]["after_offpolicy"] = {"pass_rate": o, "recovery": recovery(b, o, e),
                                             "reverse_kl_heldout": offpolicy[d].reverse_kl}
    recoveries = [v["recovery"] for v in domains.values()]
    return {
        "experiment": cfg.experiment, "steps": cfg.steps, "orchestrator": cfg.orchestrator,
        "offpolicy_samples_per_task": cfg.opd.offpolicy_samples_per_task, "offpolicy_epochs": cfg.opd.offpolicy_epochs,
        "offpolicy_samples_per_domain": offpolicy_samples(cfg.opd.domains, cfg.opd.offpolicy_samples_per_task),
        "student_init": cfg.opd.student_init, "student_dir": str(student_dir.resolve()),
        "domains": domains, "min_recovery": min(recoveries),
        "experts": {x.name: str(Path(x.checkpoint).resolve()) for x in cfg.opd.experts},
        "distill_wall_time_s": distill_wall_time_s, "wall_time_s": time.time() - log.started,
        "wandb_dir": log.wandb_dir, "metrics": str(log.run_dir / "metrics.jsonl"),
        "plot": str((log.run_dir / PLOT_NAME).resolve()),
        "final_metrics": log.history[-1] if log.history else {},
    }


def _rolling_mean(values: list[float], window: int) -> list[float]:
    means = []
    for i in range(len(values)):
        chunk = values[max(0, i + 1 - window): i + 1]
        means.append(sum(chunk) / len(chunk))
    return means


def plot_distill(run_dir: Path, out: Path | None = None, window: int = 10) -> Path:
    """The merge at a glance, from a finished run's summary.json and metrics.jsonl: each domain's
    held-out pass rate (student before, after the off-policy phase if there was one, after; the
    expert as a line, recovery written above), and over the on-policy steps each domain's training
    rollouts' pass rate and per-token reverse KL to its expert (rolling means over `window` steps)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    domains = summary["domains"]
    stages = [("before", "student before")] + ([("after_offpolicy", "after off-policy phase")]
                                               if all("after_offpolicy" in d for d in domains.values()) else [])
    stages.append(("after", "student after"))
    fig, (bars, passes, kls) = plt.subplots(1, 3, figsize=(14, 4.2))
    width = 0.8 / len(stages)
    for i, (name, d) in enumerate(domains.items()):
        heights = [d[key]["pass_rate"] if key == "after_offpolicy" else d[key] for key, _ in stages]
        for j, h in enumerate(heights):
            bars.bar(i + (j - (len(stages) - 1) / 2) * width, h, width, color=f"C{j}",
                     label=stages[j][1] if i == 0 else None)
        bars.hlines(d["expert"], i - 0.45, i + 0.45, colors="black", linestyles="--",
                    label="expert" if i == 0 else None)
        bars.text(i, max(heights + [d["expert"]]) + 0.03, f"recovery {d['recovery']:.2f}", ha="center", fontsize=8)
    bars.set_xticks(range(len(domains)), list(domains))
    bars.set_ylim(0, 1.05)
    bars.set_ylabel(f"held-out pass rate ({next(iter(domains.values()))['heldout_episodes']} episodes per bar)")
    bars.legend(fontsize=7, loc="upper left")
    bars.set_title("held-out pass rate per domain", fontsize=10)
    steps = [r["step"] for r in rows]
    for i, name in enumerate(domains):
        for ax, key in ((passes, f"opd/pass_rate/{name}"), (kls, f"opd/reverse_kl/{name}")):
            pts = [(s, r[key]) for s, r in zip(steps, rows) if key in r]
            if pts:
                ax.plot([s for s, _ in pts], _rolling_mean([v for _, v in pts], window), color=f"C{i}", label=name)
    passes.set_ylim(-0.02, 1.02)
    passes.set_title(f"training rollouts' pass rate (mean of {window} steps)", fontsize=10)
    kls.set_title(f"per-token reverse KL to the expert (mean of {window} steps)", fontsize=10)
    for ax in (passes, kls):
        ax.set_xlabel("on-policy step")
        ax.legend(fontsize=8)
    fig.suptitle(f"horizonrl-distill: {summary['experiment']}, {summary['steps']} on-policy steps", fontsize=11)
    fig.tight_layout()
    out = out or run_dir / PLOT_NAME
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Redraw a distillation run's plot from its summary.json and metrics.jsonl.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path, nargs="?", default=None, help=f"default: RUN_DIR/{PLOT_NAME}")
    args = parser.parse_args()
    print(plot_distill(args.run_dir, args.out))


if __name__ == "__main__":
    main()
