"""The learner: policy and critic trained through DeepSpeed (ZeRO stage from config).

On a machine without a GPU DeepSpeed runs on its CPU accelerator with the gloo backend and torch's
AdamW as the client optimiser; on GPUs the same code runs ZeRO-3 with NCCL.

One PPO step (ALGORITHMS.md §2, DESIGN.md "One training step"):
critic values at action positions -> GAE (skip-observation, across segments) -> advantage
whitening -> K clipped value-loss steps -> one DIS policy step, all token-mean over the global batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

from critic.gae import gae_over_segments, length_adaptive_lambda
from critic.losses import clipped_value_loss, explained_variance
from rl.batch import SampleBatch, micro_batches, mini_batch_rows, pack, packed_micro_batches, unpack
from rl.config import AlgoConfig, DeepSpeedConfig
from rl.losses import (dis_policy_loss, entropy_from_logits, k3_kl, masked_whiten, ppo_clip_policy_loss,
                       reference_kl_loss, teacher_topk_forward_kl_loss)


def init_distributed(cfg: DeepSpeedConfig, rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
                     local_rank: int | None = None) -> None:
    """Join (or create) the learner's process group. DeepSpeed reads the launcher's contract from
    the process environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_*); we fill it from config."""
    if dist.is_initialized():
        return
    port = cfg.master_port or free_port()
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank if local_rank is None else local_rank),
                      WORLD_SIZE=str(world_size), MASTER_ADDR=master_addr, MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl",
                               auto_mpi_discovery=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zero_config(cfg: DeepSpeedConfig) -> dict:
    """DeepSpeed's ``zero_optimization`` block: the stage and the optional CPU offloads."""
    zero: dict = {"stage": cfg.zero_stage}
    pin = torch.cuda.is_available()
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    return zero


def warmup_cosine_lr_factor(step: int, warmup_steps: int, decay_steps: int, min_lr_ratio: float) -> float:
    """The learning-rate multiplier at optimiser step `step` (0-based): linear warm-up, then cosine decay.

        f(s) = (s + 1) / (W + 1)                                   for s < W
        f(s) = m + (1 - m) · ½ (1 + cos(π · min(1, (s − W) / (D − W))))   for s >= W

    with W = `warmup_steps`, D = `decay_steps` (the step by which f reaches m = `min_lr_ratio`;
    D <= W means no decay: f = 1 after the warm-up)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if decay_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (decay_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def policy_decay_steps(algo: AlgoConfig, policy_batches: int, extra_steps: int = 0) -> int:
    """The optimiser step by which a cosine-decayed policy learning rate reaches its floor: the run's
    batches that take a policy step x ``algo.policy_updates`` x ``algo.policy_mini_batches``, plus
    `extra_steps` optimiser steps taken outside them (OPD's off-policy and replayed steps)
    (0 = no decay, ``algo.policy_lr_decay = constant``)."""
    if algo.policy_lr_decay == "constant":
        return 0
    return policy_batches * algo.policy_updates * algo.policy_mini_batches + extra_steps


def deepspeed_engine(model: torch.nn.Module, lr: float, weight_decay: float, grad_clip: float,
                     cfg: DeepSpeedConfig, warmup_steps: int = 0, decay_steps: int = 0, min_lr_ratio: float = 1.0):
    """Wrap `model` in a DeepSpeed engine with torch AdamW as the client optimiser and the
    learning rate of :func:`warmup_cosine_lr_factor` (constant after the warm-up unless `decay_steps`)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine_lr_factor(s, warmup_steps, decay_steps, min_lr_ratio))
    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero_config(cfg),
        "zero_force_ds_cpu_optimizer": False,   # offloaded, the client optimiser (torch AdamW) steps on the CPU
        "bf16": {"enabled": cfg.bf16},
        "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine


