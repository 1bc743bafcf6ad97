"""The teacher pool: every expert checkpoint served by its own engine actor, scoring student tokens.

Scoring is prefill-only: the teacher gets each segment's token ids exactly as the student's engine
sampled them (plus the observations and summaries of the segment, which are context) and returns
log π_T(x_i | x_<i) for every token at the rollout temperature (slime #2085: teacher and student
log-probs must describe the same tempered distribution). Nothing is decoded or re-tokenised, so
teacher and student must share one tokenizer: :func:`check_compatible` refuses a run where they do
not, before any actor starts.

Routing is by sequence (ALGORITHMS.md §5): a prompt belongs to a domain (by its task family), a
domain has exactly one expert, and a trajectory is scored by that expert only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import ray
from safetensors import safe_open
from transformers import AutoConfig

from envs.tasks import Task
from opd.config import DomainConfig, ExpertConfig
from rollout.hf_engine import HFEngineActor
from rollout.sglang_engine import SGLangConfig, SGLangEngine
from rollout.tokenizer import load_tokenizer
from rollout.trajectory import Trajectory


class CheckpointError(RuntimeError):
    """A model checkpoint that cannot be used; the message names its path."""


class TokenizerMismatch(ValueError):
    """Teacher and student do not share a tokenizer / vocabulary; OPD would compare unrelated ids."""


def check_checkpoint(path: Path, role: str) -> None:
    """Fail at start, naming `path`, if it is not a loadable `save_pretrained` checkpoint with a tokenizer:
    config.json parses, a tokenizer loads, and every safetensors weight file has a readable header."""
    if not path.is_dir():
        raise CheckpointError(f"{role}: no checkpoint directory at {path}")
    try:
        AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{role}: the checkpoint at {path} has no usable config.json: {exc}") from exc
    try:
        load_tokenizer(path)
    except (OSError, ValueError, json.JSONDecodeError, FileNotFoundError) as exc:
        raise CheckpointError(f"{role}: the checkpoint at {path} has no usable tokenizer: {exc}") from exc
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    if not weights:
        raise CheckpointError(f"{role}: the checkpoint at {path} has no weight files (*.safetensors / *.bin)")
    for file in weights:
        if file.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_slice(key)
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types; name the file
            raise CheckpointError(f"{role}: the weight file {file} is unreadable (corrupt or truncated): {exc}") from exc


def check_compatible(student: Path, teacher: Path, teacher_name: str) -> None:
    """Refuse an expert whose tokenizer or vocabulary differs from the student's.

    OPD scores the student's token ids with the teacher, so id i must mean the same string for both
    (same vocabulary, same special tokens) and both models must have the same output size."""
    s_tok, t_tok = load_tokenizer(student), load_tokenizer(teacher)
    s_vocab, t_vocab = s_tok.get_vocab(), t_tok.get_vocab()
    if s_vocab != t_vocab:
        s_inv, t_inv = {i: w for w, i in s_vocab.items()}, {i: w for w, i in t_vocab.items()}
        differ = sorted(i for i in set(s_inv) | set(t_inv) if s_inv.get(i) != t_inv.get(i))
        shown = ", ".join(f"{i}: {s_inv.get(i)!r} vs {t_inv.get(i)!r}" for i in differ[:3])
        raise TokenizerMismatch(
            f"expert {teacher_name!r} ({teacher}) does not share the student's tokenizer ({student}): "
            f"vocabularies of {len(t_vocab)} and {len(s_vocab)} entries, {len(differ)} ids differ (e.g. {shown}). "
            "OPD scores the student's token ids with the teacher; train the experts from the same base model.")
    specials = {"pad_token_id": (s_tok.pad_token_id, t_tok.pad_token_id),
                "eos_token_id": (s_tok.eos_token_id, t_tok.eos_token_id),
                "bos_token_id": (s_tok.bos_token_id, t_tok.bos_token_id)}
    for name, (s_id, t_id) in specials.items():
        if s_id != t_id:
            raise TokenizerMismatch(f"expert {teacher_name!r} ({teacher}) has {name} {t_id}, the student ({student}) {s_id}")
    s_size = AutoConfig.from_pretrained(str(student), local_files_only=True).vocab_size
    t_size = AutoConfig.from_pretrained(str(teacher), local_files_only=True).vocab_size
    if s_size != t_size:
        raise TokenizerMismatch(f"expert {teacher_name!r} ({teacher}) has an output vocabulary of {t_size} "
                                f"logits, the student ({student}) {s_size}; they must be equal")


class Router:
    """Which domain a prompt belongs to (by task family) and which expert owns each domain."""

    def __init__(self, domains: list[DomainConfig], experts: list[ExpertConfig]) -> None:
        self.domain_of_family = {f: d.name for d in domains for f in d.families}
        self.expert_of_domain = {e.domain: e.name for e in experts}

    def domain(self, task: Task) -> str:
        if task.family not in self.domain_of_family:
            raise KeyError(f"task {task.task_id} (family {task.family!r}) belongs to no OPD domain "
                           f"(families: {sorted(self.domain_of_family)})")
        return self.domain_of_family[task.family]

    def expert(self, task: Task) -> str:
        return self.expert_of_domain[self.domain(task)]


@dataclass
class Scored:
    """A student trajectory with its domain, the expert that scored it and that expert's
    log-probs of every token of every segment (aligned with `Segment.tokens`, 0.0 at index 0)."""

    trajectory: Trajectory
    domain: str
    expert: str
    teacher_logprobs: list[list[float]] = field(repr=False, default_factory=list)
    teacher_top_ids: list[list[list[int]]] = field(repr=False, default_factory=list)      # per segment [L][k]
    teacher_top_logprobs: list[list[list[float]]] = field(repr=False, default_factory=list)

    @classmethod
    def of(cls, trajectory: Trajectory, domain: str, expert: str, per_segment: list[tuple]) -> "Scored":
        """From the teacher engine's ``score_top_k`` answer (one tuple per segment)."""
        return cls(trajectory, domain, expert, [own for own, _, _ in per_segment],
                   [ids for _, ids, _ in per_segment], [lps for _, _, lps in per_segment])


