"""The distillation learner: the student's policy learner from `rl/` driven by the OPD advantage.

One step (ALGORITHMS.md §5 plugged into the §2.5 surrogate, group size 1, no critic):

    repeat algo.policy_updates times:
    log π_θ   <- no-grad forward of the learner on the batch (rollout temperature; the first one is π_old)
    Â_t       =  task_coef·(R − R̄) + kl_coef·sg[log π_T(a_t|h_t) − log π_θ(a_t|h_t)]   on action tokens
    L_π       =  the policy loss of `rl.learner.PolicyLearner.ppo_step` (`algo.policy_loss`: DIS against the
                 engine's behaviour log-probs, or PPO-clip against π_old), token-mean, one optimiser step
                 per mini-batch (`algo.policy_mini_batches` interleaved slices of the batch's rows, as in RL)
                 (+ forward_kl_coef · the forward KL to the expert's top-k on the same states, if set)
"""

from __future__ import annotations

import torch

from opd.advantages import distillation_advantages, sampled_reverse_kl, task_advantage, teacher_tensor, teacher_top_k
from opd.config import OPDConfig
from opd.teacher import Scored
from rl.batch import collate, trainable
from rl.learner import PolicyLearner, mean_metrics, policy_mini_batches


class OPDLearner:
    def __init__(self, policy: PolicyLearner, opd: OPDConfig, pad_token_id: int) -> None:
        self.policy, self.opd, self.pad_token_id = policy, opd, pad_token_id

    def train_step(self, scored: list[Scored]) -> dict[str, float]:
        """`algo.policy_updates` epochs over scored student trajectories (environment crashes left out),
        each with Â recomputed from the current weights and one optimiser step per mini-batch; returns
        the mean of the steps' learner metrics and per-domain metrics (the reverse KL of the weights the
        batch was scored against, i.e. before the first update)."""
        keep = {t.rollout_id for t in trainable([s.trajectory for s in scored])}
        scored = [s for s in scored if s.trajectory.rollout_id in keep]
        batch = collate([s.trajectory for s in scored], self.pad_token_id)
        teacher = teacher_tensor(scored, batch.input_ids.shape[1]) * batch.action_mask
        task_adv = (task_advantage(batch.rewards, batch.rollout_index, batch.action_mask)
                    if self.opd.task_coef else None)
        top_k = ((*teacher_top_k(scored, batch.input_ids.shape[1], self.opd.forward_kl_top_k), self.opd.forward_kl_coef)
                 if self.opd.forward_kl_coef else None)
        slices = [(rows, batch.rows(rows)) for rows in policy_mini_batches(batch, self.policy.algo.policy_mini_batches)]
        steps = []
        for update in range(self.policy.algo.policy_updates):
            student = self.policy.logprobs(batch) * batch.action_mask
            if update == 0:
                old, row_kl = student, sampled_reverse_kl(teacher, student, batch.action_mask)
            adv = distillation_advantages(teacher, student, batch.action_mask, self.opd.kl_coef, self.opd.task_coef,
                                          task_adv)
            steps += [self.policy.ppo_step(piece, adv[rows], old_logprobs=old[rows],
                                           teacher_top_k=None if top_k is None else
                                           (top_k[0][rows], top_k[1][rows], top_k[2]))
                      for rows, piece in slices]
        learner_metrics = mean_metrics(steps)
        row_domain = [s.domain for s in scored for _ in s.trajectory.segments]
        metrics = {"opd/reverse_kl": float(_token_weighted(row_kl, batch.action_mask, range(len(row_domain)))),
                   "opd/advantage_mean": float(adv.sum() / batch.action_mask.sum()),
                   "train/action_tokens": batch.num_action_tokens, "train/samples": float(len(row_domain))}
        for domain in sorted(set(row_domain)):
            rows = [i for i, d in enumerate(row_domain) if d == domain]
            metrics[f"opd/reverse_kl/{domain}"] = float(_token_weighted(row_kl, batch.action_mask, rows))
        return metrics | domain_pass_rates(scored, "opd/pass_rate") | learner_metrics

    def offpolicy_step(self, scored: list[Scored], prefix: str = "offpolicy") -> dict[str, float]:
        """One optimiser step on experts' own scored episodes (`opd.offpolicy`: the off-policy phase, or a
        replayed step, metrics under `prefix`): the forward KL to each episode's expert top-k on its
        action tokens; per-domain pass rates of the episodes as well."""
        batch = collate([s.trajectory for s in scored], self.pad_token_id)
        top_ids, top_lps = teacher_top_k(scored, batch.input_ids.shape[1], self.opd.forward_kl_top_k)
        metrics = {f"{prefix}/{k}": v for k, v in self.policy.forward_kl_step(batch, top_ids, top_lps).items()}
        return (metrics | domain_pass_rates(scored, f"{prefix}/expert_pass_rate")
                | {f"{prefix}/action_tokens": batch.num_action_tokens})


def domain_pass_rates(scored: list[Scored], key: str) -> dict[str, float]:
    """`{key}/{domain}`: the fraction of the domain's episodes in `scored` that passed."""
    out = {}
    for domain in sorted({s.domain for s in scored}):
        mine = [s.trajectory.passed for s in scored if s.domain == domain]
        out[f"{key}/{domain}"] = sum(mine) / len(mine)
    return out


def _token_weighted(row_values: torch.Tensor, action_mask: torch.Tensor, rows) -> torch.Tensor:
    """Mean of per-row means weighted by each row's action tokens (= the token mean over `rows`)."""
    idx = torch.tensor(list(rows), dtype=torch.long)
    counts = (action_mask[idx] != 0).sum(-1).float()
    return (row_values[idx] * counts).sum() / counts.sum().clamp(min=1.0)