def offload_states(engine) -> None:
    """Colocated training: move a DeepSpeed engine's training states off the GPU while the policy
    engines generate on it (DeepSpeed's ``engine.offload_states``). All of them with ZeRO-1/2; with
    ZeRO-3 DeepSpeed moves optimiser states only for its FusedAdam, so with torch's AdamW the
    parameters, gradients and gradient buffer go (``deepspeed.offload_optimizer`` keeps the
    optimiser states in host memory all along); with ``offload_params`` nothing is left to move."""
    from deepspeed.runtime.zero.offload_config import OffloadStateTypeEnum as State

    stage = engine.zero_optimization_stage()
    if stage == 0:
        raise ValueError("offloading the learner between phases needs deepspeed.zero_stage >= 1 "
                         "(ZeRO-0 has no states DeepSpeed can move)")
    if _params_on_host(engine):
        return
    from deepspeed.ops.adam import FusedAdam

    movable = stage < 3 or isinstance(engine.optimizer.optimizer, FusedAdam)   # ZeRO-3 wraps the client optimiser
    include = None if movable else [State.lp_params, State.lp_grads, State.contiguous_grad_buffer]
    engine.offload_states(include=include, pin_memory=torch.cuda.is_available())
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reload_states(engine) -> None:
    """Undo :func:`offload_states`: the training states back on the engine's device."""
    if not _params_on_host(engine):
        engine.reload_states()


def _params_on_host(engine) -> bool:
    """ZeRO-3 with ``offload_params``: the parameters live in host memory already (nothing to move)."""
    offload = engine.zero_offload_param()
    return offload is not None and offload.device != "none"


def dp_world_size() -> int:
    """Data-parallel ranks of the learner (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def dp_all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """`t` summed (or, op="max", maximised) over the learner's data-parallel ranks; `t` with one rank."""
    if dp_world_size() == 1:
        return t
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return out


def global_action_tokens(batch: SampleBatch) -> float:
    """N of the token-mean: action tokens of the global batch (all ranks' shards)."""
    return float(dp_all_reduce(batch.action_mask.sum().double()))


def policy_mini_batches(batch: SampleBatch, mini_batches: int) -> list[list[int]]:
    """This rank's rows of each PPO mini-batch (:func:`rl.batch.mini_batch_rows`); the global batch
    (all ranks' shards) must fill every mini-batch."""
    total = int(dp_all_reduce(torch.tensor(batch.input_ids.shape[0], device=batch.input_ids.device)))
    if total < mini_batches:
        raise ValueError(f"algo.policy_mini_batches={mini_batches} needs at least that many samples per step, "
                         f"got {total}: lower it or raise rollout.episodes_per_step")
    return mini_batch_rows(batch.sample_index, mini_batches)


def mean_metrics(steps: list[dict]) -> dict:
    """One learner step's metrics from its optimiser steps (epochs x mini-batches): the mean of each."""
    return {key: sum(step[key] for step in steps) / len(steps) for key in steps[0]}


def dp_micro_batches(batch: SampleBatch, algo: AlgoConfig) -> tuple[list[list[int]], int]:
    """This rank's micro-batches (padded or packed, ``algo.micro_batch_tokens`` each) and how many
    every rank runs: the most any rank has. A rank with fewer runs zero-weighted passes
    (:func:`idle_pass`) so that every rank makes the same collective calls (ZeRO gathers parameters
    in forward and reduces gradients in backward)."""
    group = packed_micro_batches if algo.pack_sequences else micro_batches
    groups = group(batch, algo.micro_batch_tokens)
    count = dp_all_reduce(torch.tensor(len(groups), device=batch.input_ids.device), op="max")
    return groups, int(count)


def idle_pass(engine, batch: SampleBatch) -> torch.Tensor:
    """A forward over two tokens, times 0: a rank with no micro-batch left (or an empty shard of a
    mini-batch) takes part in the collectives without changing any gradient."""
    tokens = torch.zeros((1, 2), dtype=torch.long, device=batch.input_ids.device)
    out = engine(input_ids=tokens, attention_mask=torch.ones_like(tokens)).logits
    return out.float().sum() * 0.0


def attention_kwargs(attn_implementation: str | None) -> dict:
    """``from_pretrained`` keywords for ``algo.attn_implementation`` (None: transformers' default, SDPA)."""
    return {} if attn_implementation is None else {"attn_implementation": attn_implementation}


def model_logits(model, mb: SampleBatch, packed: bool) -> torch.Tensor:
    """The model's output (logits) at every position of micro-batch `mb`, [rows, T, ...]: run padded
    with the attention mask, or packed into one row (:func:`rl.batch.pack`) and unpacked."""
    if packed:
        return unpack(mb, model(**pack(mb)).logits)
    return model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits


