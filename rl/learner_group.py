"""A data-parallel learner: N Ray actors, one DeepSpeed rank each, training policy and critic together.

``cluster.learner_ranks = 0`` (the one-machine default) keeps the learner in the driver process, a
world of one. With ``N >= 1`` ranks the learner is a :class:`LearnerGroup` of ``N`` :class:`LearnerRank`
actors that form one torch.distributed world (NCCL on GPUs, gloo on CPUs), each on its own bundle of
the run's placement group when ``cluster.learner_gpus`` > 0 (rl/placement.py). The driver sees the
same interface either way (:func:`build_learner`): ``train_step``, ``state_dict``, ``save_checkpoint``,
``load_checkpoint``.

One step: the driver splits the batch by rollout (every segment of a rollout on the same rank, since
GAE runs across a rollout's segments), balancing action tokens; each rank computes values, advantages
and the losses on its shard, with the token-mean's N and the advantage whitening's moments taken
over the global batch (all-reduced), and DeepSpeed averages the gradients, so the update equals the
one a single rank would make on the whole batch (tested on CPU against the in-process learner).
The critic trains on the learner's ranks (``cluster.critic_gpus`` > 0 is refused by :func:`build_learner`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from rl.batch import SampleBatch
from rl.checkpoint import ResumeState, load_checkpoint, save_checkpoint
from rl.config import AlgoConfig, DeepSpeedConfig, TrainConfig
from rl.learner import CriticLearner, PolicyLearner, PPOLearner, free_port, init_distributed, policy_decay_steps
from rl.placement import Placement

# metrics each rank reports as its share of a global sum (token-weighted with the global N, or counts);
# the rest (gradient norms, equal on all ranks; explained variance of the shard) are averaged
SUMMED_METRICS = frozenset({
    "policy/loss", "policy/entropy", "policy/masked_fraction", "policy/mismatch_kl", "policy/ratio_mean",
    "policy/clipfrac", "policy/kl_ref", "policy/forward_kl", "critic/loss", "critic/clipfrac", "train/action_tokens", "train/samples",
    "sft/nll"})


@dataclass(frozen=True)
class LearnerSpec:
    """What every rank builds: the policy and critic from `policy_path`, the KL reference."""

    policy_path: str
    reference: str | None
    algo: AlgoConfig
    deepspeed: DeepSpeedConfig
    temperature: float
    threads: int
    seed: int
    policy_decay_steps: int = 0    # rl.learner.policy_decay_steps of the run


def build_ppo_learner(spec: LearnerSpec) -> PPOLearner:
    """The policy and critic DeepSpeed engines of one rank (the process group must exist)."""
    path = Path(spec.policy_path)
    policy = PolicyLearner(path, spec.algo.policy_lr, spec.algo, spec.deepspeed, spec.temperature,
                           reference=Path(spec.reference) if spec.reference else None,
                           decay_steps=spec.policy_decay_steps, min_lr_ratio=spec.algo.policy_min_lr_ratio)
    return PPOLearner(policy, CriticLearner(path, spec.algo, spec.deepspeed), spec.algo)


class LearnerRank:
    """One data-parallel rank (a Ray actor): joins the learner's process group, then builds its engines."""

    def __init__(self, spec: LearnerSpec, rank: int, world_size: int, master_addr: str, master_port: int) -> None:
        torch.set_num_threads(spec.threads)
        torch.manual_seed(spec.seed)
        ds = DeepSpeedConfig(zero_stage=spec.deepspeed.zero_stage, bf16=spec.deepspeed.bf16, master_port=master_port)
        # Ray gives an actor on a GPU bundle exactly that GPU (CUDA_VISIBLE_DEVICES): it is device 0 here
        init_distributed(ds, rank, world_size, master_addr, local_rank=0)
        self.rank = rank
        self.learner = build_ppo_learner(spec)

    def train_step(self, shard: SampleBatch) -> dict:
        return self.learner.train_step(shard)

    def state_dict(self) -> dict | None:
        """Every rank takes part in gathering ZeRO-3 partitions; rank 0 returns the weights."""
        state = self.learner.policy.state_dict()
        return state if self.rank == 0 else None

    def save_checkpoint(self, root: str, step: int, sampler, version: int, metrics_history: list[dict], extra: dict,
                        keep: int, tokenizer) -> str:
        with self.learner.onloaded():
            return str(save_checkpoint(Path(root), step, self.learner, sampler, version, metrics_history, extra, keep,
                                       tokenizer))

    def load_checkpoint(self, path: str, sampler) -> tuple[ResumeState, dict]:
        with self.learner.onloaded():
            state = load_checkpoint(Path(path), self.learner, sampler)
        return state, sampler.state()

    def offload(self) -> None:
        self.learner.offload()

    def steps_done(self) -> int:
        return self.learner.steps_done


def shard_by_rollout(batch: SampleBatch, world_size: int) -> list[SampleBatch]:
    """`batch` split into `world_size` shards of whole rollouts, balancing action tokens (largest
    rollout first onto the lightest shard)."""
    rollouts = batch.rollout_index.unique().tolist()
    if len(rollouts) < world_size:
        raise ValueError(f"a batch of {len(rollouts)} rollouts cannot feed {world_size} learner ranks; "
                         f"raise rollout.episodes_per_step to at least cluster.learner_ranks")
    tokens = {r: float(batch.action_mask[batch.rollout_index == r].sum()) for r in rollouts}
    loads, members = [0.0] * world_size, [[] for _ in range(world_size)]
    for r in sorted(rollouts, key=lambda r: -tokens[r]):
        k = min(range(world_size), key=lambda i: loads[i])
        loads[k] += tokens[r]
        members[k].append(r)
    rank_of = {r: k for k, rs in enumerate(members) for r in rs}
    rows: list[list[int]] = [[] for _ in range(world_size)]
    for i, r in enumerate(batch.rollout_index.tolist()):
        rows[rank_of[r]].append(i)
    return [batch.rows(idx) for idx in rows]


