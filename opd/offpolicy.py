"""Off-policy distillation before OPD (ALGORITHMS.md §5: "Qwen3 used off-policy then on-policy distillation").

With ``opd.offpolicy_samples_per_task`` = m > 0 the run starts with a phase on the experts' own episodes:

1. every expert rolls out m_k = round(m · w_k / min_j w_j) episodes on each training task of its domain
   k (the domains' mixing weights w set the phase's data mix as they set the on-policy batches': with
   equal weights, m each), on the engine that serves it
   as a teacher, through rollout workers like the student's (same agent loop, sandboxes, compaction and
   sampling settings); the experts generate concurrently;
2. each expert scores its own episodes (the same prefill as for the student's: `TeacherPool.score`),
   which gives its top-k tokens and log-probs at every position of its own trajectory;
3. the student takes ``opd.offpolicy_epochs`` shuffled passes over all episodes, `batch_size` episodes
   per optimiser step, minimising the forward KL to the expert's top-k on the expert's states

       L = (1/N) Σ_t Σ_{v ∈ top-k_T(h_t)} p̃_T(v|h_t) (log p̃_T(v|h_t) − log π_θ(v|h_t)),   h_t ~ π_T

   (GKD with student-data fraction λ = 0, i.e. supervised KD on teacher-generated sequences;
   :meth:`rl.learner.PolicyLearner.forward_kl_step`).

With ``opd.offpolicy_replay`` = r > 0 the episodes stay in use: after every on-policy step the student
takes r more steps on them (GKD's mixture of teacher- and student-generated sequences; the student's
own samples are a fraction 1 / (1 + r) of the steps), which keeps it anchored to the experts' behaviour
on the states their episodes show while on-policy distillation corrects the ones the student reaches.

The on-policy phase starts from the student this leaves, where its own samples already land near
the experts' (on-policy distillation corrects the states the student itself reaches, which the experts'
episodes do not show).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from envs.tasks import Task
from opd.config import DomainConfig, ExpertConfig
from opd.evaluation import EngineWorkers
from opd.teacher import Scored, TeacherPool
from rl.batch import trainable
from rl.config import TrainConfig
from rollout.engine import SamplingParams


def offpolicy_samples(domains: list[DomainConfig], samples_per_task: int) -> dict[str, int]:
    """Episodes per training task of each domain: m_k = round(m · w_k / min_j w_j) (at least 1), i.e.
    `samples_per_task` for the lightest domain and proportionally more for heavier ones; {} for m = 0
    (no off-policy phase)."""
    if samples_per_task <= 0:
        return {}
    lightest = min(d.weight for d in domains)
    return {d.name: max(1, round(samples_per_task * d.weight / lightest)) for d in domains}


def expert_episodes(teachers: TeacherPool, experts: list[ExpertConfig], train: dict[str, list[Task]],
                    samples: dict[str, int], cfg: TrainConfig, sampling: SamplingParams) -> list[Scored]:
    """`samples[domain]` episodes of each expert on every training task of its domain, each scored by
    that expert (top-k included); environment crashes are left out. Order: by expert, then task."""

    def run(expert: ExpertConfig) -> tuple[list[Task], list]:
        m = samples[expert.domain]
        jobs = [t for t in train[expert.domain] for _ in range(m)]
        ids = [f"offpolicy-{expert.name}-{t.task_id}-{k % m}" for k, t in enumerate(jobs)]
        workers = EngineWorkers(teachers.engine(expert.name), expert.checkpoint, cfg, sampling)
        try:
            return jobs, workers.rollout(jobs, ids, sampling)
        finally:
            workers.shutdown()

    with ThreadPoolExecutor(max_workers=len(experts)) as pool:
        rolled = list(pool.map(run, experts))
    tasks = [t for jobs, _ in rolled for t in jobs]
    trajectories = [tr for _, trajs in rolled for tr in trajs]
    keep = {t.rollout_id for t in trainable(trajectories)}
    kept = [(task, tr) for task, tr in zip(tasks, trajectories) if tr.rollout_id in keep]
    return teachers.score([task for task, _ in kept], [tr for _, tr in kept])


def offpolicy_batches(episodes: list[Scored], batch_size: int, epochs: int, seed: int) -> list[list[Scored]]:
    """`epochs` passes over `episodes`, each shuffled anew and cut into batches of `batch_size`
    (a pass's last, smaller batch is kept)."""
    if batch_size < 1:
        raise ValueError(f"off-policy batch size must be >= 1 (got {batch_size})")
    rng = random.Random(f"opd-offpolicy-{seed}")
    out = []
    for _ in range(epochs):
        order = list(episodes)
        rng.shuffle(order)
        out += [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return out


def replay_batches(episodes: list[Scored], batch_size: int, seed: int) -> Iterator[list[Scored]]:
    """Batches of the experts' episodes without end (shuffled passes, as :func:`offpolicy_batches`),
    for ``opd.offpolicy_replay``: off-policy steps interleaved with the on-policy ones."""
    for epoch in itertools.count():
        yield from offpolicy_batches(episodes, batch_size, 1, seed + 1 + epoch)


def offpolicy_step_count(train: dict[str, list[Task]], samples: dict[str, int], epochs: int, batch_size: int) -> int:
    """The optimiser steps the phase takes at most (all episodes trainable), for the lr schedule."""
    episodes = sum(len(tasks) * samples[domain] for domain, tasks in train.items())
    return epochs * -(-episodes // batch_size)