def per_token(engine, batch: SampleBatch, algo: AlgoConfig, fn) -> torch.Tensor:
    """`fn(micro_batch)` ([rows, T_mb] per token) over every micro-batch, assembled into `batch`'s [B, T]
    layout (no gradient); idle passes keep the data-parallel ranks' collectives in step. `batch` may
    sit on any device (the driver collates on the CPU): it runs on the engine's, the result comes back
    on `batch`'s."""
    home, batch = batch.input_ids.device, batch.to(engine.device)
    out = torch.zeros_like(batch.action_mask)
    groups, count = dp_micro_batches(batch, algo)
    for i in range(count):
        if i >= len(groups):
            idle_pass(engine, batch)
            continue
        mb = batch.rows(groups[i])
        out[torch.tensor(groups[i]), : mb.input_ids.shape[1]] = fn(mb)
    return out.to(home)


def accumulate(engine, batch: SampleBatch, algo: AlgoConfig, loss_of) -> float:
    """Backward `loss_of(rows, micro_batch)` for every micro-batch of `batch` (each loss already
    divided by the global token count), then take one optimiser step; returns the gradient norm
    before clipping. DeepSpeed averages gradients over the data-parallel ranks, so each rank's loss
    is scaled by their number: the step is the gradient of the global batch's token-mean."""
    groups, count = dp_micro_batches(batch, algo)
    world = dp_world_size()
    norm = None
    for i in range(count):
        last = i == count - 1
        engine.set_gradient_accumulation_boundary(last)
        loss = (loss_of(torch.tensor(groups[i]), batch.rows(groups[i])) if i < len(groups)
                else idle_pass(engine, batch))
        engine.backward(loss * world if world > 1 else loss, scale_wrt_gas=False)
        if last and engine.zero_optimization_stage() == 0:  # ZeRO-0 clips without recording the norm
            grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.tensor(0.0)
        engine.step()
    if norm is None:
        norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else float("nan")


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log pi(x_i | x_<i) at position i (0 at i = 0), under the sampling temperature."""
    logp = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(picked, (1, 0))


class ReferencePolicy:
    """A frozen copy of the policy RL started from, for the KL penalty (``algo.kl_coef``)."""

    def __init__(self, model_path: Path, temperature: float, device: torch.device | str = "cpu",
                 packed: bool = False, attn_implementation: str | None = None) -> None:
        self.path = Path(model_path)
        self.packed = packed
        self.model = AutoModelForCausalLM.from_pretrained(str(model_path), local_files_only=True, dtype=torch.float32,
                                                          **attention_kwargs(attn_implementation))
        self.model.to(device).eval().requires_grad_(False)
        self.temperature = temperature

    @torch.no_grad()
    def logprobs(self, mb: SampleBatch) -> torch.Tensor:
        return token_logprobs(model_logits(self.model, mb, self.packed), mb.input_ids, self.temperature)


class PolicyLearner:
    def __init__(self, model_path: Path, lr: float, algo: AlgoConfig, ds: DeepSpeedConfig, temperature: float,
                 warmup_steps: int = 0, reference: Path | None = None, decay_steps: int = 0,
                 min_lr_ratio: float = 1.0) -> None:
        """`reference`: the policy RL started from (default `model_path`), used when ``algo.kl_coef`` > 0;
        a resumed run passes the original one. `warmup_steps`, `decay_steps`, `min_lr_ratio`: the
        learning-rate schedule (:func:`warmup_cosine_lr_factor`)."""
        model = AutoModelForCausalLM.from_pretrained(str(model_path), local_files_only=True, dtype=torch.float32,
                                                     **attention_kwargs(algo.attn_implementation))
        self.engine = deepspeed_engine(model, lr, algo.weight_decay, algo.grad_clip, ds, warmup_steps, decay_steps,
                                       min_lr_ratio)
        self.algo = algo
        self.temperature = temperature
        self.reference = (ReferencePolicy(reference or model_path, temperature, self.engine.device, algo.pack_sequences,
                                          algo.attn_implementation)
                          if algo.kl_coef > 0 else None)

    def offload(self) -> None:
        offload_states(self.engine)
        if self.reference is not None:
            self.reference.model.to("cpu")

    def onload(self) -> None:
        reload_states(self.engine)
        if self.reference is not None:
            self.reference.model.to(self.engine.device)

    def forward(self, mb: SampleBatch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model_logits(self.engine, mb, self.algo.pack_sequences)
        logp = token_logprobs(logits, mb.input_ids, self.temperature)
        return logp, logits

    def sft_step(self, batch: SampleBatch) -> dict:
        """Cross-entropy on the demonstrations' action tokens, token-mean over the batch."""
        batch = batch.to(self.engine.device)
        n = global_action_tokens(batch)
        stats = {"nll": 0.0}

        def loss_of(rows, mb):
            logp, _ = self.forward(mb)
            loss = -(logp * mb.action_mask).sum() / n
            stats["nll"] += float(loss.detach())
            return loss
        grad_norm = accumulate(self.engine, batch, self.algo, loss_of)
        return {"sft/nll": stats["nll"], "sft/grad_norm": grad_norm, "sft/lr": self.engine.get_lr()[0]}

    def forward_kl_step(self, batch: SampleBatch, top_ids: torch.Tensor, top_logprobs: torch.Tensor) -> dict:
        """One optimiser step on the forward KL to a teacher's top-k over the batch's action tokens
        (:func:`rl.losses.teacher_topk_forward_kl_loss`, coefficient 1, token-mean over the batch):
        off-policy distillation on sequences the teacher sampled. `top_ids`/`top_logprobs` are
        ``[B, T, k]``, aligned with the batch's tokens."""
        n = global_action_tokens(batch)
        stats = {"forward_kl": 0.0}

        def loss_of(rows, mb):
            _, logits = self.forward(mb)
            loss, value = self.teacher_forward_kl(logits, mb, rows, top_ids, top_logprobs, 1.0, n)
            stats["forward_kl"] += value * mb.num_action_tokens / n
            return loss
        grad_norm = accumulate(self.engine, batch, self.algo, loss_of)
        return {"forward_kl": stats["forward_kl"], "grad_norm": grad_norm, "lr": self.engine.get_lr()[0]}

    def teacher_forward_kl(self, logits: torch.Tensor, mb: SampleBatch, rows, top_ids: torch.Tensor,
                           top_logprobs: torch.Tensor, coef: float, num_tokens: int) -> tuple[torch.Tensor, float]:
        """The forward KL to a teacher's top-k on micro-batch `mb` (rows `rows` of the ``[B, T, k]``
        `top_ids`/`top_logprobs`, cut to the micro-batch's length): the loss term and its value."""
        t = mb.input_ids.shape[1]
        return teacher_topk_forward_kl_loss(logits, top_ids[rows][:, :t].to(logits.device),
                                            top_logprobs[rows][:, :t].to(logits.device), mb.action_mask,
                                            self.temperature, coef, num_tokens=num_tokens)

    @torch.no_grad()
    def logprobs(self, batch: SampleBatch) -> torch.Tensor:
        """log π_θ(x_i | x_<i) of every token under the current weights (π_old for PPO's ratio)."""
        return per_token(self.engine, batch, self.algo, lambda mb: self.forward(mb)[0])

    def ppo_step(self, batch: SampleBatch, advantages: torch.Tensor, old_logprobs: torch.Tensor | None = None,
                 teacher_top_k: tuple[torch.Tensor, torch.Tensor, float] | None = None) -> dict:
        """One policy-gradient step over the whole batch: the DIS loss against the behaviour
        log-probs (ALGORITHMS.md §2.5), or with ``algo.policy_loss = ppo_clip`` PPO's clipped
        surrogate against `old_logprobs` (π_old: the weights before this batch's first update).
        `teacher_top_k` = (top ids, top log-probs ``[B, T, k]``, coef) adds the forward KL to a
        teacher on the batch's states (:func:`rl.losses.teacher_topk_forward_kl_loss`, OPD)."""
        n = global_action_tokens(batch)
        sums = {"masked_fraction": 0.0, "mismatch_kl": 0.0, "ratio_mean": 0.0, "entropy": 0.0, "loss": 0.0,
                "clipfrac": 0.0, "kl_ref": 0.0, "forward_kl": 0.0}
        if self.algo.policy_loss == "ppo_clip" and old_logprobs is None:
            raise ValueError("algo.policy_loss = ppo_clip needs the batch's log-probs under pi_old")

        def loss_of(rows, mb):
            logp, logits = self.forward(mb)
            t = mb.input_ids.shape[1]
            adv = advantages[rows][:, :t]
            if self.algo.policy_loss == "ppo_clip":
                loss, st = ppo_clip_policy_loss(logp, old_logprobs[rows][:, :t], adv, mb.action_mask,
                                                self.algo.clip_low, self.algo.clip_high, num_tokens=n)
                with torch.no_grad():
                    log_ratio = logp.detach() - mb.behavior_logprobs
                    st |= {"mismatch_kl": float((k3_kl(log_ratio) * mb.action_mask).sum()) / max(mb.num_action_tokens, 1),
                           "masked_fraction": 0.0}
            else:
                loss, st = dis_policy_loss(logp, mb.behavior_logprobs, adv, mb.action_mask,
                                           eps_low=1.0 - self.algo.dis_low, eps_high=self.algo.dis_high - 1.0,
                                           num_tokens=n, tis_cap=self.algo.tis_cap)
            if self.reference is not None:
                kl_loss, st["kl_ref"] = reference_kl_loss(logp, self.reference.logprobs(mb), mb.action_mask,
                                                          self.algo.kl_coef, num_tokens=n)
                loss = loss + kl_loss
            if teacher_top_k is not None:
                fkl, st["forward_kl"] = self.teacher_forward_kl(logits, mb, rows, *teacher_top_k, n)
                loss = loss + fkl
            w = mb.num_action_tokens / n
            for k in ("masked_fraction", "mismatch_kl", "ratio_mean", "clipfrac", "kl_ref", "forward_kl"):
                sums[k] += st.get(k, 0.0) * w
            with torch.no_grad():
                ent = entropy_from_logits(logits[:, :-1].float() / self.temperature)
                sums["entropy"] += float((ent * mb.action_mask[:, 1:]).sum()) / n
            sums["loss"] += float(loss.detach())
            return loss
        grad_norm = accumulate(self.engine, batch, self.algo, loss_of)
        return {f"policy/{k}": v for k, v in sums.items()} | {"policy/grad_norm": grad_norm}

    def state_dict(self) -> dict:
        """Full (gathered) weights on the CPU, for pushing to the engines."""
        module = self.engine.module
        gathered = (deepspeed.zero.GatheredParameters(list(module.parameters()))
                    if self.engine.zero_optimization_partition_weights() else contextlib.nullcontext())
        with gathered:
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    def save_pretrained(self, out_dir: Path, tokenizer) -> None:
        module = self.engine.module
        module.save_pretrained(str(out_dir), state_dict=self.state_dict())
        tokenizer.save_pretrained(str(out_dir))


