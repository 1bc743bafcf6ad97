"""The typed configuration schema of a training run (Hydra structured configs).

Every YAML file under ``configs/`` is merged onto these dataclasses, so an unknown key or a value
of the wrong type fails at start with a message naming the key. Defaults follow DESIGN.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from antihack.guard import GuardConfig
from rollout.agent import AgentConfig
from rollout.sglang_engine import SGLangConfig
from rollout.worker import EnvConfig


@dataclass
class ModelConfig:
    """The policy. `path` is a local Hugging Face checkpoint; empty = build the default from this config."""

    path: Optional[str] = None
    arch: str = "qwen2"                # qwen2 | llama
    vocab_size: int = 2048             # of the BPE tokenizer built from the task suite
    hidden_size: int = 256
    intermediate_size: int = 688
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 2048


@dataclass
class EngineConfig:
    type: str = "hf"                   # hf (transformers in a Ray actor) | sglang (servers, see `sglang`)
    num_threads: int = 2
    max_batch: int = 64
    batch_wait_s: float = 0.005
    device: str = "cpu"                # hf: cpu | cuda (the actor then asks Ray for one GPU)
    dtype: str = "float32"             # hf: float32 | bfloat16 | float16


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 96


@dataclass
class SuiteConfig:
    name: str = "builtin"
    seed: int = 0
    families: list[str] = field(default_factory=list)   # empty = all families
    exploit_demo_fraction: float = 0.0   # name=leaky only: share of tasks whose warm-start demo is the exploit


@dataclass
class RolloutConfig:
    num_workers: int = 2
    max_concurrent_per_worker: int = 32
    episodes_per_step: int = 64


def check_lr_decay(decay_key: str, decay: str, ratio_key: str, ratio: float) -> None:
    """A learning-rate schedule setting: 'constant' or 'cosine', and a floor ratio in [0, 1]."""
    if decay not in ("constant", "cosine"):
        raise ValueError(f"{decay_key} must be 'constant' or 'cosine', got {decay!r}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{ratio_key} must be in [0, 1], got {ratio}")


@dataclass
class SFTConfig:
    enabled: bool = True
    steps: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 5
    # The share of the training tasks whose demonstrations make the warm start; RL then samples only
    # the other tasks, so it practises on problems the policy has not memorised (1.0 = all, shared).
    task_fraction: float = 1.0
    # A noisy demonstrator: the share of demonstrations whose fix is right; the rest write a plausible
    # wrong fix (envs.solver.perturbed_solution) and are kept unfiltered, as a weaker model's traces
    # would be. Below 1 the warm start knows where and how to edit but not reliably which edit.
    demo_accuracy: float = 1.0
    # The share of demonstrations that write their fix with the line's indentation; the rest (drawn
    # independently of demo_accuracy) write it flush left, so the file no longer parses and the grade
    # fails, and are kept unfiltered: a weaker agent's edit habit that only the reward can correct.
    demo_indent_kept: float = 1.0
    # The share of demonstrations (drawn independently) whose first edit misremembers the line, gets
    # the tool's "not found, closest line" answer, and is made again with that line: the recovery a
    # policy can use when its own recall of a line is off.
    demo_retry: float = 0.0
    # The learning rate after the warm-up: "constant", or "cosine" decay to lr x min_lr_ratio by the
    # last step (rl.learner.warmup_cosine_lr_factor).
    lr_decay: str = "constant"
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        check_lr_decay("sft.lr_decay", self.lr_decay, "sft.min_lr_ratio", self.min_lr_ratio)
        if not 0.0 < self.task_fraction <= 1.0:
            raise ValueError(f"sft.task_fraction must be in (0, 1], got {self.task_fraction}")
        if not 0.0 <= self.demo_accuracy <= 1.0:
            raise ValueError(f"sft.demo_accuracy must be in [0, 1], got {self.demo_accuracy}")
        if not 0.0 <= self.demo_indent_kept <= 1.0:
            raise ValueError(f"sft.demo_indent_kept must be in [0, 1], got {self.demo_indent_kept}")
        if not 0.0 <= self.demo_retry <= 1.0:
            raise ValueError(f"sft.demo_retry must be in [0, 1], got {self.demo_retry}")


@dataclass
class AlgoConfig:
    """Critic PPO (ALGORITHMS.md §2): skip-observation GAE, clipped value loss, DIS policy loss."""

    gamma: float = 1.0
    lam_critic: float = 1.0
    lam_policy: Optional[float] = None          # None = length-adaptive 1 - 1/(alpha * L)
    lam_policy_alpha: float = 1.5
    gae_mode: str = "crl"                       # crl | boot (across compacted segments)
    critic_updates: int = 2
    critic_warmup_steps: int = 2
    value_clip: Optional[float] = 0.2
    dis_low: float = 0.2                        # keep tokens with dis_low < pi/mu < dis_high
    dis_high: float = 4.0
    tis_cap: Optional[float] = None
    whiten_advantages: bool = True
    whiten_std_floor: float = 0.1              # never scale advantages up by more than 1/floor
    policy_lr: float = 3e-4
    critic_lr: float = 3e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch_tokens: int = 8192
    pack_sequences: bool = False                # micro-batches as one packed row each (no padding computed)
    attn_implementation: Optional[str] = None   # learner models: None (transformers' default, sdpa) | eager | sdpa |
    #                                             flash_attention_2 (variable-length packed rows on GPUs) | ...
    policy_loss: str = "dis"                    # dis (one step against the behaviour policy) | ppo_clip
    clip_low: float = 0.2                       # ppo_clip: r_t = pi/pi_old clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = 0.28
    policy_updates: int = 1                     # optimiser steps per batch, each over the whole batch (epochs)
    policy_mini_batches: int = 1                # each epoch: this many optimiser steps, on interleaved slices of the batch
    kl_coef: float = 0.0                        # > 0: + kl_coef * KL(pi_theta || pi_ref) (k3), pi_ref = the policy RL started from
    policy_lr_decay: str = "constant"           # constant | cosine: policy_lr decays to policy_lr x policy_min_lr_ratio
    policy_min_lr_ratio: float = 0.1            #   by the run's last policy step (rl.learner.warmup_cosine_lr_factor)

    def __post_init__(self) -> None:
        check_lr_decay("algo.policy_lr_decay", self.policy_lr_decay, "algo.policy_min_lr_ratio",
                       self.policy_min_lr_ratio)
        if self.policy_updates < 1 or self.policy_mini_batches < 1:
            raise ValueError(f"algo.policy_updates and algo.policy_mini_batches must be >= 1 (got "
                             f"{self.policy_updates}, {self.policy_mini_batches})")


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 0
    bf16: bool = False
    master_port: int = 0               # 0 = a free port
    offload_optimizer: bool = False    # ZeRO >= 1: optimiser states (and the step) in CPU memory
    offload_params: bool = False       # ZeRO-3: parameters in CPU memory between uses

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"deepspeed.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("deepspeed.offload_optimizer needs deepspeed.zero_stage >= 1")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("deepspeed.offload_params needs deepspeed.zero_stage = 3")


@dataclass
class EvalConfig:
    """The held-out pass rate before and after RL (the same settings both times)."""

    samples_per_task: int = 2
    max_tasks: int = 0                 # 0 = every held-out task
    # Decode the held-out episodes greedily (argmax, as verl's validation does by default) instead of
    # with the training sampling settings: the figure is then the policy's most likely behaviour and
    # carries no sampling noise, so one episode per task is all there is.
    greedy: bool = False
    # With greedy: also this many episodes per task at the training sampling settings, reported
    # beside the greedy figure (summary.json: heldout_sampled_*). 0 = none.
    sampled_samples_per_task: int = 0

    def __post_init__(self) -> None:
        if self.samples_per_task < 1 or self.max_tasks < 0 or self.sampled_samples_per_task < 0:
            raise ValueError(f"eval: samples_per_task >= 1, max_tasks >= 0 and sampled_samples_per_task >= 0 "
                             f"are required (got {self})")
        if self.greedy and self.samples_per_task != 1:
            raise ValueError(f"eval.greedy decodes deterministically: eval.samples_per_task must be 1 "
                             f"(got {self.samples_per_task})")
        if self.sampled_samples_per_task and not self.greedy:
            raise ValueError("eval.sampled_samples_per_task is the sampled figure beside a greedy one: "
                             "it needs eval.greedy=true (without it, eval.samples_per_task sets the sampled episodes)")


@dataclass
class AsyncConfig:
    """The asynchronous orchestrator (``orchestrator=async``)."""

    buffer_size: int = 128   # episodes in flight at all times (running + finished, not yet taken); all of them
    #                          keep generating while the learner trains. 2x the episodes per step hid the rollout
    #                          time in `horizonrl-bench async`; more adds staleness
    max_staleness: int = 4   # drop a trajectory whose oldest token is more than this many versions behind
    push_every: int = 1      # push the policy's weights to the engines every this many learner steps
    max_attempts: int = 3    # runs of one episode whose worker died before the source gives up

    def __post_init__(self) -> None:
        if self.buffer_size < 1 or self.max_staleness < 0 or self.push_every < 1 or self.max_attempts < 1:
            raise ValueError(f"async: buffer_size >= 1, max_staleness >= 0, push_every >= 1 and max_attempts >= 1 "
                             f"are required (got {self})")


@dataclass
class CheckpointConfig:
    every: int = 0                     # save every N steps (0 = only at the end); see rl/checkpoint.py
    keep: int = 2                      # complete checkpoints kept


@dataclass
class ClusterConfig:
    """The Ray cluster and the GPU placement of learner, critic and engines (see rl/placement.py)."""

    address: str = ""                  # empty = start a local Ray; "auto" | "host:6379" | "ray://host:10001" joins one
    placement: str = "colocated"       # colocated (roles share GPUs, take turns) | disaggregated (separate GPUs)
    learner_gpus: int = 0              # 0 = the learner runs on the CPU (no GPU bundles for it)
    learner_ranks: int = 0             # data-parallel learner ranks as Ray actors (rl/learner_group.py), one per GPU
    #                                    with learner_gpus > 0; 0 = learner_gpus of them, or on the CPU the learner in
    #                                    the driver process
    critic_gpus: int = 0               # disaggregated: the critic's own GPUs (0 = on the learner's)
    offload_between_phases: bool = False  # colocated + sync: engines release GPU memory while the learner trains,
    #                                       the learner offloads its states while the engines generate
    ready_timeout_s: float = 300.0     # how long to wait for the cluster to hold the placement group

    def __post_init__(self) -> None:
        if self.learner_gpus < 0 or self.critic_gpus < 0 or self.learner_ranks < 0 or self.ready_timeout_s <= 0:
            raise ValueError(f"cluster: learner_gpus, critic_gpus, learner_ranks >= 0 and ready_timeout_s > 0 are "
                             f"required (got {self})")
        if self.learner_gpus and self.learner_ranks not in (0, self.learner_gpus):
            raise ValueError(f"cluster.learner_ranks = {self.learner_ranks} must equal cluster.learner_gpus = "
                             f"{self.learner_gpus}: the learner runs one data-parallel rank per GPU")
        if self.placement not in ("colocated", "disaggregated"):
            raise ValueError(f"cluster.placement must be colocated or disaggregated (got {self.placement!r})")
        if self.critic_gpus and self.placement == "colocated":
            raise ValueError("cluster.critic_gpus is for placement=disaggregated; colocated, the critic shares "
                             "the learner's GPUs")

    @property
    def dp_ranks(self) -> int:
        """Learner ranks as Ray actors: 0 means the learner runs in the driver process."""
        return self.learner_ranks or self.learner_gpus


@dataclass
class LoggingConfig:
    wandb_mode: str = "offline"        # offline | online | disabled
    wandb_project: str = "horizonrl"
    console: bool = True


@dataclass
class RunConfig:
    """What a training run and a distillation run (``opd.config.DistillConfig``) share: the rollout
    machinery (engine, environment, agent loop, sampling, workers, the anti-hack guard) and the
    policy learner."""

    experiment: str = "cpu_demo"
    seed: int = 0
    steps: int = 30
    orchestrator: str = "sync"
    learner_threads: int = 2
    engine: EngineConfig = field(default_factory=EngineConfig)
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    async_rollout: AsyncConfig = field(default_factory=AsyncConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    antihack: GuardConfig = field(default_factory=GuardConfig)


@dataclass
class TrainConfig(RunConfig):
    resume: Optional[str] = None       # a checkpoint dir (or a checkpoints root with `latest`) to continue from
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sglang: SGLangConfig = field(default_factory=SGLangConfig)
    requires: list[str] = field(default_factory=list)   # keys a preset needs set on the command line

    def __post_init__(self) -> None:
        if self.rollout.episodes_per_step < self.algo.policy_mini_batches:
            raise ValueError(f"algo.policy_mini_batches = {self.algo.policy_mini_batches} needs rollout.episodes_per_step "
                             f">= it (got {self.rollout.episodes_per_step})")
        # an episode holds its own container and, while grading, the grader's: a smaller pool can deadlock
        if self.env.backend == "docker" and self.env.docker.max_live < 2 * self.rollout.max_concurrent_per_worker:
            raise ValueError(f"env.docker.max_live = {self.env.docker.max_live} must be at least 2 x "
                             f"rollout.max_concurrent_per_worker = {2 * self.rollout.max_concurrent_per_worker} "
                             f"(each episode holds a container, and a second one while it is graded)")
        if self.cluster.offload_between_phases:
            if self.cluster.placement != "colocated" or self.orchestrator != "sync":
                raise ValueError(f"cluster.offload_between_phases takes turns on shared GPUs: it needs "
                                 f"cluster.placement=colocated and orchestrator=sync (got {self.cluster.placement}, "
                                 f"{self.orchestrator})")
            if self.deepspeed.zero_stage == 0:
                raise ValueError("cluster.offload_between_phases needs deepspeed.zero_stage >= 1 (ZeRO-0 has no "
                                 "states DeepSpeed can move off the GPU)")


CHOICES = {
    "model.arch": ("qwen2", "llama"),
    "engine.type": ("hf", "sglang"),
    "engine.device": ("cpu", "cuda"),
    "algo.attn_implementation": (None, "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"),
    "engine.dtype": ("float32", "bfloat16", "float16"),
    "env.backend": ("local", "docker"),
    "algo.gae_mode": ("crl", "boot"),
    "algo.policy_loss": ("dis", "ppo_clip"),
    "agent.compaction": ("none", "summary", "rule"),
    "orchestrator": ("sync", "async"),
    "cluster.placement": ("colocated", "disaggregated"),
    "logging.wandb_mode": ("offline", "online", "disabled"),
}


def register_configs() -> None:
    """Register the schema so `configs/config.yaml` can name it in its defaults list."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """Turn the composed Hydra config into the typed dataclass and check enumerated choices."""
    typed: TrainConfig = OmegaConf.to_object(cfg)
    structured = OmegaConf.structured(typed)
    check_choices(structured, CHOICES)
    check_required(structured, typed.requires, typed.experiment)
    return typed


def check_choices(cfg: DictConfig, choices: dict[str, tuple]) -> None:
    """Each enumerated key of `cfg` holds one of its allowed values (the error names the key)."""
    for key, allowed in choices.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ValueError(f"config key {key!r} = {value!r}; expected one of {allowed}")


def check_required(cfg: DictConfig, keys: list[str], experiment: str) -> None:
    """Each of `keys` (a preset's ``requires``) must be set: OmegaConf's ``???`` cannot mark a value a
    preset needs, since merging it leaves the default in place."""
    unset = [key for key in keys if OmegaConf.select(cfg, key, default=None) in (None, "", "builtin")]
    if unset:
        raise ValueError(f"experiment={experiment} needs " + ", ".join(f"{key}=..." for key in unset)
                         + " on the command line")