class TeacherPool:
    """One engine actor per expert (Ray); `submit` routes a trajectory to its domain's expert and
    returns at once with a Ray reference to the log-probs, so scoring runs while students generate."""

    def __init__(self, experts: list[ExpertConfig], router: Router, pad_token_id: int, temperature: float,
                 seed: int, threads: int, max_batch: int, batch_wait_s: float, top_k: int = 0,
                 engine: str = "hf", sglang: SGLangConfig | None = None) -> None:
        """`top_k` > 0: the experts also return their `top_k` most likely tokens at every position
        (for ``opd.forward_kl_coef``). `engine` = "hf": each expert in a transformers engine actor;
        "sglang": each expert on its SGLang servers (`sglang` the shared settings; the expert's
        ``urls`` or its checkpoint launched on its ``gpu_ids``), scoring by prefill-only ``/generate``."""
        self.router, self.temperature, self.top_k, self.kind = router, temperature, top_k, engine
        self.paths = {e.name: e.checkpoint for e in experts}
        if engine == "sglang":
            template = sglang if sglang is not None else SGLangConfig()
            self.actors = {e.name: ray.remote(SGLangEngine).options(num_cpus=0, max_concurrency=10_000).remote(
                dataclasses.replace(template, model_path=e.checkpoint, urls=list(e.urls))) for e in experts}
            try:   # connection, launch and version errors surface here, naming the server
                ray.get([self.actors[e.name].start.remote(_gpu_groups(e.gpu_ids, template) if e.gpu_ids else None)
                         for e in experts])
            except Exception:
                self.shutdown()   # the servers the other experts launched go too
                raise
        elif engine == "hf":
            self.actors = {
                e.name: ray.remote(HFEngineActor).options(num_cpus=0, max_concurrency=10_000).remote(
                    e.checkpoint, pad_token_id, seed, threads, max_batch, batch_wait_s)
                for e in experts
            }
            ray.get([a.weight_version.remote() for a in self.actors.values()])  # load errors here, naming the path
        else:
            raise ValueError(f"opd.teacher_engine must be hf or sglang (got {engine!r})")

    def submit(self, task: Task, trajectory: Trajectory) -> tuple[str, str, ray.ObjectRef]:
        """(domain, expert, ref to the per-segment scores) for one trajectory of `task`: the expert's
        log-probs of the student's own tokens (and its top-k per position), for :meth:`Scored.of`."""
        domain = self.router.domain(task)
        expert = self.router.expert(task)
        ref = self.actors[expert].score_top_k.remote([seg.tokens for seg in trajectory.segments], self.temperature,
                                                     self.top_k)
        return domain, expert, ref

    def score(self, tasks: list[Task], trajectories: list[Trajectory]) -> list[Scored]:
        """Score a list of trajectories (each by its own domain's expert) and wait for all of them."""
        pending = [(traj, *self.submit(task, traj)) for task, traj in zip(tasks, trajectories)]
        return [Scored.of(traj, domain, expert, result)
                for (traj, domain, expert, _), result in zip(pending, ray.get([ref for *_, ref in pending]))]

    def engine(self, expert: str):
        """The engine actor of `expert` (it can also generate: the driver evaluates experts with it)."""
        return self.actors[expert]

    def shutdown(self) -> None:
        for actor in self.actors.values():
            if self.kind == "sglang":     # stop the servers it launched, close its session
                ray.get(actor.close.remote())
            ray.kill(actor)
        self.actors = {}


def _gpu_groups(gpu_ids: list[int], cfg: SGLangConfig) -> list[list[int]]:
    """An expert's GPU ids as one list of `tp_size` per server (what ``SGLangEngine.start`` takes)."""
    return [gpu_ids[i * cfg.tp_size:(i + 1) * cfg.tp_size] for i in range(cfg.num_engines)]