class CriticLearner:
    """Value model: the policy's backbone with a scalar head (token classification, 1 label)."""

    def __init__(self, model_path: Path, algo: AlgoConfig, ds: DeepSpeedConfig) -> None:
        model, info = AutoModelForTokenClassification.from_pretrained(
            str(model_path), num_labels=1, local_files_only=True, dtype=torch.float32, output_loading_info=True,
            **attention_kwargs(algo.attn_implementation))
        zero_new_value_head(model, set(info["missing_keys"]))
        self.engine = deepspeed_engine(model, algo.critic_lr, algo.weight_decay, algo.grad_clip, ds)
        self.algo = algo

    def offload(self) -> None:
        offload_states(self.engine)

    def onload(self) -> None:
        reload_states(self.engine)

    def forward(self, mb: SampleBatch) -> torch.Tensor:
        """V(h_i) for token i, read at position i-1 (where the logit that produced token i lives)."""
        out = model_logits(self.engine, mb, self.algo.pack_sequences)[..., 0].float()
        return torch.nn.functional.pad(out[:, :-1], (1, 0)) * mb.action_mask

    @torch.no_grad()
    def values(self, batch: SampleBatch) -> torch.Tensor:
        return per_token(self.engine, batch, self.algo, self.forward)

    def step(self, batch: SampleBatch, old_values: torch.Tensor, returns: torch.Tensor) -> dict:
        n = global_action_tokens(batch)
        sums = {"loss": 0.0, "clipfrac": 0.0}

        def loss_of(rows, mb):
            t = mb.input_ids.shape[1]
            loss, clipfrac = clipped_value_loss(self.forward(mb), old_values[rows, :t], returns[rows, :t],
                                                mb.action_mask, self.algo.value_clip, n)
            sums["loss"] += float(loss.detach())
            sums["clipfrac"] += float(clipfrac) * mb.num_action_tokens / n
            return loss
        grad_norm = accumulate(self.engine, batch, self.algo, loss_of)
        return {"critic/loss": sums["loss"], "critic/clipfrac": sums["clipfrac"], "critic/grad_norm": grad_norm}


