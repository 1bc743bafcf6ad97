"""Skip-observation GAE, length-adaptive λ and GAE across compacted sub-traces (critic/gae.py)."""

from __future__ import annotations

import pytest
import torch

from critic.bench import bench_gae, random_agent_batch
from critic.gae import (
    discounted_cumsum_,
    discounted_reverse_cumsum,
    gae,
    gae_over_segments,
    gae_reference_loop,
    length_adaptive_lambda,
)


def t(rows: list[list[float]], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def assert_close(actual: torch.Tensor, expected, atol: float = 1e-9) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def random_batch(rows: int, length: int, seed: int, action_prob: float = 0.6, dtype=torch.float64):
    """Random rewards/values on action tokens; junk values on observation tokens (must be ignored)."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(rows, length, generator=g) < action_prob).to(dtype)
    values = torch.randn(rows, length, generator=g, dtype=dtype)  # junk where mask == 0
    rewards = torch.randn(rows, length, generator=g, dtype=dtype) * mask
    return rewards, values, mask


# ----------------------------------------------------------------------------- hand-computed


def test_hand_computed_row_with_observation_gap():
    # tokens:  obs  a1   a2   obs  obs  a3   pad
    mask = t([[0, 1, 1, 0, 0, 1, 0]])
    values = t([[0, 0.5, 0.2, 0, 0, 0.4, 0]])
    rewards = t([[0, 0, 0, 0, 0, 1.0, 0]])
    # γ = 1, λ = 0.5; action tokens t = 1..3 with V = (0.5, 0.2, 0.4), V_4 = 0, r_3 = 1
    # δ3 = 1 + 0 − 0.4 = 0.6          A3 = 0.6
    # δ2 = 0 + 0.4 − 0.2 = 0.2        A2 = 0.2 + 0.5·0.6 = 0.5
    # δ1 = 0 + 0.2 − 0.5 = −0.3       A1 = −0.3 + 0.5·0.5 = −0.05
    # G = A + V = (0.45, 0.7, 1.0)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert_close(adv, [[0, -0.05, 0.5, 0, 0, 0.6, 0]])
    assert_close(ret, [[0, 0.45, 0.7, 0, 0, 1.0, 0]])
    ref_adv, ref_ret = gae_reference_loop(rewards, values, mask, 1.0, 0.5)
    assert_close(ref_adv, adv)
    assert_close(ref_ret, ret)


def test_hand_computed_gamma_below_one():
    # two action tokens V = (1, 2), r = (0, 3); γ = 0.5, λ = 0.5
    # δ2 = 3 + 0.5·0 − 2 = 1          A2 = 1
    # δ1 = 0 + 0.5·2 − 1 = 0          A1 = 0 + 0.25·1 = 0.25
    mask = t([[1, 0, 1]])
    adv, ret = gae(t([[0, 0, 3.0]]), t([[1.0, 9.0, 2.0]]), mask, gamma=0.5, lam=0.5)
    assert_close(adv, [[0.25, 0, 1.0]])
    assert_close(ret, [[1.25, 0, 3.0]])


def test_bootstrap_value_and_bootstrap_advantage():
    # V = (0.2, 0.4), r = 0, V_3 = 0.9 (truncated), γ = 1, λ = 0.5
    # δ2 = 0.9 − 0.4 = 0.5   A2 = 0.5
    # δ1 = 0.4 − 0.2 = 0.2   A1 = 0.2 + 0.5·0.5 = 0.45
    mask, values, rewards = t([[1, 1, 0]]), t([[0.2, 0.4, 0]]), t([[0, 0, 0]])
    adv, ret = gae(rewards, values, mask, 1.0, 0.5, bootstrap_values=t([0.9])[0:1])
    assert_close(adv, [[0.45, 0.5, 0]])
    assert_close(ret, [[0.65, 0.9, 0]])
    # plus A_3 = 1: A2 = 0.5 + 0.5·1 = 1.0, A1 = 0.2 + 0.5·1.0 = 0.7
    adv, _ = gae(rewards, values, mask, 1.0, 0.5, bootstrap_values=t([0.9])[0:1],
                 bootstrap_advantages=t([1.0])[0:1])
    assert_close(adv, [[0.7, 1.0, 0]])
    # the default is terminal: V_3 = 0
    adv, _ = gae(rewards, values, mask, 1.0, 0.5)
    assert_close(adv, [[0.2 + 0.5 * -0.4, -0.4, 0]])


def test_per_row_lambda():
    # the same row twice, λ = 0.5 and λ = 1: with λ = 1 (γ = 1) A_t = Σ_k≥t δ_k = R − V_t
    mask = t([[0, 1, 1, 0, 0, 1, 0]] * 2)
    values = t([[0, 0.5, 0.2, 0, 0, 0.4, 0]] * 2)
    rewards = t([[0, 0, 0, 0, 0, 1.0, 0]] * 2)
    adv, _ = gae(rewards, values, mask, 1.0, torch.tensor([0.5, 1.0]))
    assert_close(adv[0], [0, -0.05, 0.5, 0, 0, 0.6, 0])
    assert_close(adv[1], [0, 0.5, 0.8, 0, 0, 0.6, 0])


# ----------------------------------------------------------------------------- properties


def test_observation_gap_does_not_change_action_advantages():
    g = torch.Generator().manual_seed(0)
    n = 50
    values = torch.randn(1, n, generator=g, dtype=torch.float64)
    rewards = torch.randn(1, n, generator=g, dtype=torch.float64)
    adv, ret = gae(rewards, values, torch.ones(1, n, dtype=torch.float64), 0.97, 0.9)
    # insert observation spans (junk values, zero reward) between action tokens
    keep = torch.zeros(n * 3, dtype=torch.bool)
    keep[torch.sort(torch.randperm(n * 3, generator=g)[:n]).values] = True
    gapped_values = torch.randn(1, n * 3, generator=g, dtype=torch.float64) * 100
    gapped_values[0, keep] = values[0]
    gapped_rewards = torch.zeros(1, n * 3, dtype=torch.float64)
    gapped_rewards[0, keep] = rewards[0]
    gapped_adv, gapped_ret = gae(gapped_rewards, gapped_values, keep[None].double(), 0.97, 0.9)
    assert_close(gapped_adv[0, keep], adv[0], atol=1e-12)
    assert_close(gapped_ret[0, keep], ret[0], atol=1e-12)
    assert torch.all(gapped_adv[0, ~keep] == 0) and torch.all(gapped_ret[0, ~keep] == 0)


def test_exactly_zero_outside_mask_and_empty_rows():
    rewards, values, mask = random_batch(6, 40, seed=1)
    mask[2] = 0
    rewards[2] = 0
    adv, ret = gae(rewards, values, mask, 1.0, 0.95, bootstrap_values=torch.ones(6, dtype=torch.float64))
    assert torch.all(adv[mask == 0] == 0)
    assert torch.all(ret[mask == 0] == 0)
    assert torch.all(adv[2] == 0)


@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0, "per-row"])
@pytest.mark.parametrize("rows,length", [(1, 1), (3, 15), (5, 16), (4, 17), (7, 300), (3, 700)])
def test_vectorised_matches_reference_loop(gamma, lam, rows, length):
    rewards, values, mask = random_batch(rows, length, seed=rows * 1000 + length, action_prob=0.8)
    g = torch.Generator().manual_seed(length)
    lam_arg = torch.rand(rows, generator=g, dtype=torch.float64) if lam == "per-row" else lam
    boot_v = torch.randn(rows, generator=g, dtype=torch.float64)
    boot_a = torch.randn(rows, generator=g, dtype=torch.float64)
    for kwargs in ({}, {"bootstrap_values": boot_v, "bootstrap_advantages": boot_a}):
        adv, ret = gae(rewards, values, mask, gamma, lam_arg, **kwargs)
        ref_adv, ref_ret = gae_reference_loop(rewards, values, mask, gamma, lam_arg, **kwargs)
        assert_close(adv, ref_adv, atol=1e-9)
        assert_close(ret, ref_ret, atol=1e-9)


@pytest.mark.parametrize("n", [15, 255, 256, 4095])
def test_dense_rows_at_block_boundaries(n):
    # n + 1 compacted slots fill whole blocks of 16 (and 16 blocks of 16): exercises the recursion
    g = torch.Generator().manual_seed(n)
    values = torch.randn(3, n, generator=g, dtype=torch.float64)
    rewards = torch.randn(3, n, generator=g, dtype=torch.float64)
    mask = torch.ones(3, n, dtype=torch.float64)
    lam = torch.tensor([0.5, 0.9, 1.0], dtype=torch.float64)
    adv, ret = gae(rewards, values, mask, 0.99, lam)
    ref_adv, ref_ret = gae_reference_loop(rewards, values, mask, 0.99, lam)
    assert_close(adv, ref_adv, atol=1e-9)
    assert_close(ret, ref_ret, atol=1e-9)


def test_float32_inputs_keep_dtype_and_match_reference():
    rewards, values, mask = random_batch(8, 500, seed=3, dtype=torch.float32)
    adv, ret = gae(rewards, values, mask, 1.0, torch.full((8,), 0.95))
    assert adv.dtype == ret.dtype == torch.float32
    ref_adv, ref_ret = gae_reference_loop(rewards, values, mask, 1.0, torch.full((8,), 0.95))
    assert_close(adv, ref_adv, atol=1e-5)
    assert_close(ret, ref_ret, atol=1e-5)


def test_long_sequence_precision_lambda_one():
    # 20k action tokens, γ = λ = 1: A_t = Σ_{k≥t} r_k − V_t exactly (telescoping), float64 inside
    g = torch.Generator().manual_seed(4)
    n = 20_000
    values = torch.randn(2, n, generator=g, dtype=torch.float64)
    rewards = torch.randn(2, n, generator=g, dtype=torch.float64)
    adv, _ = gae(rewards, values, torch.ones(2, n, dtype=torch.float64), 1.0, 1.0)
    expected = rewards.flip(1).cumsum(1).flip(1) - values
    assert_close(adv, expected, atol=1e-9)


@pytest.mark.parametrize("length", [1, 16, 17, 256, 1000, 4096])
@pytest.mark.parametrize("shared", [False, True])
def test_discounted_reverse_cumsum_against_recursion(length, shared):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, length, generator=g, dtype=torch.float64)
    c = torch.tensor([0.97] * 4 if shared else [0.0, 0.3, 0.99, 1.0], dtype=torch.float64)
    y = discounted_reverse_cumsum(x, c)
    expected = torch.zeros_like(x)
    running = torch.zeros(4, dtype=torch.float64)
    for i in reversed(range(x.shape[1])):
        running = x[:, i] + c * running
        expected[:, i] = running
    assert_close(y, expected, atol=1e-9)
    if not shared:
        assert_close(y[0], x[0])  # c = 0: no carry at all


def forward_recursion(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    y, running = torch.zeros_like(x), torch.zeros(x.shape[0], dtype=x.dtype)
    for i in range(x.shape[1]):
        running = x[:, i] + c * running
        y[:, i] = running
    return y


@pytest.mark.parametrize("length", [1, 15, 16, 17, 433, 1000, 3001])
@pytest.mark.parametrize("discounts", [
    [0.95] * 3,              # one chunk up to ~5.8k columns
    [0.5] * 3,               # chunks of 432 columns, carries between them, a partial last chunk
    [1e-3] * 3,              # chunks of 43
    [1e-12] * 3,             # chunk < MIN_CHUNK: blocked-matrix fallback
    [0.0, 0.0, 0.0],         # c = 0: fallback, y = x exactly
    [1.0] * 3,               # plain cumsum
    [0.3, 0.9, 1.0],         # per-row c, chunked by the smallest
    [0.0, 0.5, 1.0],         # per-row with c = 0: fallback
])
def test_discounted_cumsum_chunks_against_recursion(length, discounts):
    g = torch.Generator().manual_seed(length)
    x = torch.randn(3, length, generator=g, dtype=torch.float64) * 10
    c = torch.tensor(discounts, dtype=torch.float64)
    y = discounted_cumsum_(x.clone(), c)
    assert_close(y, forward_recursion(x, c), atol=1e-9)
    # the reverse scan is the same thing on reversed rows
    assert_close(discounted_reverse_cumsum(x, c), forward_recursion(x.flip(1), c).flip(1), atol=1e-9)


def test_discounted_cumsum_non_contiguous_input():
    x = torch.randn(50, 4, dtype=torch.float64).t()  # [4, 50], not contiguous
    c = torch.tensor([0.2, 0.6, 0.99, 1.0], dtype=torch.float64)
    expected = forward_recursion(x.clone(), c)
    y = discounted_cumsum_(x, c)
    assert y is x
    assert_close(x, expected, atol=1e-12)


def sparse_rewards(mask: torch.Tensor, seed: int, per_row: int = 3) -> torch.Tensor:
    """A few nonzero rewards per row, on action tokens only (the realistic, sparse case)."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.zeros_like(mask)
    for b in range(mask.shape[0]):
        actions = torch.nonzero(mask[b]).squeeze(1)
        if actions.numel():
            pick = actions[torch.randint(0, actions.numel(), (per_row,), generator=g)]
            rewards[b, pick] = torch.randn(per_row, generator=g, dtype=mask.dtype)
    return rewards


@pytest.mark.parametrize("length", [64, 203, 1000])  # 203·rows is not a multiple of 8: the dense path
@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (1.0, 0.95), (0.99, 0.9), (0.9, 0.0), (1.0, "per-row")])
def test_sparse_rewards_match_reference(length, gamma, lam):
    _, values, mask = random_batch(8, length, seed=length, action_prob=0.5)
    rewards = sparse_rewards(mask, seed=length)
    lam_arg = torch.linspace(0.3, 1.0, 8, dtype=torch.float64) if lam == "per-row" else lam
    boot_v = torch.randn(8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for kwargs in ({}, {"bootstrap_values": boot_v, "bootstrap_advantages": -boot_v}):
        adv, ret = gae(rewards, values, mask, gamma, lam_arg, **kwargs)
        ref_adv, ref_ret = gae_reference_loop(rewards, values, mask, gamma, lam_arg, **kwargs)
        assert_close(adv, ref_adv, atol=1e-9)
        assert_close(ret, ref_ret, atol=1e-9)


@pytest.mark.parametrize("sparse", [True, False])
def test_reward_off_the_mask_raises_on_both_paths(sparse):
    _, values, mask = random_batch(4, 64, seed=2, action_prob=0.5)
    rewards = sparse_rewards(mask, seed=2) if sparse else torch.randn(4, 64, dtype=torch.float64) * mask
    off = torch.nonzero(mask == 0)[0]
    rewards[off[0], off[1]] = 0.5
    with pytest.raises(ValueError, match="rewards must be 0 outside action_mask"):
        gae(rewards, values, mask, 1.0, 0.95)
    with pytest.raises(ValueError, match="rewards must be 0 outside action_mask"):
        gae(t([[0, 1.0]]), t([[0, 0]]), t([[0, 0]]), 1.0, 1.0)  # no action token at all


def test_bool_mask_and_non_contiguous_inputs():
    rewards, values, mask = random_batch(5, 120, seed=6)
    adv, ret = gae(rewards.t().contiguous().t(), values.t().contiguous().t(), mask.bool(), 0.97, 0.9)
    ref_adv, ref_ret = gae_reference_loop(rewards, values, mask, 0.97, 0.9)
    assert_close(adv, ref_adv, atol=1e-9)
    assert_close(ret, ref_ret, atol=1e-9)


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (1.0, 0.95), (0.99, 0.95), (1.0, "per-row")])
def test_bench_batch_float32_matches_reference(gamma, lam):
    # the benchmark's batch shape in small: prompt, action spans, observation gaps, padding, float32
    rewards, values, mask = random_agent_batch(6, 1024, torch.Generator().manual_seed(3))
    lam_arg = torch.linspace(0.5, 1.0, 6) if lam == "per-row" else lam
    adv, ret = gae(rewards, values, mask, gamma, lam_arg)
    ref_adv, ref_ret = gae_reference_loop(rewards, values, mask, gamma, lam_arg)
    assert adv.dtype == ret.dtype == torch.float32
    assert_close(adv, ref_adv, atol=1e-5)
    assert_close(ret, ref_ret, atol=1e-5)
    assert torch.all(adv[mask == 0] == 0) and torch.all(ret[mask == 0] == 0)


