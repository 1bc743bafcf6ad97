"""Rollout sources: where the train loop gets its next batch of trajectories.

Both sources answer the same three calls, so the train loop is one loop in both modes::

    batch = source.next_batch(n, learner_version)      # n trajectories + orchestrator metrics
    ... learner step on batch.trajectories ...
    if source.should_push(learner_version + 1):
        source.push_weights(policy_state, learner_version + 1)

* :class:`SyncRolloutSource` (``orchestrator=sync``): start n episodes with the current weights,
  wait for all n. The engine idles while the learner trains.
* :class:`AsyncRolloutSource` (``orchestrator=async``): keep ``buffer_size`` episodes in flight at
  all times (running, or finished and not yet taken). ``next_batch`` takes the first n finished
  ones (oldest submission first), refills the buffer at once from the task sampler and returns,
  so the engine keeps generating while the learner trains on what it got.

Both run every episode as its own Ray call (``RolloutWorker.run_one``) through one
:class:`EpisodePool`, which spreads episodes over the workers (fewest in flight first) and
replaces a worker that died.

Invariants:

* Every rollout id is issued once (``{prefix}-{k}``, k counting up) and is at any time in exactly
  one place: running in the pool, finished and buffered, returned, or dropped as stale. A
  returned id is never returned again.
* Worker death (``RayActorError`` on its refs, e.g. ``ray.kill`` from outside): the pool kills
  what is left of the actor, starts a replacement in the same slot and resubmits every episode
  that was running there (each as its ref fails) under the same rollout id. A resubmitted episode starts again from its
  first token (the dead actor's partial context is gone); it counts as ``requeued``. An episode
  whose worker dies ``max_attempts`` times raises instead of looping forever. An episode that
  fails in its environment is not retried: it comes back with ``Status.ENV_ERROR`` as always.
* Partial rollout: a weight push never waits for episodes. The engine swaps weights between two
  generation batches; the episodes in flight keep every token they have and continue with the
  new weights, each sampled token tagged with the version that sampled it. In async mode the
  push runs in a background thread (one at a time, in order), so the learner does not even wait
  for the engine's current generation batch.
* Staleness (GLM-5, ALGORITHMS.md §4): a trajectory whose oldest sampled token is more than
  ``max_staleness`` versions behind ``learner_version`` is dropped and counted. Its task is *not*
  re-queued (as in slime and GLM-5): the slow episodes are the ones that go stale, and running
  them again would only spend more generation on them; the task comes back in a later epoch of
  the sampler.
* Versions count learner steps: push with ``version = learner steps done``, pass the same count
  as ``learner_version``. With ``push_every = k`` the engine's version then jumps by k per push.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from envs.tasks import Task
from rl.config import AsyncConfig, TrainConfig
from rl.orchestrator import RolloutCluster, TaskSampler
from rollout.trajectory import Trajectory
from rollout.worker import RolloutWorker


@dataclass
class RolloutBatch:
    trajectories: list[Trajectory]
    metrics: dict[str, float]


def start_rollout_worker(engine: ActorHandle, policy_path: str, cfg: TrainConfig, audit_path: str | None = None,
                         run_name: str = "") -> ActorHandle:
    """A rollout worker actor configured like the ones :class:`RolloutCluster` starts (the factory
    the pool uses to replace a dead worker)."""
    worker = ray.remote(RolloutWorker).options(num_cpus=0, max_concurrency=10_000).remote(
        engine, policy_path, cfg.agent, cfg.env, cfg.rollout.max_concurrent_per_worker, cfg.antihack, audit_path,
        run_name)
    ray.get(worker.ping.remote())
    return worker


def staleness(traj: Trajectory, learner_version: int) -> int | None:
    """learner_version - w_0, w_0 = the oldest weight version of any sampled token (None: no sampled token)."""
    oldest = traj.oldest_version()
    return None if oldest is None else learner_version - oldest


@dataclass
class Episode:
    task: Task
    rollout_id: str
    attempts: int = 0        # times it was submitted to a worker


@dataclass
class _Running:
    episode: Episode
    slot: int                # index into cluster.workers
    generation: int          # which actor of that slot runs it (bumped when the slot's worker is replaced)


class EpisodePool:
    """Episodes running on the cluster's rollout workers, one Ray call each.

    Replaces a dead worker in place (``cluster.workers[slot]``, so evaluation and shutdown see
    the replacement) and resubmits the episodes it was running under their rollout ids."""

    def __init__(self, cluster: RolloutCluster, start_worker: Callable[[], ActorHandle], max_attempts: int) -> None:
        self.cluster, self.start_worker, self.max_attempts = cluster, start_worker, max_attempts
        self.running: dict[ray.ObjectRef, _Running] = {}   # in submission order
        self.load = [0] * len(cluster.workers)
        self.generations = [0] * len(cluster.workers)
        self.worker_restarts = 0
        self.requeued = 0

    def __len__(self) -> int:
        return len(self.running)

    def submit(self, episode: Episode) -> None:
        if episode.attempts >= self.max_attempts:
            raise RuntimeError(f"episode {episode.rollout_id} lost its rollout worker {episode.attempts} times; "
                               f"giving up (max_attempts = {self.max_attempts})")
        slot = min(range(len(self.load)), key=self.load.__getitem__)
        ref = self.cluster.workers[slot].run_one.remote(episode.task, episode.rollout_id, self.cluster.sampling)
        episode.attempts += 1
        self.running[ref] = _Running(episode, slot, self.generations[slot])
        self.load[slot] += 1

    def wait(self) -> list[tuple[Episode, Trajectory]]:
        """Block until something finished; return every finished episode, oldest submission first.
        Episodes of a worker found dead are resubmitted (and not returned)."""
        refs = list(self.running)
        if not refs:
            return []
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        if not ready:
            ready, _ = ray.wait(refs, num_returns=1)
        ready_set = set(ready)
        finished = []
        for ref in refs:
            if ref not in ready_set or ref not in self.running:  # gone: resubmitted after its worker died
                continue
            run = self._pop(ref)
            try:
                traj = ray.get(ref)
            except RayActorError:
                self._worker_died(run)
                continue
            if traj.rollout_id != run.episode.rollout_id:
                raise RuntimeError(f"worker returned {traj.rollout_id} for {run.episode.rollout_id}")
            finished.append((run.episode, traj))
        return finished

    def cancel_all(self) -> list[Episode]:
        """Stop every running episode; returns them.

        A worker with episodes still running is killed and replaced: `ray.cancel` on tasks of a
        threaded actor leaves the actor's ordered queue waiting for the cancelled calls, and the
        next call to that worker (the held-out evaluation) would hang."""
        episodes = [run.episode for run in self.running.values()]
        for slot in sorted({run.slot for run in self.running.values()}):
            ray.kill(self.cluster.workers[slot])
            self.cluster.workers[slot] = self.start_worker()
            self.generations[slot] += 1
        self.running.clear()
        self.load = [0] * len(self.load)
        return episodes

    def _pop(self, ref: ray.ObjectRef) -> _Running:
        run = self.running.pop(ref)
        self.load[run.slot] -= 1
        return run

    def _worker_died(self, run: _Running) -> None:
        """The first error from a dead worker replaces it. Its other episodes surface as errors
        too (each is resubmitted then), or with their trajectory if they had finished in time."""
        if run.generation == self.generations[run.slot]:
            ray.kill(self.cluster.workers[run.slot])  # an unreachable actor must not come back and finish twice
            self.cluster.workers[run.slot] = self.start_worker()
            self.generations[run.slot] += 1
            self.worker_restarts += 1
        self.requeued += 1
        self.submit(run.episode)


class _Issuer:
    """New episodes from the task sampler, with rollout ids `{prefix}-{k}`: k is the task's draw
    index in the run (`TaskSampler.drawn`), which a checkpoint restores, so a resumed run goes on
    counting and never reuses a rollout id of the run it resumed (nor its audit rows' ids)."""

    def __init__(self, sampler: TaskSampler, prefix: str) -> None:
        self.sampler, self.prefix, self.start = sampler, prefix, sampler.drawn

    @property
    def issued(self) -> int:
        """Episodes issued by this issuer (since the run or the resume started)."""
        return self.sampler.drawn - self.start

    def new(self, n: int) -> list[Episode]:
        first = self.sampler.drawn
        return [Episode(task, f"{self.prefix}-{first + i}") for i, task in enumerate(self.sampler.next_batch(n))]


def _metrics(trajectories: list[Trajectory], learner_version: int, pool: EpisodePool, dropped: int,
             dropped_total: int, requeued: int, wait_s: float, in_flight: int) -> dict[str, float]:
    ages = [a for t in trajectories if (a := staleness(t, learner_version)) is not None]
    return {
        "orchestrator/dropped_stale": float(dropped),
        "orchestrator/dropped_stale_total": float(dropped_total),
        "orchestrator/requeued": float(requeued),
        "orchestrator/worker_restarts": float(pool.worker_restarts),
        "orchestrator/in_flight": float(in_flight),
        "orchestrator/staleness_mean": sum(ages) / len(ages) if ages else 0.0,
        "orchestrator/staleness_max": float(max(ages, default=0)),
        "orchestrator/wait_s": wait_s,
    }


class SyncRolloutSource:
    """``orchestrator=sync``: each batch is n new episodes run with the current weights."""

    def __init__(self, cluster: RolloutCluster, sampler: TaskSampler, start_worker: Callable[[], ActorHandle],
                 max_attempts: int = 3, id_prefix: str = "train", colocated_learner=None) -> None:
        """`colocated_learner` (``cluster.offload_between_phases``): the learner that shares the engines'
        GPUs; the two take turns: its states leave the GPU for each rollout and each weight push, the
        engines' memory is released after each rollout (the learner's train_step onloads, the push
        resumes the engines)."""
        self.cluster = cluster
        self.colocated_learner = colocated_learner
        self.pool = EpisodePool(cluster, start_worker, max_attempts)
        self.issuer = _Issuer(sampler, id_prefix)

    def next_batch(self, n: int, learner_version: int) -> RolloutBatch:
        t0 = time.perf_counter()
        requeued0 = self.pool.requeued
        episodes = self.issuer.new(n)
        if self.colocated_learner is not None:
            self.colocated_learner.offload()
        for episode in episodes:
            self.pool.submit(episode)
        by_id: dict[str, Trajectory] = {}
        while len(by_id) < n:
            by_id.update((ep.rollout_id, traj) for ep, traj in self.pool.wait())
        trajectories = [by_id[ep.rollout_id] for ep in episodes]
        if self.colocated_learner is not None:
            self.cluster.release_memory()
        return RolloutBatch(trajectories, _metrics(trajectories, learner_version, self.pool, 0, 0,
                                                   self.pool.requeued - requeued0, time.perf_counter() - t0, 0))

    def should_push(self, version: int) -> bool:
        return True

    def push_weights(self, state: dict, version: int) -> None:
        if self.colocated_learner is not None:   # `state` is a host copy: the learner's turn is over
            self.colocated_learner.offload()
        self.cluster.push_weights(state, version)

    def wait_for_push(self) -> None:
        """Pushes are synchronous here; the same call as the async source's."""

    def close(self) -> None:
        self.pool.cancel_all()


class AsyncRolloutSource:
    """``orchestrator=async``: ``buffer_size`` episodes always in flight; see the module docstring."""

    def __init__(self, cluster: RolloutCluster, sampler: TaskSampler, cfg: AsyncConfig,
                 start_worker: Callable[[], ActorHandle], id_prefix: str = "train") -> None:
        self.cluster, self.cfg = cluster, cfg
        self.pool = EpisodePool(cluster, start_worker, cfg.max_attempts)
        self.issuer = _Issuer(sampler, id_prefix)
        self.finished: deque[Trajectory] = deque()   # finished, not yet taken (oldest submission first)
        self.returned: set[str] = set()
        self.dropped_stale = 0
        self.pusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weight-push")
        self.push: Future | None = None

    @property
    def in_flight(self) -> int:
        return len(self.pool) + len(self.finished)

    def running_ids(self) -> list[str]:
        """Rollout ids of the episodes running now, oldest submission first."""
        return [run.episode.rollout_id for run in self.pool.running.values()]

    def start(self) -> None:
        """Fill the buffer (``next_batch`` does it too; call this to start generating earlier)."""
        for episode in self.issuer.new(max(0, self.cfg.buffer_size - self.in_flight)):
            self.pool.submit(episode)

    def next_batch(self, n: int, learner_version: int) -> RolloutBatch:
        """The first n finished trajectories that are fresh enough for `learner_version`."""
        t0 = time.perf_counter()
        requeued0, dropped0 = self.pool.requeued, self.dropped_stale
        out: list[Trajectory] = []
        while len(out) < n:
            self.start()
            if not self.finished:
                self.finished.extend(traj for _, traj in self.pool.wait())
                continue
            traj = self.finished.popleft()
            if traj.rollout_id in self.returned:
                raise RuntimeError(f"rollout {traj.rollout_id} came back twice")
            age = staleness(traj, learner_version)
            if age is not None and age > self.cfg.max_staleness:
                self.dropped_stale += 1
                continue
            self.returned.add(traj.rollout_id)
            out.append(traj)
        wait_s = time.perf_counter() - t0
        self.start()
        return RolloutBatch(out, _metrics(out, learner_version, self.pool, self.dropped_stale - dropped0,
                                          self.dropped_stale, self.pool.requeued - requeued0, wait_s, self.in_flight))

    def should_push(self, version: int) -> bool:
        return version % self.cfg.push_every == 0

    def push_weights(self, state: dict, version: int) -> None:
        """Hand the weights to a background `RolloutCluster.push_weights` and return at once.

        The engine swaps weights between two of its generation batches; the episodes in flight go
        on with the new weights (nothing waits for them). One push at a time: a push first waits
        for the previous one, so versions reach the engine in order. `state` must not be modified
        afterwards (`PolicyLearner.state_dict` returns a copy)."""
        self.wait_for_push()
        self.push = self.pusher.submit(self.cluster.push_weights, state, version)

    def wait_for_push(self) -> None:
        """Block until the last push reached the engine (before evaluating or checkpointing)."""
        if self.push is not None:
            self.push.result()
            self.push = None

    def close(self) -> None:
        """Finish the last push, cancel the episodes in flight (before evaluation or shutdown)."""
        self.wait_for_push()
        self.pusher.shutdown()
        self.pool.cancel_all()
        self.finished.clear()


def rollout_source(cfg: TrainConfig, cluster: RolloutCluster, sampler: TaskSampler, policy_path: str, learner=None):
    """The train loop's source of trajectories: `orchestrator=sync` or `async` (same calls). `learner`
    takes turns with the engines on shared GPUs when ``cluster.offload_between_phases``."""
    def start_worker() -> ActorHandle:
        return start_rollout_worker(cluster.engine, policy_path, cfg, cluster.audit_path, cluster.run_name)

    if cfg.orchestrator == "async":
        source = AsyncRolloutSource(cluster, sampler, cfg.async_rollout, start_worker)
        source.start()
        return source
    return SyncRolloutSource(cluster, sampler, start_worker,
                             colocated_learner=learner if cfg.cluster.offload_between_phases else None)