def zero_new_value_head(model: torch.nn.Module, missing_keys: set[str]) -> None:
    """A freshly initialised value head starts at V ≡ 0 (weights and bias zero).

    A random head gives every token a different random value, and with λ ≈ 1 that noise goes
    straight into A_t ≈ R − V_t; a zero head makes the first advantages R − mean(R) after
    whitening (REINFORCE with a batch baseline) until the critic has learned something. A head
    loaded from a critic checkpoint is kept as it is."""
    children = dict(model.named_children())
    head_name = next((n for n in ("score", "classifier") if isinstance(children.get(n), torch.nn.Linear)), None)
    if head_name is None:
        raise ValueError(f"{type(model).__name__} has no linear value head named 'score' or 'classifier'")
    if any(k.startswith(head_name + ".") for k in missing_keys):
        head = children[head_name]
        with torch.no_grad():
            head.weight.zero_()
            if head.bias is not None:
                head.bias.zero_()


@dataclass
class Advantages:
    advantages: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor


def compute_advantages(batch: SampleBatch, values: torch.Tensor, algo: AlgoConfig) -> Advantages:
    """GAE over action tokens and across segments; decoupled lambda (critic lam_critic, policy lam_p)."""
    lam_p = (torch.full_like(batch.rewards, algo.lam_policy) if algo.lam_policy is not None
             else length_adaptive_lambda(batch.rollout_action_tokens, algo.lam_policy_alpha))
    n_rollouts = int(batch.rollout_index.max()) + 1
    rollout_rewards = torch.zeros(n_rollouts, device=batch.rewards.device).scatter(0, batch.rollout_index, batch.rewards)
    adv, _ = gae_over_segments(rollout_rewards, values, batch.action_mask, batch.rollout_index,
                               batch.segment_index, algo.gamma, lam_p, algo.lam_critic, algo.gae_mode)
    _, ret = gae_over_segments(rollout_rewards, values, batch.action_mask, batch.rollout_index,
                               batch.segment_index, algo.gamma, torch.full_like(batch.rewards, algo.lam_critic),
                               algo.lam_critic, algo.gae_mode)
    if algo.whiten_advantages:
        # sqrt(var + floor^2): a batch with no signal (all returns alike) is not blown up into noise
        adv = masked_whiten(adv, batch.action_mask, eps=algo.whiten_std_floor ** 2, all_reduce=dp_all_reduce)
    return Advantages(advantages=adv, returns=ret, values=values)