def test_bench_gae_reports_agreement():
    result = bench_gae(batch=4, seq_len=256, repeats=3, loop_repeats=1)
    assert result["max_abs_diff"] < 1e-5
    assert result["vectorised_ms"] > 0 and result["python_loop_ms"] > 0 and result["speedup"] > 0
    assert {"page_faults_per_call", "vectorised_cold_heap_ms", "threads"} <= set(result)


def test_rewards_outside_mask_and_bad_shapes_raise():
    mask = t([[1, 0]])
    with pytest.raises(ValueError, match="rewards must be 0 outside action_mask"):
        gae(t([[0, 1.0]]), t([[0, 0]]), mask, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        gae(t([[0, 0, 0]]), t([[0, 0]]), mask, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        gae(torch.zeros(2), torch.zeros(2), torch.ones(2), 1.0, 1.0)
    with pytest.raises(ValueError, match="lam"):
        gae(t([[0, 0]]), t([[0, 0]]), mask, 1.0, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="bootstrap_values"):
        gae(t([[0, 0]]), t([[0, 0]]), mask, 1.0, 1.0, bootstrap_values=torch.zeros(3))


def test_length_adaptive_lambda():
    lam = length_adaptive_lambda(torch.tensor([1.0, 2.0, 10.0, 1000.0]), alpha=1.5)
    assert_close(lam.double(), [1 - 1 / 1.5, 1 - 1 / 3, 1 - 1 / 15, 1 - 1 / 1500], atol=1e-7)
    # VAPO's α = 0.05 on a short rollout: 1 − 1/0.5 < 0, clamped to 0
    assert_close(length_adaptive_lambda(torch.tensor([10.0]), alpha=0.05).double(), [0.0])
    with pytest.raises(ValueError):
        length_adaptive_lambda(torch.tensor([10.0]), alpha=0.0)


# ----------------------------------------------------------------------------- across sub-traces


def two_segment_rollout():
    """Rollout 0 in two segments (rows given out of order), plus a one-segment rollout 1.

    segment 0 of rollout 0: action values (0.2, 0.4); segment 1: (0.6, 0.8); R_0 = 1.
    rollout 1: action values (0.5,); R_1 = 0.
    """
    mask = t([
        [0, 0, 1, 1, 0],   # rollout 0, segment 1 (summary + kept steps are observations)
        [0, 1, 0, 1, 0],   # rollout 0, segment 0 (observation between the two actions)
        [0, 1, 0, 0, 0],   # rollout 1, segment 0
    ])
    values = t([
        [7, 7, 0.6, 0.8, 7],
        [7, 0.2, 7, 0.4, 7],
        [7, 0.5, 7, 7, 7],
    ])
    return (t([1.0, 0.0]), values, mask, torch.tensor([0, 0, 1]), torch.tensor([1, 0, 0]))


def test_crl_hand_computed():
    rewards_final, values, mask, rollout, segment = two_segment_rollout()
    adv, ret = gae_over_segments(rewards_final, values, mask, rollout, segment, gamma=1.0, lam_policy=0.5,
                                 lam_critic=1.0, mode="crl")
    # segment 1: δ = (0.8 − 0.6, 1 − 0.8) = (0.2, 0.2); A = (0.2 + 0.5·0.2, 0.2) = (0.3, 0.2); N_{>1} = 0
    assert_close(adv[0], [0, 0, 0.3, 0.2, 0])
    # segment 0 (its own episode, r = R at its end): δ = (0.4 − 0.2, 1 − 0.4) = (0.2, 0.6)
    # A^loc = (0.2 + 0.5·0.6, 0.6) = (0.5, 0.6); N_{>0} = 2 -> ×(γλ)² = 0.25 -> (0.125, 0.15)
    assert_close(adv[1], [0, 0.125, 0, 0.15, 0])
    # rollout 1: δ = 0 − 0.5
    assert_close(adv[2], [0, -0.5, 0, 0, 0])
    # critic returns with γ = λ_c = 1 are R on every action token
    assert_close(ret, [[0, 0, 1, 1, 0], [0, 1, 0, 1, 0], [0, 0, 0, 0, 0]])


def test_boot_hand_computed():
    rewards_final, values, mask, rollout, segment = two_segment_rollout()
    adv, ret = gae_over_segments(rewards_final, values, mask, rollout, segment, gamma=1.0, lam_policy=0.5,
                                 lam_critic=1.0, mode="boot")
    # one chain V = (0.2, 0.4 | 0.6, 0.8), r = (0, 0 | 0, 1): δ = (0.2, 0.2, 0.2, 0.2)
    # A4 = 0.2, A3 = 0.3, A2 = 0.2 + 0.5·0.3 = 0.35, A1 = 0.2 + 0.5·0.35 = 0.375
    assert_close(adv[0], [0, 0, 0.3, 0.2, 0])
    assert_close(adv[1], [0, 0.375, 0, 0.35, 0])
    assert_close(adv[2], [0, -0.5, 0, 0, 0])
    assert_close(ret, [[0, 0, 1, 1, 0], [0, 1, 0, 1, 0], [0, 0, 0, 0, 0]])


def random_segments(seed: int, rollouts: int = 5, max_segments: int = 4, length: int = 60):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for r in range(rollouts):
        for s in range(int(torch.randint(1, max_segments + 1, (1,), generator=g))):
            rows.append((r, s))
    order = torch.randperm(len(rows), generator=g).tolist()
    rollout = torch.tensor([rows[i][0] for i in order])
    segment = torch.tensor([rows[i][1] for i in order])
    mask = (torch.rand(len(rows), length, generator=g) < 0.5).double()
    mask[:, 0] = 0  # a prompt token
    values = torch.randn(len(rows), length, generator=g, dtype=torch.float64)
    rewards_final = torch.randn(rollouts, generator=g, dtype=torch.float64)
    return rewards_final, values, mask, rollout, segment


@pytest.mark.parametrize("mode", ["crl", "boot"])
def test_gamma_lambda_one_gives_r_minus_v(mode):
    rewards_final, values, mask, rollout, segment = random_segments(seed=7)
    adv, ret = gae_over_segments(rewards_final, values, mask, rollout, segment, 1.0, 1.0, 1.0, mode)
    expected = (rewards_final[rollout][:, None] - values) * mask
    assert_close(adv, expected, atol=1e-9)
    assert_close(ret, rewards_final[rollout][:, None] * mask, atol=1e-9)


def concatenate_rollout(values, mask, rollout, segment, r):
    """The action tokens of rollout r, in segment order, as one row (observations dropped)."""
    rows = sorted((int(segment[b]), b) for b in range(len(rollout)) if int(rollout[b]) == r)
    parts = [(b, mask[b] != 0) for _, b in rows]
    return parts, torch.cat([values[b][keep] for b, keep in parts])


def test_boot_equals_one_chain_over_the_concatenated_rollout():
    rewards_final, values, mask, rollout, segment = random_segments(seed=8)
    gamma, lam_c = 0.9, 0.97
    lam_rollout = torch.tensor([0.3, 0.6, 0.9, 0.95, 1.0], dtype=torch.float64)
    final_values = torch.randn(5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    for fv in (None, final_values):
        adv, ret = gae_over_segments(rewards_final, values, mask, rollout, segment, gamma,
                                     lam_rollout[rollout], lam_c, "boot", final_values=fv)
        for r in range(5):
            parts, v = concatenate_rollout(values, mask, rollout, segment, r)
            rew = torch.zeros_like(v)
            rew[-1] = rewards_final[r]
            boot = None if fv is None else fv[r:r + 1]
            ones = torch.ones(1, len(v), dtype=torch.float64)
            ref_adv, _ = gae_reference_loop(rew[None], v[None], ones, gamma, float(lam_rollout[r]), boot)
            _, ref_ret = gae_reference_loop(rew[None], v[None], ones, gamma, lam_c, boot)
            assert_close(torch.cat([adv[b][keep] for b, keep in parts]), ref_adv[0], atol=1e-9)
            assert_close(torch.cat([ret[b][keep] for b, keep in parts]), ref_ret[0], atol=1e-9)


def test_crl_equals_local_gae_times_position_correction():
    rewards_final, values, mask, rollout, segment = random_segments(seed=10)
    gamma, lam_c = 0.9, 0.97
    lam_rows = torch.rand(len(rollout), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    adv, ret = gae_over_segments(rewards_final, values, mask, rollout, segment, gamma, lam_rows, lam_c, "crl")
    for b in range(len(rollout)):
        keep = mask[b] != 0
        v = values[b][keep]
        rew = torch.zeros_like(v)
        rew[-1] = rewards_final[rollout[b]]
        ones = torch.ones(1, len(v), dtype=torch.float64)
        later = (rollout == rollout[b]) & (segment > segment[b])
        tokens_after = int((mask[later] != 0).sum())
        ref_adv, _ = gae_reference_loop(rew[None], v[None], ones, gamma, float(lam_rows[b]))
        _, ref_ret = gae_reference_loop(rew[None], v[None], ones, gamma, lam_c)
        factor = (gamma * float(lam_rows[b])) ** tokens_after
        assert_close(adv[b][keep], ref_adv[0] * factor, atol=1e-9)
        assert_close(ret[b][keep], ref_ret[0], atol=1e-9)
        assert torch.all(adv[b][~keep] == 0) and torch.all(ret[b][~keep] == 0)


def test_segments_without_action_tokens_are_skipped():
    rewards_final, values, mask, rollout, segment = two_segment_rollout()
    # insert an empty segment between the two segments of rollout 0 (renumber segment 1 -> 2)
    mask = torch.cat([mask, torch.zeros(1, 5, dtype=torch.float64)])
    values = torch.cat([values, torch.full((1, 5), 3.0, dtype=torch.float64)])
    rollout = torch.tensor([0, 0, 1, 0])
    segment = torch.tensor([2, 0, 0, 1])
    adv, _ = gae_over_segments(rewards_final, values, mask, rollout, segment, 1.0, 0.5, 1.0, "boot")
    assert_close(adv[1], [0, 0.375, 0, 0.35, 0])
    assert torch.all(adv[3] == 0)
    adv, _ = gae_over_segments(rewards_final, values, mask, rollout, segment, 1.0, 0.5, 1.0, "crl")
    assert_close(adv[1], [0, 0.125, 0, 0.15, 0])


def test_over_segments_rejects_bad_input():
    rewards_final, values, mask, rollout, segment = two_segment_rollout()
    with pytest.raises(ValueError, match="mode"):
        gae_over_segments(rewards_final, values, mask, rollout, segment, 1.0, 0.5, 1.0, "grpo")
    with pytest.raises(ValueError, match="same"):
        gae_over_segments(rewards_final, values, mask, rollout, torch.tensor([0, 0, 0]), 1.0, 0.5)
    with pytest.raises(ValueError, match="rollout_index"):
        gae_over_segments(rewards_final, values, mask, torch.tensor([0, 0, 2]), segment, 1.0, 0.5)
    with pytest.raises(ValueError, match="segment_index"):
        gae_over_segments(rewards_final, values, mask, rollout, segment.double(), 1.0, 0.5)


def test_int32_indices_and_float32_values_over_segments():
    rewards_final, values, mask, rollout, segment = two_segment_rollout()
    adv, ret = gae_over_segments(rewards_final.float(), values.float(), mask.float(), rollout.int(), segment.int(),
                                 1.0, 0.5, 1.0, "boot")
    assert adv.dtype == torch.float32
    assert_close(adv[1], [0, 0.375, 0, 0.35, 0], atol=1e-6)