def merge_metrics(per_rank: list[dict]) -> dict:
    """The global step's metrics from the ranks' (see :data:`SUMMED_METRICS`)."""
    merged = {}
    for key in per_rank[0]:
        values = [m[key] for m in per_rank]
        merged[key] = sum(values) if key in SUMMED_METRICS else sum(values) / len(values)
    return merged


class LearnerGroup:
    """`world_size` :class:`LearnerRank` actors behind the in-process learner's interface."""

    def __init__(self, spec: LearnerSpec, world_size: int, placement: Placement | None = None) -> None:
        """`placement`: rank r on the learner's bundle r (GPU runs); None: CPU actors on this node."""
        if world_size < 1:
            raise ValueError(f"a learner group needs at least one rank, got {world_size}")
        if placement is not None and len(placement.plan.learner) != world_size:
            raise ValueError(f"the placement has {len(placement.plan.learner)} learner bundles for {world_size} ranks")
        master_addr = (ray.util.get_node_ip_address() if placement is None
                       else placement.bundle_node(placement.plan.learner[0]))
        port = free_port()
        actor = ray.remote(LearnerRank)
        self.ranks = []
        for rank in range(world_size):
            options = placement.learner_options(rank) if placement is not None else {"num_cpus": 0}
            self.ranks.append(actor.options(**options).remote(spec, rank, world_size, master_addr, port))
        self.world_size = world_size
        ray.get([r.steps_done.remote() for r in self.ranks])  # every rank built (or its error raised here)

    @property
    def steps_done(self) -> int:
        return ray.get(self.ranks[0].steps_done.remote())

    def train_step(self, batch: SampleBatch) -> dict:
        shards = shard_by_rollout(batch, self.world_size)
        return merge_metrics(ray.get([r.train_step.remote(s) for r, s in zip(self.ranks, shards)]))

    def state_dict(self) -> dict:
        return ray.get([r.state_dict.remote() for r in self.ranks])[0]

    def save_checkpoint(self, root: Path, step: int, sampler, version: int, metrics_history: list[dict],
                        extra: dict, keep: int, tokenizer=None) -> Path:
        paths = ray.get([r.save_checkpoint.remote(str(root), step, sampler, version, metrics_history, extra, keep,
                                                  tokenizer) for r in self.ranks])
        return Path(paths[0])

    def load_checkpoint(self, path: Path, sampler) -> ResumeState:
        results = ray.get([r.load_checkpoint.remote(str(path), sampler) for r in self.ranks])
        state, sampler_state = results[0]
        sampler.load_state(sampler_state)
        return state

    def offload(self) -> None:
        """Colocated training: every rank's states off its GPU (the next train_step brings them back)."""
        ray.get([r.offload.remote() for r in self.ranks])

    def shutdown(self) -> None:
        for r in self.ranks:
            ray.kill(r)


class LocalLearner:
    """The in-process learner (one rank, the driver's process) behind the same interface."""

    def __init__(self, spec: LearnerSpec) -> None:
        self.learner = build_ppo_learner(spec)

    @property
    def steps_done(self) -> int:
        return self.learner.steps_done

    def train_step(self, batch: SampleBatch) -> dict:
        return self.learner.train_step(batch)

    def state_dict(self) -> dict:
        return self.learner.policy.state_dict()

    def save_checkpoint(self, root: Path, step: int, sampler, version: int, metrics_history: list[dict],
                        extra: dict, keep: int, tokenizer=None) -> Path:
        with self.learner.onloaded():
            return save_checkpoint(root, step, self.learner, sampler, version, metrics_history, extra, keep, tokenizer)

    def load_checkpoint(self, path: Path, sampler) -> ResumeState:
        with self.learner.onloaded():
            return load_checkpoint(path, self.learner, sampler)

    def offload(self) -> None:
        """Colocated training: the states off the GPU (the next train_step brings them back)."""
        self.learner.offload()

    def shutdown(self) -> None:
        pass


def build_learner(policy_path: Path, cfg: TrainConfig, reference: Path | None,
                  placement: Placement | None = None) -> LocalLearner | LearnerGroup:
    """The run's learner: in the driver process (``cluster.dp_ranks == 0``), or a data-parallel group
    of Ray actors, on the learner's bundles of `placement` when ``cluster.learner_gpus`` > 0."""
    c = cfg.cluster
    policy_batches = max(0, cfg.steps - cfg.algo.critic_warmup_steps)   # the critic's warm-up steps take no policy step
    spec = LearnerSpec(str(policy_path), str(reference) if reference else None, cfg.algo, cfg.deepspeed,
                       cfg.sampling.temperature, cfg.learner_threads, cfg.seed,
                       policy_decay_steps(cfg.algo, policy_batches))
    if c.dp_ranks == 0:
        return LocalLearner(spec)
    if c.critic_gpus:
        raise ValueError("cluster.critic_gpus > 0 (the critic on GPUs of its own) is not supported by the learner "
                         "group: the critic trains on the learner's ranks; set cluster.critic_gpus=0")
    return LearnerGroup(spec, c.dp_ranks, placement if c.learner_gpus else None)
