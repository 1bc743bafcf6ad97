"""Policy losses (ALGORITHMS.md §2.5, §4, §5).

All tensors are ``[B, T]`` and aligned with the tokens; ``action_mask`` is 1 on tokens the policy
sampled. Losses are token sums divided by ``num_tokens``, the action-token count of the whole
optimiser step (all micro-batches, all ranks): micro-batch losses then add up to the full-batch
loss and their gradients accumulate to the full-batch gradient ("token-level loss").
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def _check_same_2d(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise ValueError(f"expected [B, T] tensors of one shape, got {shapes}")


def _check_num_tokens(num_tokens: float) -> None:
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    total = mask.sum()
    return float((x * mask).sum() / total) if total > 0 else 0.0


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8,
                  all_reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """x̂ = (x − μ) / sqrt(σ² + eps) on masked entries, 0 elsewhere.

    μ and σ² (population variance) are taken over all masked entries of the batch; with a
    data-parallel learner, `all_reduce` (a sum over the ranks) makes them the global batch's:
    μ = Σ_r Σ x / Σ_r n, σ² = Σ_r Σ (x − μ)² / Σ_r n.
    """
    _check_same_2d(x=x, mask=mask)
    reduce = all_reduce if all_reduce is not None else (lambda t: t)
    keep = mask != 0
    selected = x[keep].double()
    count = reduce(torch.tensor(float(selected.numel()), dtype=torch.float64, device=x.device))
    if float(count) == 0:
        return torch.zeros_like(x)
    mean = reduce(selected.sum()) / count
    var = reduce(((selected - mean) ** 2).sum()) / count
    whitened = ((x.double() - mean) * torch.rsqrt(var + eps)).to(x.dtype)
    return torch.where(keep, whitened, 0.0)


def importance_ratio(logprobs: Tensor, behavior_logprobs: Tensor) -> Tensor:
    """ρ_t = π_θ(a_t|h_t) / μ(a_t|h_t) = exp(log π_θ − log μ)."""
    return torch.exp(logprobs - behavior_logprobs)


def dis_mask(ratio: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """m_t = 1[1 − ε_l < ρ_t < 1 + ε_h]  (Direct Double-sided IS, GLM-5), as ``ratio``'s dtype."""
    return ((ratio > 1.0 - eps_low) & (ratio < 1.0 + eps_high)).to(ratio.dtype)


def k3_kl(log_ratio: Tensor) -> Tensor:
    """k3 estimator of KL(μ‖π) from samples a ~ μ: k3 = ρ − 1 − log ρ, with log ρ = log π − log μ."""
    return torch.expm1(log_ratio) - log_ratio


