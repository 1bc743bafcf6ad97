"""Student rollouts from the domain mixture, each scored by its domain's teacher as soon as it ends.

:class:`DomainMixture` draws the prompts: a domain k with probability w_k / Σ w, then the next task
of that domain's shuffled epoch (ALGORITHMS.md §5, "sample k with mixing weight w_k, then x from D_k").

:class:`ScoredRolloutSource` runs the episodes on the student's rollout workers (one Ray call each,
through `rl.async_rollout.EpisodePool`, which also replaces dead workers). The moment an episode
finishes it goes to its domain's teacher (`TeacherPool.submit`, non-blocking), so teacher prefill
runs while the other episodes of the batch are still generating. `next_batch(n)` returns the first
n episodes that are both finished and scored.

* ``orchestrator=sync``: a batch is n new episodes started with the current weights.
* ``orchestrator=async``: ``async_rollout.buffer_size`` episodes stay in flight; the next batch
  keeps generating (and being scored) while the learner trains. Weight pushes are partial-rollout
  (tokens keep the version that sampled them); a trajectory more than ``max_staleness`` versions
  behind the learner is dropped and counted, as in `rl.async_rollout`.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Callable

import ray
from ray.actor import ActorHandle

from envs.tasks import Task
from opd.teacher import Scored, TeacherPool
from rl.async_rollout import Episode, EpisodePool, staleness
from rl.config import AsyncConfig
from rl.orchestrator import RolloutCluster, TaskSampler


class DomainMixture:
    """Tasks drawn by domain weight, then in shuffled epochs within the domain."""

    def __init__(self, tasks: dict[str, list[Task]], weights: dict[str, float], seed: int) -> None:
        empty = [d for d, ts in tasks.items() if not ts]
        if empty:
            raise ValueError(f"OPD domains with no training tasks: {empty}")
        self.names = sorted(tasks)
        self.weights = [weights[d] for d in self.names]
        self.samplers = {d: TaskSampler(tasks[d], seed) for d in self.names}
        self.rng = random.Random(f"opd-mixture-{seed}")

    def next_batch(self, n: int) -> list[Task]:
        domains = self.rng.choices(self.names, weights=self.weights, k=n)
        return [self.samplers[d].next_batch(1)[0] for d in domains]


class ScoredRolloutSource:
    """See the module docstring."""

    def __init__(self, cluster: RolloutCluster, mixture: DomainMixture, teachers: TeacherPool, mode: str,
                 cfg: AsyncConfig, start_worker: Callable[[], ActorHandle], id_prefix: str = "opd") -> None:
        if mode not in ("sync", "async"):
            raise ValueError(f"orchestrator must be sync or async (got {mode!r})")
        self.cluster, self.mixture, self.teachers, self.mode, self.cfg = cluster, mixture, teachers, mode, cfg
        self.pool = EpisodePool(cluster, start_worker, cfg.max_attempts)
        self.prefix, self.issued = id_prefix, 0
        self.scoring: dict[ray.ObjectRef, tuple[Episode, object, str, str]] = {}   # ref -> (episode, traj, domain, expert)
        self.ready: deque[Scored] = deque()
        self.dropped_stale = 0

    @property
    def in_flight(self) -> int:
        return len(self.pool) + len(self.scoring) + len(self.ready)

    def _issue(self, n: int) -> None:
        for task in self.mixture.next_batch(n):
            self.pool.submit(Episode(task, f"{self.prefix}-{self.issued}"))
            self.issued += 1

    def _collect(self) -> None:
        """Block until an episode or a scoring call finished; hand finished episodes to their teacher,
        move scored ones to `ready`."""
        refs = list(self.pool.running) + list(self.scoring)
        if not refs:
            return
        ray.wait(refs, num_returns=1)
        running = list(self.pool.running)
        if running and ray.wait(running, num_returns=1, timeout=0)[0]:
            for episode, traj in self.pool.wait():
                domain, expert, ref = self.teachers.submit(episode.task, traj)
                self.scoring[ref] = (episode, traj, domain, expert)
        if self.scoring:
            done, _ = ray.wait(list(self.scoring), num_returns=len(self.scoring), timeout=0)
            for ref in sorted(done, key=list(self.scoring).index):   # oldest submission first
                _, traj, domain, expert = self.scoring.pop(ref)
                self.ready.append(Scored.of(traj, domain, expert, ray.get(ref)))

    def next_batch(self, n: int, learner_version: int) -> tuple[list[Scored], dict[str, float]]:
        """The first n finished and scored trajectories fresh enough for `learner_version`."""
        t0 = time.perf_counter()
        dropped0 = self.dropped_stale
        if self.mode == "sync":
            self._issue(n)
        out: list[Scored] = []
        while len(out) < n:
            if self.mode == "async":
                self._issue(max(0, self.cfg.buffer_size - self.in_flight))
            if not self.ready:
                if self.mode == "sync" and not (self.pool.running or self.scoring):
                    self._issue(n - len(out))   # sync: replace what was dropped
                self._collect()
                continue
            item = self.ready.popleft()
            age = staleness(item.trajectory, learner_version)
            if age is not None and age > self.cfg.max_staleness:
                self.dropped_stale += 1
                continue
            out.append(item)
        if self.mode == "async":
            self._issue(max(0, self.cfg.buffer_size - self.in_flight))
        ages = [a for s in out if (a := staleness(s.trajectory, learner_version)) is not None]
        return out, {"orchestrator/wait_s": time.perf_counter() - t0,
                     "orchestrator/dropped_stale": float(self.dropped_stale - dropped0),
                     "orchestrator/in_flight": float(self.in_flight),
                     "orchestrator/staleness_mean": sum(ages) / len(ages) if ages else 0.0,
                     "orchestrator/worker_restarts": float(self.pool.worker_restarts)}

    def close(self) -> None:
        """Stop the episodes in flight (before evaluation or shutdown)."""
        self.pool.cancel_all()
        self.scoring.clear()
        self.ready.clear()
