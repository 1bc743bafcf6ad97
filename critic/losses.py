"""Value loss and critic diagnostics (ALGORITHMS.md §2.4).

Every loss is a token sum divided by ``num_tokens``, the number of action tokens of the whole
optimiser step (all micro-batches, all ranks), so per-micro-batch losses add up to the loss of the
full batch and their gradients accumulate to the full-batch gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_same_2d(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise ValueError(f"expected [B, T] tensors of one shape, got {shapes}")


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, action_mask: Tensor,
                       clip_eps: float | None, num_tokens: float) -> tuple[Tensor, float]:
    """Clipped value loss, token sum over the global token count N:

        L_V = (1/N) Σ_t ½ · max( (V_t − G_t)², (V_old,t + clip(V_t − V_old,t, −ε, ε) − G_t)² )

    over action tokens t; ``clip_eps=None`` gives the unclipped ½(V − G)². Returns
    ``(loss, clipfrac)``, clipfrac being the fraction of this batch's action tokens where the
    clipped term is the larger one (i.e. where the clip takes effect).
    """
    _check_same_2d(values=values, old_values=old_values, returns=returns, action_mask=action_mask)
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    mask = action_mask.to(values.dtype)
    unclipped = (values - returns) ** 2
    if clip_eps is None:
        per_token = unclipped
        clipped_more = torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        v_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        clipped = (v_clipped - returns) ** 2
        per_token = torch.maximum(unclipped, clipped)
        clipped_more = clipped > unclipped
    loss = 0.5 * (per_token * mask).sum() / num_tokens
    with torch.no_grad():
        active = mask.sum()
        clipfrac = float((clipped_more.to(mask.dtype) * mask).sum() / active) if active > 0 else 0.0
    return loss, clipfrac


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """EV = 1 − Var(G − V) / Var(G) over masked tokens (NaN when Var(G) = 0 or nothing is masked)."""
    _check_same_2d(values=values, returns=returns, mask=mask)
    keep = mask > 0
    g = returns.detach().double()[keep]
    v = values.detach().double()[keep]
    if g.numel() == 0:
        return float("nan")
    var_g = g.var(unbiased=False)
    if var_g == 0:
        return float("nan")
    return float(1.0 - (g - v).var(unbiased=False) / var_g)
