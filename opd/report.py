"""summary.json of a distillation run and its console lines.

``domains.<name>``: ``before`` / ``after`` (the student's held-out pass rate on the domain, a fraction
in [0, 1]), ``expert`` (the domain's expert on the same tasks, same sampling), ``recovery`` =
(after − before) / (expert − before), and ``reverse_kl`` = {first, last}: the sampled per-token
reverse KL(π_student‖π_expert) on the domain's training rollouts of the first and the last step;
``reverse_kl_heldout`` = {before, after}: the same on the held-out evaluation episodes. With an
off-policy phase (``opd.offpolicy_samples_per_task``), ``after_offpolicy`` = {pass_rate, recovery,
reverse_kl_heldout}: the student between the two phases.
"""

from __future__ import annotations

import time
from pathlib import Path

from opd.advantages import recovery
from opd.config import DistillConfig
from opd.evaluation import DomainEval
from opd.offpolicy import offpolicy_samples
from rl.observe import RunLogger


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
        "final_metrics": log.history[-1] if log.history else {},
    }
