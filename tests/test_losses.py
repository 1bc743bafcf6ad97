"""Value loss (critic/losses.py) and policy losses (rl/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch

from critic.losses import clipped_value_loss, explained_variance
from rl.losses import (
    dis_mask,
    dis_policy_loss,
    entropy_from_logits,
    importance_ratio,
    masked_whiten,
    ppo_clip_policy_loss,
    reverse_kl_advantage,
    teacher_topk_forward_kl_loss,
)


def t(rows, dtype: torch.dtype = torch.float64, grad: bool = False) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype, requires_grad=grad)


def assert_close(actual: torch.Tensor, expected, atol: float = 1e-12) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ----------------------------------------------------------------------------- value loss


def value_case():
    # token:        1     2     3     4 (not an action: huge error must not count)
    values = t([[1.0, 0.0, 0.9, 50.0]], grad=True)
    old = t([[0.5, 0.5, 0.5, 0.0]])
    returns = t([[2.0, 0.0, 0.0, 0.0]])
    mask = t([[1, 1, 1, 0]])
    return values, old, returns, mask


def test_clipped_value_loss_hand_case():
    values, old, returns, mask = value_case()
    loss, clipfrac = clipped_value_loss(values, old, returns, mask, clip_eps=0.2, num_tokens=3)
    # token 1: (1 − 2)² = 1        vs clipped V = 0.5 + 0.2 = 0.7: (0.7 − 2)² = 1.69 -> 1.69 (clipped)
    # token 2: (0 − 0)² = 0        vs clipped V = 0.5 − 0.2 = 0.3: 0.09            -> 0.09 (clipped)
    # token 3: (0.9 − 0)² = 0.81   vs clipped V = 0.7: 0.49                          -> 0.81
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.09 + 0.81) / 3, abs=1e-12)
    assert clipfrac == pytest.approx(2 / 3)
    loss.backward()
    # the clipped branch is flat in V (the clip saturates); token 3: ∂/∂V ½(V − G)²/N = 0.9/3
    assert_close(values.grad, [[0.0, 0.0, 0.3, 0.0]])


def test_unclipped_value_loss():
    values, old, returns, mask = value_case()
    loss, clipfrac = clipped_value_loss(values, old, returns, mask, clip_eps=None, num_tokens=3)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.0 + 0.81) / 3, abs=1e-12)
    assert clipfrac == 0.0
    loss.backward()
    assert_close(values.grad, [[-1 / 3, 0.0, 0.3, 0.0]])


def test_value_loss_rejects_bad_shapes():
    values, old, returns, mask = value_case()
    with pytest.raises(ValueError):
        clipped_value_loss(values, old[:, :3], returns, mask, 0.2, 3)
    with pytest.raises(ValueError):
        clipped_value_loss(values, old, returns, mask, 0.2, 0)


def test_explained_variance():
    # masked tokens: G = (1, 2, 3), V = (1, 2, 2): Var(G − V) = Var(0, 0, 1) = 2/9, Var(G) = 2/3
    returns = t([[1.0, 2.0, 3.0, 100.0]])
    values = t([[1.0, 2.0, 2.0, -100.0]])
    mask = t([[1, 1, 1, 0]])
    assert explained_variance(values, returns, mask) == pytest.approx(1 - (2 / 9) / (2 / 3))
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros_like(returns), returns, mask) == pytest.approx(0.0)
    assert math.isnan(explained_variance(values, torch.ones_like(returns), mask))


# ----------------------------------------------------------------------------- whitening, ratio, mask


def test_masked_whiten():
    x = t([[1.0, 2.0, 3.0, 1000.0]])
    mask = t([[1, 1, 1, 0]])
    # mean 2, population variance 2/3
    expected = [[-1 / math.sqrt(2 / 3), 0.0, 1 / math.sqrt(2 / 3), 0.0]]
    assert_close(masked_whiten(x, mask, eps=0.0), expected, atol=1e-12)
    w = masked_whiten(torch.randn(4, 30, dtype=torch.float64), (torch.rand(4, 30) < 0.5).double())
    assert w[w != 0].mean().abs() < 1e-9


def test_importance_ratio_and_dis_mask():
    logp = t([[-1.0, -2.0]])
    mu = t([[-1.5, -1.0]])
    assert_close(importance_ratio(logp, mu), [[math.exp(0.5), math.exp(-1.0)]])
    # coding window (ε_l, ε_h) = (0.8, 3.0): keep 0.2 < ρ < 4.0 (strict)
    ratio = t([[0.1, 0.19, 0.21, 1.0, 3.9, 4.1, 5.0]])
    assert_close(dis_mask(ratio, 0.8, 3.0), [[0, 0, 1, 1, 1, 0, 0]])


# ----------------------------------------------------------------------------- DIS policy loss


def dis_case():
    # token 1: ρ = 1 (kept); 2: ρ = e^{-2} ≈ 0.135 (below 0.2, masked); 3: ρ = e^{0.5} (kept);
    # 4: ρ = e^{1.5} ≈ 4.48 (above 4, masked); 5: not an action token
    behaviour = t([[-1.0, -0.5, -2.0, -3.0, -1.0]])
    logp = t([[-1.0, -2.5, -1.5, -1.5, -0.2]], grad=True)
    adv = t([[1.0, 2.0, -1.0, 3.0, 7.0]])
    mask = t([[1, 1, 1, 1, 0]])
    return logp, behaviour, adv, mask


def test_dis_gradient_is_minus_mask_ratio_advantage_over_n():
    logp, behaviour, adv, mask = dis_case()
    n = 4.0
    loss, stats = dis_policy_loss(logp, behaviour, adv, mask, eps_low=0.8, eps_high=3.0, num_tokens=n)
    loss.backward()
    rho = torch.exp(logp.detach() - behaviour)
    keep = t([[1, 0, 1, 0, 0]])
    assert_close(logp.grad, -keep * rho * adv / n)
    assert_close(logp.grad, [[-1.0 / 4, 0.0, math.exp(0.5) / 4, 0.0, 0.0]])
    # the value is the surrogate itself: −(1/N) Σ m·ρ·Â·log π
    assert loss.item() == pytest.approx(-(1.0 * 1.0 * -1.0 + math.exp(0.5) * -1.0 * -1.5) / n)
    assert stats["masked_fraction"] == pytest.approx(0.5)
    assert stats["clipfrac"] == pytest.approx(0.5)
    assert stats["masked_low"] == pytest.approx(0.25) and stats["masked_high"] == pytest.approx(0.25)
    ratios = [1.0, math.exp(-2.0), math.exp(0.5), math.exp(1.5)]
    assert stats["ratio_mean"] == pytest.approx(sum(ratios) / 4)
    k3 = [r - 1 - math.log(r) for r in ratios]
    assert stats["mismatch_kl"] == pytest.approx(sum(k3) / 4)
    assert all(isinstance(v, float) for v in stats.values())


def test_dis_truncated_importance_weight():
    logp, behaviour, adv, mask = dis_case()
    loss, stats = dis_policy_loss(logp, behaviour, adv, mask, 0.8, 3.0, num_tokens=4, tis_cap=1.2)
    loss.backward()
    # w = min(ρ, 1.2): token 1 -> 1, token 3 -> 1.2 (ρ = 1.65)
    assert_close(logp.grad, [[-1.0 / 4, 0.0, 1.2 / 4, 0.0, 0.0]])
    assert stats["tis_clipfrac"] == pytest.approx(0.5)  # ρ > 1.2 on tokens 3 and 4


def test_dis_without_stop_gradient_would_differ():
    # guards the sg: d/dlogπ of −ρ·Â·logπ without sg is −ρ·Â·(1 + logπ), not −ρ·Â
    logp, behaviour, adv, mask = dis_case()
    loss, _ = dis_policy_loss(logp, behaviour, adv, mask, 0.8, 3.0, num_tokens=4)
    (grad,) = torch.autograd.grad(loss, logp)
    no_sg = -(t([[1, 0, 1, 0, 0]]) * torch.exp(logp - behaviour) * adv * logp).sum() / 4
    (grad_no_sg,) = torch.autograd.grad(no_sg, logp)
    assert not torch.allclose(grad, grad_no_sg)


def test_ppo_clip_policy_loss_hand_case():
    old = t([[0.0, 0.0, 0.0, 0.0]])
    logp = t([[math.log(1.5), math.log(0.5), math.log(0.9), 5.0]], grad=True)
    adv = t([[1.0, -1.0, 1.0, 1.0]])
    mask = t([[1, 1, 1, 0]])
    loss, stats = ppo_clip_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2, num_tokens=3)
    # token 1: max(−1.5, −1.2) = −1.2 (clipped); token 2: max(0.5, 0.8) = 0.8 (clipped); token 3: −0.9
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 0.9) / 3)
    loss.backward()
    assert_close(logp.grad, [[0.0, 0.0, -0.9 / 3, 0.0]])
    assert stats["clipfrac"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- token-mean normalisation


def split_rows_grad(loss_fn, logp: torch.Tensor, rows_a: list[int], rows_b: list[int], n: float):
    """Gradient wrt logp accumulated over two row micro-batches, each divided by n."""
    grad = torch.zeros_like(logp)
    for rows in (rows_a, rows_b):
        part = logp.detach()[rows].clone().requires_grad_(True)
        loss = loss_fn(part, rows, n)
        loss.backward()
        grad[rows] += part.grad
    return grad


@pytest.mark.parametrize("which", ["dis", "ppo", "value"])
def test_micro_batches_with_global_token_count_sum_to_full_batch(which):
    g = torch.Generator().manual_seed(0)
    b, length = 5, 12
    logp = (-torch.rand(b, length, generator=g, dtype=torch.float64)).requires_grad_(True)
    behaviour = logp.detach() + 0.3 * torch.randn(b, length, generator=g, dtype=torch.float64)
    adv = torch.randn(b, length, generator=g, dtype=torch.float64)
    returns = torch.randn(b, length, generator=g, dtype=torch.float64)
    mask = (torch.rand(b, length, generator=g) < 0.6).double()
    mask[0, :10] = 1.0  # uneven token counts per micro-batch
    n = float(mask.sum())

    def loss_fn(x, rows, n):
        if which == "dis":
            return dis_policy_loss(x, behaviour[rows], adv[rows], mask[rows], 0.8, 3.0, n)[0]
        if which == "ppo":
            return ppo_clip_policy_loss(x, behaviour[rows], adv[rows], mask[rows], 0.2, 0.28, n)[0]
        return clipped_value_loss(x, behaviour[rows], returns[rows], mask[rows], 0.2, n)[0]

    full = loss_fn(logp, list(range(b)), n)
    (full_grad,) = torch.autograd.grad(full, logp)
    split = split_rows_grad(loss_fn, logp, [0, 1], [2, 3, 4], n)
    assert_close(split, full_grad, atol=1e-12)
    # a per-micro-batch mean (local N) would weight the two halves differently
    local = split_rows_grad(lambda x, rows, _: loss_fn(x, rows, float(mask[rows].sum())), logp, [0, 1], [2, 3, 4], n)
    assert not torch.allclose(local, full_grad)


def test_masked_tokens_stay_in_n():
    logp, behaviour, adv, mask = dis_case()
    loss, _ = dis_policy_loss(logp, behaviour, adv, mask, 0.8, 3.0, num_tokens=float(mask.sum()))
    # dividing by the kept tokens only (2) would double the loss; N = all 4 action tokens
    assert loss.item() == pytest.approx(-(-1.0 + math.exp(0.5) * 1.5) / 4)


# ----------------------------------------------------------------------------- entropy, OPD


def test_entropy_from_logits():
    uniform = torch.zeros(2, 3, 4, dtype=torch.float64)
    assert_close(entropy_from_logits(uniform), torch.full((2, 3), math.log(4), dtype=torch.float64))
    logits = torch.randn(3, 7, dtype=torch.float64)
    p = torch.softmax(logits, -1)
    assert_close(entropy_from_logits(logits), -(p * p.log()).sum(-1), atol=1e-12)
    big = torch.tensor([[1000.0, 0.0]], dtype=torch.float64)  # stable for large logits
    assert torch.isfinite(entropy_from_logits(big)).all()


def test_reverse_kl_advantage():
    teacher = t([[-1.0, -2.0, -0.5]])
    student = t([[-1.5, -1.0, -9.0]], grad=True)
    mask = t([[1, 1, 0]])
    adv = reverse_kl_advantage(teacher, student, mask)
    assert_close(adv, [[0.5, -1.0, 0.0]])
    assert not adv.requires_grad


def test_teacher_topk_forward_kl_by_hand_and_its_gradient_where_the_student_is_confidently_wrong():
    # one sequence of 3 tokens, vocabulary 3; token 1 is an action, token 2 is not
    logits = t([[[8.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], grad=True)   # position 0 predicts token 1
    top_ids = torch.tensor([[[0, 0], [1, 2], [0, 1]]])
    top_lps = t([[[0.0, 0.0], [math.log(0.6), math.log(0.2)], [0.0, 0.0]]])
    mask = t([[0, 1, 0]])
    loss, mean = teacher_topk_forward_kl_loss(logits, top_ids, top_lps, mask, temperature=1.0, coef=2.0,
                                             num_tokens=4.0)
    student = torch.log_softmax(logits.detach()[0, 0], -1)
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)          # 0.6 and 0.2 renormalised over the top 2
    per_token = float((p * (p.log() - student[[1, 2]])).sum())
    assert loss.item() == pytest.approx(2.0 * per_token / 4.0) and mean == pytest.approx(per_token)
    loss.backward()
    # the student puts ~0.9993 on token 0, which the teacher's top 2 lack: the loss lowers it and raises
    # tokens 1 and 2 with gradients of order coef/N, where the sampled reverse KL's would be ~(1 - 0.9993)
    grad = logits.grad[0, 0]
    assert grad[0] > 0.4 and grad[1] < -0.3 and grad[2] < -0.1
    assert torch.count_nonzero(logits.grad[0, 1:]) == 0          # position 1 predicts token 2: not an action
    with pytest.raises(ValueError, match="shapes differ"):
        teacher_topk_forward_kl_loss(logits, top_ids[:, :2], top_lps[:, :2], mask, 1.0, 1.0, 4.0)


def test_reference_kl_loss_matches_the_hand_computed_k3_and_is_zero_at_the_reference():
    from rl.losses import reference_kl_loss
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0, -0.1]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, mean_kl = reference_kl_loss(logp, ref, mask, coef=0.5, num_tokens=4)
    # token 0: log r = -0.5 -> e^-0.5 - 1 + 0.5; token 1: log r = 0 -> 0; token 2 masked
    k0 = math.exp(-0.5) - 1 + 0.5
    assert loss.item() == pytest.approx(0.5 * k0 / 4, rel=1e-6)
    assert mean_kl == pytest.approx(k0 / 2, rel=1e-6)
    loss.backward()
    # d/dlogp of (e^{ref-logp} - 1 - (ref-logp)) = 1 - e^{ref-logp}: pushes logp toward ref
    assert logp.grad[0, 0].item() == pytest.approx(0.5 * (1 - math.exp(-0.5)) / 4, rel=1e-6)
    assert logp.grad[0, 1].item() == 0.0 and logp.grad[0, 2].item() == 0.0
    same, kl = reference_kl_loss(ref.clone(), ref, mask, coef=1.0, num_tokens=2)
    assert same.item() == 0.0 and kl == 0.0


def test_reference_kl_is_capped_per_token_so_one_far_token_cannot_own_the_step():
    """A token the policy holds 12 nats below the reference: uncapped k3 = e^12 - 13 (~1.6e5) with
    gradient ~1.6e5; capped, it counts 10 and gives no gradient, while a near token keeps its k3."""
    from rl.losses import reference_kl_loss
    logp = torch.tensor([[-14.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -1.2]])
    loss, mean_kl = reference_kl_loss(logp, ref, torch.ones(1, 2), coef=1.0, num_tokens=2)
    near = math.exp(-0.2) - 1 + 0.2
    assert mean_kl == pytest.approx((10.0 + near) / 2, rel=1e-6)
    loss.backward()
    assert logp.grad[0, 0].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx((1 - math.exp(-0.2)) / 2, rel=1e-6)