def dis_policy_loss(logprobs: Tensor, behavior_logprobs: Tensor, advantages: Tensor, action_mask: Tensor,
                    eps_low: float, eps_high: float, num_tokens: float,
                    tis_cap: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """DIS policy loss (GLM-5 / SAO), token sum over the global token count N:

        ρ_t = exp(log π_θ(a_t|h_t) − μ_t),   w_t = ρ_t  (or min(ρ_t, C) with ``tis_cap`` = C)
        m_t = 1[1 − ε_l < ρ_t < 1 + ε_h]
        L_π = −(1/N) Σ_t m_t · sg(w_t · Â_t) · log π_θ(a_t|h_t)

    so ∂L/∂log π_t = −m_t·w_t·Â_t/N. Masked tokens stay in N. Stats (floats, over this batch's
    action tokens): ``masked_fraction`` (outside the window; the DIS analogue of a clip fraction,
    also reported as ``clipfrac``), ``masked_low``/``masked_high`` (below/above it), ``ratio_mean``,
    ``mismatch_kl`` (k3 estimate of KL(μ‖π_θ)) and ``tis_clipfrac`` (ρ > C).
    """
    _check_same_2d(logprobs=logprobs, behavior_logprobs=behavior_logprobs, advantages=advantages,
                   action_mask=action_mask)
    _check_num_tokens(num_tokens)
    mask = action_mask.to(logprobs.dtype)
    with torch.no_grad():
        log_ratio = logprobs.detach() - behavior_logprobs
        ratio = torch.exp(log_ratio)
        keep = dis_mask(ratio, eps_low, eps_high)
        weight = ratio if tis_cap is None else ratio.clamp(max=tis_cap)
        coefficient = keep * weight * advantages * mask
    loss = -(coefficient * logprobs).sum() / num_tokens
    with torch.no_grad():
        stats = {
            "masked_fraction": _masked_mean(1.0 - keep, mask),
            "masked_low": _masked_mean((ratio <= 1.0 - eps_low).to(mask.dtype), mask),
            "masked_high": _masked_mean((ratio >= 1.0 + eps_high).to(mask.dtype), mask),
            "ratio_mean": _masked_mean(ratio, mask),
            "mismatch_kl": _masked_mean(k3_kl(log_ratio), mask),
            "tis_clipfrac": 0.0 if tis_cap is None else _masked_mean((ratio > tis_cap).to(mask.dtype), mask),
        }
        stats["clipfrac"] = stats["masked_fraction"]
    return loss, stats


def reference_kl_loss(logprobs: Tensor, ref_logprobs: Tensor, action_mask: Tensor, coef: float,
                      num_tokens: float) -> tuple[Tensor, float]:
    """KL penalty towards a frozen reference policy (the "low-variance" k3 estimator), token sum / N:

        log r_t = log π_ref(a_t|h_t) − log π_θ(a_t|h_t)      (clamped to [−20, 20])
        k_t = min(r_t − 1 − log r_t, 10)
        L_KL = coef · (1/N) Σ_t k_t

    With a_t ~ π_θ, E[r − 1 − log r] = KL(π_θ‖π_ref) ≥ 0, and every term is ≥ 0. The cap at 10 per
    token (verl's ``low_var_kl``) keeps a token the policy has pushed far below the reference from
    owning the step: uncapped, r − 1 − log r grows as e^{log r} (2·10⁴ at log r = 10); a step of a
    run with coef 0.03 had a mean KL of 9.0 (its loss, 0.27, was 0.03 × 9.0) and a gradient norm of
    226, and the policy fell apart (README). A capped token gives no gradient. Returns the loss and the mean per-token estimate over the action tokens."""
    _check_same_2d(logprobs=logprobs, ref_logprobs=ref_logprobs, action_mask=action_mask)
    _check_num_tokens(num_tokens)
    mask = action_mask.to(logprobs.dtype)
    kl = k3_kl((ref_logprobs.detach() - logprobs).clamp(-20.0, 20.0)).clamp(max=10.0) * mask
    return coef * kl.sum() / num_tokens, _masked_mean(kl.detach(), mask)


def ppo_clip_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, action_mask: Tensor,
                         clip_low: float, clip_high: float, num_tokens: float) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate (asymmetric "clip-higher" bounds), token sum over the global count N:

        r_t = exp(log π_θ − log π_old)
        L = (1/N) Σ_t max( −Â_t·r_t, −Â_t·clip(r_t, 1 − ε_low, 1 + ε_high) )

    Stats over this batch's action tokens: ``clipfrac`` (clipped term active), ``ratio_mean``,
    ``approx_kl`` (k3 estimate of KL(π_old‖π_θ)).
    """
    _check_same_2d(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, action_mask=action_mask)
    _check_num_tokens(num_tokens)
    mask = action_mask.to(logprobs.dtype)
    advantages = advantages.detach()
    log_ratio = logprobs - old_logprobs.detach()
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = (torch.maximum(unclipped, clipped) * mask).sum() / num_tokens
    with torch.no_grad():
        stats = {
            "clipfrac": _masked_mean((clipped > unclipped).to(mask.dtype), mask),
            "ratio_mean": _masked_mean(ratio, mask),
            "approx_kl": _masked_mean(k3_kl(log_ratio), mask),
        }
    return loss, stats


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H = −Σ_v p_v log p_v = logsumexp(z) − Σ_v softmax(z)_v · z_v over the last dimension."""
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def teacher_topk_forward_kl_loss(logits: Tensor, top_ids: Tensor, top_logprobs: Tensor, action_mask: Tensor,
                                 temperature: float, coef: float, num_tokens: float) -> tuple[Tensor, float]:
    """Forward KL to the teacher on the student's own states, over the teacher's top k (GKD, Agarwal
    et al. 2024, with β = 0), token sum / N:

        p̃_T(v|h_t) = softmax over the teacher's top-k log-probs at position t (renormalised)
        L_FKL = coef · (1/N) Σ_t Σ_{v ∈ top-k_T(h_t)} p̃_T(v|h_t) · (log p̃_T(v|h_t) − log π_θ(v|h_t))

    with log π_θ(v|h_t) = log_softmax(z_{t−1} / T)[v] (position t's token is predicted at t − 1).
    Unlike the sampled reverse KL its gradient does not vanish where the student is confidently
    wrong (π_θ(a_t) ≈ 1): it raises the teacher's tokens directly. `top_ids`/`top_logprobs` are
    ``[B, T, k]`` aligned with the tokens; returns the loss and the mean per-token value."""
    if top_ids.shape != top_logprobs.shape or top_ids.shape[:2] != action_mask.shape or logits.shape[:2] != action_mask.shape:
        raise ValueError(f"shapes differ: logits {tuple(logits.shape)}, top_ids {tuple(top_ids.shape)}, "
                         f"top_logprobs {tuple(top_logprobs.shape)}, action_mask {tuple(action_mask.shape)}")
    _check_num_tokens(num_tokens)
    student = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1).gather(-1, top_ids[:, 1:])
    teacher = torch.log_softmax(top_logprobs[:, 1:].float(), dim=-1)
    per_token = (teacher.exp() * (teacher - student)).sum(-1)
    per_token = torch.nn.functional.pad(per_token, (1, 0)) * action_mask.to(per_token.dtype)
    return coef * per_token.sum() / num_tokens, _masked_mean(per_token.detach(), action_mask.to(per_token.dtype))


def reverse_kl_advantage(teacher_logprobs: Tensor, student_logprobs: Tensor, action_mask: Tensor) -> Tensor:
    """OPD advantage Â_t = sg[log π_T(a_t|h_t) − log π_θ(a_t|h_t)] on action tokens, 0 elsewhere.

    Its negative is the sampled per-token reverse KL(π_θ‖π_T) (GLM-5 eq. 2).
    """
    _check_same_2d(teacher_logprobs=teacher_logprobs, student_logprobs=student_logprobs, action_mask=action_mask)
    diff = (teacher_logprobs - student_logprobs).detach()
    return torch.where(action_mask != 0, diff, 0.0)
