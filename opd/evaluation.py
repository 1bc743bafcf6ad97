"""Held-out evaluation per domain, for the student's cluster and for each expert's engine.

An expert is evaluated on the engine that serves it as a teacher (it can generate too), through
rollout workers like the student's, so both are measured by the same agent loop, sandboxes,
sampling settings and `rl.orchestrator.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

from envs.tasks import Task
from opd.teacher import TeacherPool
from rl.async_rollout import start_rollout_worker
from rl.config import TrainConfig
from rl.orchestrator import EvalResult, evaluate, rollout_round_robin
from rollout.engine import SamplingParams
from rollout.trajectory import Trajectory


class EngineWorkers:
    """Rollout workers driving an existing engine actor; answers `rollout` like `RolloutCluster`."""

    def __init__(self, engine, tokenizer_path: str, cfg: TrainConfig, sampling: SamplingParams) -> None:
        self.workers = [start_rollout_worker(engine, tokenizer_path, cfg) for _ in range(cfg.rollout.num_workers)]
        self.sampling = sampling

    def rollout(self, tasks: list[Task], rollout_ids: list[str],
                sampling: SamplingParams | None = None) -> list[Trajectory]:
        return rollout_round_robin(self.workers, tasks, rollout_ids, sampling or self.sampling)

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)


@dataclass
class DomainEval:
    result: EvalResult
    reverse_kl: float    # sampled per-token reverse KL(π_student‖π_expert) on these held-out episodes


def evaluate_domains(cluster, heldout: dict[str, list[Task]], samples_per_task: int, tag: str,
                     teachers: TeacherPool | None) -> dict[str, DomainEval]:
    """Pass rate per domain on its held-out tasks; with `teachers`, also the student's reverse KL to
    each domain's expert on the same episodes (log μ − log π_T over action tokens, μ = the engine's
    behaviour log-probs, i.e. the evaluated policy at the rollout temperature)."""
    out = {}
    for domain, tasks in sorted(heldout.items()):
        result = evaluate(cluster, tasks, samples_per_task, f"{tag}-{domain}")
        kl = float("nan")
        if teachers is not None:
            jobs = [t for t in tasks for _ in range(samples_per_task)]
            scored = teachers.score(jobs, result.trajectories)
            num = den = 0.0
            for s in scored:
                for seg, t_lp in zip(s.trajectory.segments, s.teacher_logprobs):
                    for m, mu, t in zip(seg.loss_mask[1:], seg.behavior_logprobs[1:], t_lp[1:]):
                        if m:
                            num, den = num + (mu - t), den + 1
            kl = num / den if den else float("nan")
        out[domain] = DomainEval(result, kl)
    return out
