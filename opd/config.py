"""The typed configuration of a distillation run (`horizonrl-distill`, Hydra structured configs).

A distillation run reuses the training schema's pieces (engine, environment, agent loop, sampling,
rollout workers, learner, DeepSpeed, logging) and adds the `opd` block: the domains (each a set of
task families with a mixing weight), the experts (each `{name, checkpoint, domain}`), the shared
base model and which model the student starts from. A model that is missing may carry a `train`
recipe: `horizonrl-train` overrides that produce it (the demo trains its experts that way).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from rl.config import EvalConfig, RunConfig, TrainConfig, check_choices
from rollout.sglang_engine import SGLangConfig


@dataclass
class ModelSource:
    """A model checkpoint (`save_pretrained` layout with its tokenizer) and, optionally, how to make
    it: `train` holds `horizonrl-train` overrides; the run goes to `train_dir` and its final policy is
    copied to `checkpoint`. With an empty `train`, a missing checkpoint is an error naming the path."""

    checkpoint: str = ""
    train: list[str] = field(default_factory=list)
    train_dir: str = ""


@dataclass
class ExpertConfig(ModelSource):
    name: str = ""
    domain: str = ""
    # opd.teacher_engine=sglang: servers already serving this expert (empty: launch one from
    # `checkpoint` with opd.teacher_sglang's settings, on `gpu_ids` if given, tp_size of them)
    urls: list[str] = field(default_factory=list)
    gpu_ids: list[int] = field(default_factory=list)


@dataclass
class DomainConfig:
    name: str = ""
    families: list[str] = field(default_factory=list)   # task families whose prompts this domain owns
    weight: float = 1.0                                  # mixing weight w_k of the domain's prompts


@dataclass
class OPDConfig:
    """Online policy distillation (ALGORITHMS.md §5): Â_t = task_coef·Â^task + kl_coef·sg[log π_T − log π_θ]."""

    domains: list[DomainConfig] = field(default_factory=list)
    experts: list[ExpertConfig] = field(default_factory=list)
    base: ModelSource = field(default_factory=ModelSource)   # the shared initialisation the experts are trained from
    student_init: str = "base"       # "base" or the name of an expert
    kl_coef: float = 1.0             # λ_opd
    task_coef: float = 0.0           # weight of the task advantage R − mean(R) (0 = pure distillation)
    forward_kl_coef: float = 0.0     # + coef · forward KL to the expert's top-k on the student's states (GKD β=0)
    forward_kl_top_k: int = 8        # tokens per position the experts return for it
    offpolicy_samples_per_task: int = 0   # off-policy phase first: each expert's own episodes per training task (0 = none)
    offpolicy_epochs: int = 1        # passes of the student over those episodes (forward KL to the expert's top-k)
    offpolicy_replay: int = 0        # then, after every on-policy step, this many steps on those episodes (GKD's mixture)
    teacher_threads: int = 1         # torch threads of each teacher engine actor (hf)
    teacher_engine: str = "hf"       # hf: transformers in a Ray actor | sglang: prefill-only /generate on SGLang servers
    teacher_sglang: SGLangConfig = field(default_factory=SGLangConfig)   # the launch/client settings of sglang teachers
    eval_samples_per_task: int = 4   # held-out episodes per task for before / after / expert
    eval_max_tasks: int = 0          # held-out tasks per domain (the first N; 0 = all)
    save_every: int = 0              # also write the student (save_pretrained) every N steps (0 = at the end only)


@dataclass
class DistillConfig(RunConfig):
    """The training schema's shared part (`steps` = distillation steps, `algo` = the policy loss and
    learner) plus the `opd` block."""

    experiment: str = "opd_demo"
    orchestrator: str = "async"      # sync: a batch is generated with the current weights; async: keep generating
    opd: OPDConfig = field(default_factory=OPDConfig)


CHOICES = {
    "engine.type": ("hf",),          # the student's engine (the SGLang student would need DistillConfig.sglang)
    "opd.teacher_engine": ("hf", "sglang"),
    "orchestrator": ("sync", "async"),
    "logging.wandb_mode": ("offline", "online", "disabled"),
    "agent.compaction": ("none", "summary", "rule"),
}


def register_configs() -> None:
    """Register the schema so `configs/distill.yaml` can name it in its defaults list."""
    ConfigStore.instance().store(name="distill_schema", node=DistillConfig)


def check_opd(opd: OPDConfig) -> None:
    """Domains and experts must pair up one to one; names must be unique; weights positive."""
    domains = [d.name for d in opd.domains]
    experts = [e.name for e in opd.experts]
    if not domains:
        raise ValueError("opd.domains is empty: name at least one domain ({name, families, weight})")
    for kind, names in (("domain", domains), ("expert", experts)):
        if "" in names or len(set(names)) != len(names):
            raise ValueError(f"opd: every {kind} needs a unique non-empty name (got {names})")
    for d in opd.domains:
        if not d.families:
            raise ValueError(f"opd domain {d.name!r} lists no task families")
        if d.weight <= 0:
            raise ValueError(f"opd domain {d.name!r} has weight {d.weight}; mixing weights must be > 0")
    owned = [f for d in opd.domains for f in d.families]
    if len(set(owned)) != len(owned):
        raise ValueError(f"opd: a task family belongs to two domains ({owned}); routing needs one owner")
    if opd.teacher_sglang.urls:
        raise ValueError("opd.teacher_sglang.urls: running teacher servers are given per expert "
                         "(opd.experts[*].urls), as each serves one checkpoint")
    for e in opd.experts:
        if e.domain not in domains:
            raise ValueError(f"opd expert {e.name!r} serves domain {e.domain!r}, which is not in opd.domains {domains}")
        if not e.checkpoint:
            raise ValueError(f"opd expert {e.name!r} has no checkpoint path")
        if (e.urls or e.gpu_ids) and opd.teacher_engine != "sglang":
            raise ValueError(f"opd expert {e.name!r} sets urls/gpu_ids, which are for opd.teacher_engine=sglang "
                             f"(got {opd.teacher_engine!r})")
        if e.urls and e.gpu_ids:
            raise ValueError(f"opd expert {e.name!r}: urls name running servers, gpu_ids place a launched one; not both")
        if e.urls and len(e.urls) != opd.teacher_sglang.num_engines:
            raise ValueError(f"opd expert {e.name!r} lists {len(e.urls)} urls but opd.teacher_sglang.num_engines is "
                             f"{opd.teacher_sglang.num_engines}")
        if e.gpu_ids and len(e.gpu_ids) != opd.teacher_sglang.num_engines * opd.teacher_sglang.tp_size:
            raise ValueError(f"opd expert {e.name!r} lists {len(e.gpu_ids)} gpu_ids; its servers need num_engines x "
                             f"tp_size = {opd.teacher_sglang.num_engines * opd.teacher_sglang.tp_size}")
    served = [e.domain for e in opd.experts]
    if sorted(served) != sorted(domains):
        raise ValueError(f"opd: every domain needs exactly one expert (domains {domains}, experts serve {served})")
    if opd.student_init != "base" and opd.student_init not in experts:
        raise ValueError(f"opd.student_init must be 'base' or an expert name {experts} (got {opd.student_init!r})")
    if opd.student_init == "base" and not opd.base.checkpoint:
        raise ValueError("opd.student_init is 'base' but opd.base.checkpoint is empty")
    if opd.eval_max_tasks < 0:
        raise ValueError(f"opd.eval_max_tasks must be >= 0 (got {opd.eval_max_tasks})")
    if opd.eval_samples_per_task < 1:
        raise ValueError(f"opd.eval_samples_per_task must be >= 1 (got {opd.eval_samples_per_task})")
    if opd.offpolicy_samples_per_task < 0 or opd.offpolicy_epochs < 1:
        raise ValueError(f"opd.offpolicy_samples_per_task must be >= 0 and opd.offpolicy_epochs >= 1 (got "
                         f"{opd.offpolicy_samples_per_task}, {opd.offpolicy_epochs})")
    if opd.offpolicy_replay < 0 or (opd.offpolicy_replay and not opd.offpolicy_samples_per_task):
        raise ValueError(f"opd.offpolicy_replay must be >= 0 and replays the off-policy phase's episodes, so it "
                         f"needs opd.offpolicy_samples_per_task > 0 (got {opd.offpolicy_replay}, "
                         f"{opd.offpolicy_samples_per_task})")
    if opd.offpolicy_samples_per_task and opd.forward_kl_top_k < 1:
        raise ValueError(f"opd.offpolicy_samples_per_task: the off-policy phase learns the experts' top-k "
                         f"distributions, so opd.forward_kl_top_k must be >= 1 (got {opd.forward_kl_top_k})")
    if opd.forward_kl_coef < 0 or (opd.forward_kl_coef and opd.forward_kl_top_k < 1):
        raise ValueError(f"opd.forward_kl_coef must be >= 0 and, when set, opd.forward_kl_top_k >= 1 (got "
                         f"{opd.forward_kl_coef}, {opd.forward_kl_top_k})")


def to_distill_config(cfg: DictConfig) -> DistillConfig:
    """Turn the composed Hydra config into the typed dataclass and check choices and the OPD block."""
    typed: DistillConfig = OmegaConf.to_object(cfg)
    check_choices(OmegaConf.structured(typed), CHOICES)
    check_opd(typed.opd)
    if typed.opd.teacher_engine == "sglang" and typed.sampling.temperature != 1.0:
        raise ValueError(f"opd.teacher_engine=sglang scores at temperature 1 only (SGLang's prompt log-probs are "
                         f"taken before any temperature), but sampling.temperature={typed.sampling.temperature}: "
                         f"set sampling.temperature=1.0 or opd.teacher_engine=hf")
    rollout_config(typed)   # the training schema's own checks (e.g. mini-batches vs episodes), before any model is trained
    return typed


def rollout_config(cfg: DistillConfig) -> TrainConfig:
    """The training schema's view of a distillation run, for the rollout machinery of `rl/`
    (`RolloutCluster`, rollout workers), which is configured by a `TrainConfig`."""
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(RunConfig)}
    return TrainConfig(**shared, eval=EvalConfig(samples_per_task=cfg.opd.eval_samples_per_task))
