"""The OPD learning signal (ALGORITHMS.md §5), one function per formula.

All tensors are ``[B, T]`` and aligned with the tokens (position i holds token i's quantity);
``action_mask`` is 1 on tokens the student sampled. Observations, prompts and summaries injected
by the harness are context for both models and never carry an advantage.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rl.losses import reverse_kl_advantage
from opd.teacher import Scored


def task_advantage(rewards: Tensor, rollout_index: Tensor, action_mask: Tensor) -> Tensor:
    """Â^task_t = R − R̄ on action tokens (0 elsewhere), R̄ = the mean reward over the batch's rollouts.

    With one rollout per prompt and no critic this is REINFORCE with a batch baseline; every
    segment of a rollout carries the rollout's reward R (``rewards`` holds it per row)."""
    per_rollout = torch.zeros(int(rollout_index.max()) + 1).scatter(0, rollout_index, rewards)
    return (rewards - per_rollout.mean())[:, None] * (action_mask != 0)


def distillation_advantages(teacher_logprobs: Tensor, student_logprobs: Tensor, action_mask: Tensor,
                            kl_coef: float, task_coef: float = 0.0, task_adv: Tensor | None = None) -> Tensor:
    """Â_t = task_coef · Â^task_t + kl_coef · sg[log π_T(a_t|h_t) − log π_θ(a_t|h_t)]   (GLM-5 eq. 2).

    The second term is :func:`rl.losses.reverse_kl_advantage`; its negative is the sampled per-token
    reverse KL(π_θ‖π_T). ``task_adv`` is needed only when ``task_coef`` is not 0."""
    adv = kl_coef * reverse_kl_advantage(teacher_logprobs, student_logprobs, action_mask)
    if task_coef:
        if task_adv is None:
            raise ValueError("task_coef is set but no task advantage was given")
        adv = adv + task_coef * task_adv * (action_mask != 0)
    return adv


def sampled_reverse_kl(teacher_logprobs: Tensor, student_logprobs: Tensor, action_mask: Tensor) -> Tensor:
    """Per row: (1/n) Σ_t (log π_θ(a_t|h_t) − log π_T(a_t|h_t)) over its n action tokens, a ~ π_θ —
    the Monte-Carlo estimate of the per-token reverse KL(π_θ‖π_T). Returns ``[B]`` (0 for a row
    with no action token)."""
    mask = (action_mask != 0).to(student_logprobs.dtype)
    total = ((student_logprobs - teacher_logprobs) * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1.0)


def recovery(before: float, after: float, expert: float) -> float:
    """ρ_k = (S_after − S_before) / (S_expert − S_before): the share of the expert's gain over the
    student's starting score that distillation recovered (NaN when the expert is no better)."""
    gain = expert - before
    return (after - before) / gain if gain > 0 else float("nan")


def teacher_top_k(scored: list[Scored], width: int, k: int) -> tuple[Tensor, Tensor]:
    """The teachers' top-k ids and log-probs as ``[B, width, k]`` (rows as :func:`teacher_tensor`;
    padding: id 0, log-prob 0, masked out by the action mask)."""
    ids = [x for s in scored for x in s.teacher_top_ids]
    lps = [x for s in scored for x in s.teacher_top_logprobs]
    if len(ids) != sum(len(s.teacher_logprobs) for s in scored) or any(len(r) and len(r[0]) != k for r in ids):
        raise ValueError(f"the teachers' answers carry no top-{k} tokens for every segment (TeacherPool top_k?)")
    out_ids = torch.zeros((len(ids), width, k), dtype=torch.long)
    out_lps = torch.zeros((len(ids), width, k))
    for i, (row_ids, row_lps) in enumerate(zip(ids, lps)):
        out_ids[i, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
        out_lps[i, : len(row_lps)] = torch.tensor(row_lps, dtype=torch.float)
    return out_ids, out_lps


def teacher_tensor(scored: list[Scored], width: int) -> Tensor:
    """The teachers' log-probs as ``[B, width]``, rows in :func:`rl.batch.collate`'s order
    (every segment of every trajectory, in order), right-padded with 0."""
    rows = [logps for s in scored for logps in s.teacher_logprobs]
    out = torch.zeros((len(rows), width))
    for i, logps in enumerate(rows):
        out[i, : len(logps)] = torch.tensor(logps, dtype=torch.float)
    return out
