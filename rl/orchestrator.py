"""Ray placement of the engine and rollout workers, rollouts, evaluation and weight pushes.

The synchronous orchestrator runs: rollout -> train -> push weights -> repeat. The engine is an
async Ray actor with dynamic batching; rollout workers are async Ray actors that each run many
episodes at once. ``cluster.address`` joins an existing cluster with the same code (:func:`rl.placement.init_ray`).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import ray

from envs.tasks import Task
from rl.config import EvalConfig, TrainConfig
from rl.placement import Placement, init_ray, reserve_placement
from rollout.chat import stop_token_ids
from rollout.engine import SamplingParams
from rollout.hf_engine import HFEngineActor
from rollout.sglang_engine import SGLangEngine
from rollout.trajectory import Trajectory
from rollout.worker import RolloutWorker


def sampling_params(cfg: TrainConfig, tokenizer) -> SamplingParams:
    s = cfg.sampling
    return SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                          max_new_tokens=s.max_new_tokens, stop_token_ids=stop_token_ids(tokenizer))


def start_engine(policy_path: str, tokenizer, cfg: TrainConfig, placement: Placement | None = None):
    """The policy engine as a Ray actor: `hf` (in-process transformers; with ``engine.device=cuda`` on
    engine 0's bundle of `placement`, or on any free GPU without one) or `sglang` (servers)."""
    if cfg.engine.type == "sglang":
        sg = dataclasses.replace(cfg.sglang, model_path=cfg.sglang.model_path or policy_path,
                                 memory_saver=cfg.sglang.memory_saver or cfg.cluster.offload_between_phases)
        gpu_ids = placement.engine_gpu_ids() if placement is not None and placement.plan.engines[0] else None
        where = placement.engine_options(0) if gpu_ids is not None else {"num_cpus": 0}
        if gpu_ids is not None:
            where["num_gpus"] = 0.01   # the launcher sits on engine 0's node; its servers get the bundles' GPUs
        engine = ray.remote(SGLangEngine).options(**where, max_concurrency=10_000).remote(sg)
        ray.get(engine.start.remote(gpu_ids))
        return engine
    e = cfg.engine
    where = (placement.engine_options(0) if placement is not None and e.device == "cuda"
             else {"num_cpus": 0, "num_gpus": 1 if e.device == "cuda" else 0})
    return ray.remote(HFEngineActor).options(**where, max_concurrency=10_000).remote(
        policy_path, tokenizer.pad_token_id, cfg.seed, e.num_threads, e.max_batch, e.batch_wait_s, e.device, e.dtype)


def engine_gpus(cfg: TrainConfig) -> tuple[int, int]:
    """(engines, GPUs per engine) the placement group reserves: ``sglang.num_engines`` x ``tp_size``
    for servers horizonrl launches (none for ``sglang.urls``, servers someone else runs), one for the
    `hf` engine with ``engine.device=cuda``, else none."""
    if cfg.engine.type == "sglang":
        return cfg.sglang.num_engines, 0 if cfg.sglang.urls else cfg.sglang.tp_size
    return 1, 1 if cfg.engine.device == "cuda" else 0


class RolloutCluster:
    """One policy engine actor and `rollout.num_workers` rollout workers; on GPUs, the run's placement
    group (``self.placement``, shared with the learner group: rl/learner_group.py)."""

    def __init__(self, policy_path: str, tokenizer, cfg: TrainConfig, audit_path: str | None = None,
                 run_name: str = "") -> None:
        init_ray(cfg.cluster, local_num_cpus=max(2, cfg.rollout.num_workers + 1))
        self.audit_path, self.run_name = audit_path, run_name   # replacement workers audit to the same place
        self.placement = reserve_placement(cfg.cluster, *engine_gpus(cfg))
        self.engine = start_engine(policy_path, tokenizer, cfg, self.placement)
        self.workers = [
            ray.remote(RolloutWorker).options(num_cpus=0, max_concurrency=10_000).remote(
                self.engine, policy_path, cfg.agent, cfg.env, cfg.rollout.max_concurrent_per_worker, cfg.antihack,
                audit_path, run_name)
            for _ in range(cfg.rollout.num_workers)
        ]
        ray.get([w.ping.remote() for w in self.workers])
        self.sampling = sampling_params(cfg, tokenizer)
        self.version = 0

    def rollout(self, tasks: list[Task], rollout_ids: list[str],
                sampling: SamplingParams | None = None) -> list[Trajectory]:
        """Run one episode per task, spread round-robin over the workers; returns in input order.
        `sampling` defaults to the run's training settings."""
        return rollout_round_robin(self.workers, tasks, rollout_ids, sampling or self.sampling)

    def push_weights(self, state: dict, version: int) -> None:
        """New weights to the engine (one that released its memory takes it back first)."""
        ray.get(self.engine.update_weights.remote(ray.put(state), version))
        self.version = version

    def release_memory(self) -> None:
        """Colocated training: the engine's GPU memory back to the learner until the next push."""
        ray.get(self.engine.release_memory.remote())

    def shutdown(self) -> None:
        ray.wait([w.close.remote() for w in self.workers], num_returns=len(self.workers), timeout=60)
        for actor in [*self.workers, self.engine]:
            ray.kill(actor)
        if self.placement is not None:
            self.placement.release()


@dataclass
class EvalResult:
    pass_rate: float
    episodes: int
    per_family: dict[str, float]
    trajectories: list[Trajectory] = field(repr=False, default_factory=list)
    hack: dict = field(default_factory=dict)   # hack_metrics of the evaluation episodes
    decoding: str = "sampled"                  # "sampled" (the training settings) | "greedy"
    sampled: EvalResult | None = None          # greedy evaluations: the sampled figure beside it, if asked for


def evaluate(cluster: RolloutCluster, tasks: list[Task], samples_per_task: int, tag: str,
             sampling: SamplingParams | None = None) -> EvalResult:
    """Held-out pass rate, `samples_per_task` episodes per task, with `sampling` (default: the
    training sampling settings)."""
    jobs = [t for t in tasks for _ in range(samples_per_task)]
    ids = [f"eval-{tag}-{t.task_id}-{k % samples_per_task}" for k, t in enumerate(jobs)]
    params = sampling or cluster.sampling
    trajs = cluster.rollout(jobs, ids, params)
    families: dict[str, list[float]] = {}
    for task, traj in zip(jobs, trajs):
        families.setdefault(task.family, []).append(float(traj.passed))
    return EvalResult(pass_rate=sum(t.passed for t in trajs) / len(trajs), episodes=len(trajs),
                      per_family={f: sum(v) / len(v) for f, v in sorted(families.items())}, trajectories=trajs,
                      hack=hack_metrics(trajs), decoding="greedy" if params.top_k == 1 else "sampled")


def evaluate_heldout(cluster: RolloutCluster, tasks: list[Task], settings: EvalConfig, tag: str) -> EvalResult:
    """The run's held-out figure as `eval` configures it: greedy (one episode per task, plus
    `sampled_samples_per_task` sampled ones reported beside it) or sampled with the training settings."""
    if not settings.greedy:
        return evaluate(cluster, tasks, settings.samples_per_task, tag)
    result = evaluate(cluster, tasks, 1, f"{tag}-greedy", cluster.sampling.greedy())
    if settings.sampled_samples_per_task:
        result.sampled = evaluate(cluster, tasks, settings.sampled_samples_per_task, tag)
    return result


class TaskSampler:
    """Training tasks in shuffled epochs; its position is part of a checkpoint."""

    def __init__(self, tasks: list[Task], seed: int) -> None:
        self.tasks, self.seed = tasks, seed
        self.epoch, self.pos = 0, 0
        self.order = self._order()

    def _order(self) -> list[int]:
        order = list(range(len(self.tasks)))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def next_batch(self, n: int) -> list[Task]:
        out = []
        while len(out) < n:
            if self.pos == len(self.order):
                self.epoch, self.pos = self.epoch + 1, 0
                self.order = self._order()
            out.append(self.tasks[self.order[self.pos]])
            self.pos += 1
        return out

    @property
    def drawn(self) -> int:
        """How many tasks have been drawn since the start of the run (resumes count on)."""
        return self.epoch * len(self.tasks) + self.pos

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        """Continue from a position `state()` returned (same tasks and seed): the next batch is the
        one the saved sampler would have drawn."""
        epoch, pos = int(state["epoch"]), int(state["pos"])
        if epoch < 0 or not 0 <= pos <= len(self.tasks):
            raise ValueError(f"sampler position epoch={epoch} pos={pos} is outside 0..{len(self.tasks)} tasks")
        self.epoch, self.pos = epoch, pos
        self.order = self._order()


def hack_metrics(trajectories: list[Trajectory]) -> dict:
    """Anti-hack statistics of a batch (ALGORITHMS.md §6.4), per episode.

    ``flagged`` / ``confirmed`` / ``blocked``: rule hits, hacks the judge confirmed, and calls not
    run, each per episode; ``hack_rate``: the share of episodes with at least one confirmed hack
    (blocked, or only recorded when the guard observes). For tasks with a deliberate leak
    (``Trajectory.honest_passed`` set): ``honest_pass_rate``, passes that survive a replay on the
    leak-free copy, and ``hacked_pass_rate``, passes that do not (reward the leak bought)."""
    n = len(trajectories)
    events = [e for t in trajectories for e in t.hack_events]
    out = {
        "antihack/flagged": len(events) / n,
        "antihack/confirmed": sum(e.get("action") in ("block", "observe") for e in events) / n,
        "antihack/blocked": sum(e.get("action") == "block" for e in events) / n,
        "antihack/hack_rate": sum(any(e.get("action") in ("block", "observe") for e in t.hack_events)
                                  for t in trajectories) / n,
    }
    graded = [t for t in trajectories if t.honest_passed is not None]
    if graded:
        out["leak/honest_pass_rate"] = sum(bool(t.honest_passed) for t in graded) / len(graded)
        out["leak/hacked_pass_rate"] = sum(t.passed and not t.honest_passed for t in graded) / len(graded)
    return out


def rollout_metrics(trajectories: list[Trajectory]) -> dict:
    """Per-step rollout statistics for the console and wandb (with :func:`hack_metrics`)."""
    n = len(trajectories)
    statuses = [t.status.value for t in trajectories]
    return {
        "rollout/reward": sum(t.reward for t in trajectories) / n,
        "rollout/pass_rate": sum(t.passed for t in trajectories) / n,
        "rollout/turns": sum(t.num_turns for t in trajectories) / n,
        "rollout/parse_errors": sum(t.parse_errors for t in trajectories) / n,
        "rollout/action_tokens": sum(t.num_action_tokens for t in trajectories) / n,
        "rollout/segments_per_rollout": sum(len(t.segments) for t in trajectories) / n,
        "rollout/submitted": statuses.count("submitted") / n,
        "rollout/env_errors": statuses.count("env_error") / n,
    } | hack_metrics(trajectories)


def rollout_round_robin(workers: list, tasks: list[Task], rollout_ids: list[str],
                        sampling: SamplingParams) -> list[Trajectory]:
    """One episode per task on rollout-worker actors, tasks dealt round-robin; returns in input order."""
    shards = [list(zip(tasks[i::len(workers)], rollout_ids[i::len(workers)])) for i in range(len(workers))]
    results = ray.get([w.run_episodes.remote(shard, sampling) for w, shard in zip(workers, shards) if shard])
    by_id = {t.rollout_id: t for shard in results for t in shard}
    return [by_id[rid] for rid in rollout_ids]