class PPOLearner:
    """Critic-based PPO on single rollouts: K critic steps + one policy step per batch."""

    def __init__(self, policy: PolicyLearner, critic: CriticLearner, algo: AlgoConfig) -> None:
        self.policy, self.critic, self.algo = policy, critic, algo
        self.steps_done = 0
        self.offloaded = False

    def offload(self) -> None:
        """Colocated training: policy and critic states off the GPU while the engines generate."""
        if not self.offloaded:
            self.policy.offload()
            self.critic.offload()
            self.offloaded = True

    def onload(self) -> None:
        if self.offloaded:
            self.policy.onload()
            self.critic.onload()
            self.offloaded = False

    @contextlib.contextmanager
    def onloaded(self):
        """The states on the device for the duration (a checkpoint of an offloaded learner)."""
        was = self.offloaded
        self.onload()
        try:
            yield self
        finally:
            if was:
                self.offload()

    def train_step(self, batch: SampleBatch) -> dict:
        self.onload()   # colocated: the rollout phase left the states in host memory
        batch = batch.to(self.policy.engine.device)  # collated on the CPU; the learner may be on a GPU
        values = self.critic.values(batch)
        adv = compute_advantages(batch, values, self.algo)
        metrics = {"critic/explained_variance": explained_variance(values, adv.returns, batch.action_mask),
                   "train/action_tokens": batch.num_action_tokens, "train/samples": float(batch.input_ids.shape[0])}
        for _ in range(self.algo.critic_updates):
            metrics |= self.critic.step(batch, values, adv.returns)
        if self.steps_done >= self.algo.critic_warmup_steps:
            old = self.policy.logprobs(batch) if self.algo.policy_loss == "ppo_clip" else None
            slices = [(batch.rows(rows), adv.advantages[rows], None if old is None else old[rows])
                      for rows in policy_mini_batches(batch, self.algo.policy_mini_batches)]
            steps = [self.policy.ppo_step(*piece) for _ in range(self.algo.policy_updates) for piece in slices]
            metrics |= mean_metrics(steps)
        self.steps_done += 1
        return metrics
