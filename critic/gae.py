"""Generalised advantage estimation over action tokens (ALGORITHMS.md §2.2, §2.3, §3.3).

All tensors are ``[B, T]`` and aligned with the token sequence of each sample: ``action_mask`` is 1
on the tokens the policy sampled and 0 on prompt, template, tool output and padding. GAE runs over
the *action tokens only* (skip-observation GAE): the action tokens of a row are numbered
t = 1..n and an observation span between two of them is not a step, so V_{t+1} of the last token
of an action span is the value of the first token of the next action span.

Vectorisation (:func:`gae`): the action tokens of each row are scattered into compact columns
numbered from the end of the row (an int16 cumsum of the mask gives the slots), so observation gaps
cost nothing and the backward recursion A_t = δ_t + γλ·A_{t+1} becomes a forward discounted
cumulative sum, evaluated in closed form, y_k = c^k·Σ_{i≤k} c^{−i}·x_i: one ``cumsum`` between two
scalings (:func:`discounted_cumsum_`; chunked only where c^{−k} would leave float64's comfortable
range, a blocked-matrix scan for c ≈ 0). Sparse rewards are added at their compact positions only.
The advantages are gathered back. δ and A are float64; outputs are in the dtype of ``values``.

Across compacted sub-traces (one sample per segment of a rollout), :func:`gae_over_segments`
implements the two boundary modes of §3.3: ``crl`` (every segment ends with the rollout reward,
advantages shrunk by (γλ_p)^{N_{>s}}) and ``boot`` (the segments of a rollout form one chain; the
last action of segment s bootstraps from the first action value of segment s+1).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

BLOCK = 16
"""Block length of the blocked-matrix scan (the fallback for c ≈ 0)."""

LOG_RANGE = 300.0
"""Chunks of the closed-form scan keep c^{±k} within e^{±LOG_RANGE} (float64 reaches e^{±709})."""

MIN_CHUNK = 16
"""Below this chunk length (c < e^{−LOG_RANGE/MIN_CHUNK} ≈ 7e-9) the scan falls back to blocked matrices."""

GAE_MODES = ("crl", "boot")


# ----------------------------------------------------------------------------- shape checks


def _check_same_2d(**tensors: Tensor) -> tuple[int, int]:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(s != first for s in shapes.values()):
        raise ValueError(f"expected [B, T] tensors of one shape, got {shapes}")
    return first[0], first[1]


def _per_row(x: float | Tensor | None, rows: int, name: str, device: torch.device, default: float = 0.0) -> Tensor:
    """A float, a 0-dim tensor or a ``[B]`` tensor as a float64 ``[B]`` tensor on ``device``."""
    if x is None:
        return torch.full((rows,), default, dtype=torch.float64, device=device)
    if isinstance(x, Tensor):
        if x.dim() == 0:
            return x.detach().to(device, torch.float64).expand(rows).clone()
        if tuple(x.shape) != (rows,):
            raise ValueError(f"{name} must be a float or a [B]={rows} tensor, got shape {tuple(x.shape)}")
        return x.detach().to(device, torch.float64)
    return torch.full((rows,), float(x), dtype=torch.float64, device=device)


# ----------------------------------------------------------------------------- the scan


def discount_matrix(discount: Tensor, size: int) -> Tensor:
    """M[..., i, j] = c^{j−i} for j ≥ i, else 0: ``[size, size]`` for a 0-dim c, ``[B, size, size]`` for c: [B]."""
    steps = torch.arange(size, device=discount.device)
    exponent = steps[None, :] - steps[:, None]
    powers = discount[..., None] ** steps.to(discount.dtype)  # c^k, k = 0..size-1
    return powers[..., exponent.clamp(min=0)] * (exponent >= 0).to(discount.dtype)


def _blocked_reverse_cumsum(x: Tensor, discount: Tensor, block: int = BLOCK) -> Tensor:
    """y_t = x_t + c·y_{t+1} by blocked matrix products (the fallback of :func:`discounted_reverse_cumsum`).

    Inside a block of ``block`` tokens y is one matrix product with :func:`discount_matrix`; y at
    the start of every block is the same sum over the block heads with discount c^block (a
    recursive call on T/block columns), and each block adds c^{block−i}·y(start of the next
    block). Only non-negative powers of c appear (no division), so it is exact in structure for
    any c in [0, 1], c = 0 included, at the price of one small GEMM per block.
    """
    rows, length = x.shape
    if rows == 0 or length == 0:
        return x.clone()
    shared = bool((discount == discount[0]).all())
    size = min(length, block)
    num_blocks = -(-length // size)
    if num_blocks * size != length:
        x = torch.nn.functional.pad(x, (0, num_blocks * size - length))
    xb = x.view(rows, num_blocks, size)
    if shared:
        y = xb @ discount_matrix(discount[0], size).T
    else:
        y = torch.einsum("bij,bnj->bni", discount_matrix(discount, size), xb)
    if num_blocks > 1:
        block_starts = _blocked_reverse_cumsum(y[:, :, 0], discount**size, block)
        tail = discount[:, None] ** (size - torch.arange(size, dtype=x.dtype, device=x.device))  # c^{size-i}
        y[:, :-1].addcmul_(tail[:, None, :], block_starts[:, 1:, None])  # + c^{size-i}·y(next block start)
    return y.reshape(rows, num_blocks * size)[:, :length]


def _chunk_length(discounts: list[float], length: int) -> int:
    """Longest chunk over which c^{±k} stays within e^{±LOG_RANGE} for every row's c (``length`` if all c = 1).

    0 when some c is not a positive finite number (the caller then uses the blocked-matrix scan).
    """
    if not all(0.0 < c < math.inf for c in discounts):
        return 0
    log_c = max(abs(math.log(c)) for c in discounts)
    if log_c * length <= LOG_RANGE:
        return length
    return int(LOG_RANGE / log_c)


@functools.lru_cache(maxsize=16)
def _shared_powers(c: float, size: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """(c^k, c^{−k}) for k = 0..size−1; cached (the same γλ and chunk recur batch after batch). Never written to."""
    grow = torch.pow(c, torch.arange(size, dtype=dtype, device=device))
    return grow, grow.reciprocal()


def _row_powers(c: Tensor, size: int) -> Tensor:
    """c_b^k for k = 0..size−1, ``[B, size]``, by doubling: columns [n, 2n) are columns [0, n) times c^n."""
    powers = torch.empty(c.shape[0], size, dtype=c.dtype, device=c.device)
    powers[:, 0] = 1
    filled, c_n = 1, c[:, None]
    while filled < size:
        step = min(filled, size - filled)
        torch.mul(powers[:, :step], c_n, out=powers[:, filled:filled + step])
        c_n = c_n * c_n
        filled += step
    return powers


def discounted_cumsum_(x: Tensor, discount: Tensor) -> Tensor:
    """In place, y_k = x_k + c·y_{k−1} along each row (``x``: float [B, N], c: [B]); returns ``x``.

    Closed form per chunk of K columns (k = 0..K−1 inside the chunk, y_{−1} the previous chunk's end):

        y_k = c^{k} · Σ_{i ≤ k} c^{−i} x_i  +  c^{k+1} · y_{−1}

    i.e. a scale, one ``cumsum`` and a scale; the chunk ends Y_n = e_n + c^K·Y_{n−1} are the same
    scan over N/K columns with discount c^K. Each y_k is a sum of c^{k−i}·x_i accumulated left to
    right, so its rounding error is that of the recursion (no cancellation: nothing is subtracted);
    K is the longest chunk with c^{−K} ≤ e^{LOG_RANGE}, so nothing overflows. For c = γλ ≥ 0.86 a
    2k-token row is a single chunk (three vectorised passes); c = 1 is a plain ``cumsum``. When some
    row's c is so small that a chunk would be shorter than ``MIN_CHUNK`` (c < 7e-9, e.g. λ = 0) or
    not positive, the batch goes to the blocked-matrix scan, which uses non-negative powers only.
    """
    rows, length = x.shape
    if rows == 0 or length == 0:
        return x
    if not x.is_contiguous():
        return x.copy_(discounted_cumsum_(x.contiguous(), discount))
    discounts = discount.tolist()
    shared = min(discounts) == max(discounts)
    if shared and discounts[0] == 1.0:
        return x.cumsum_(1)
    chunk = _chunk_length(discounts, length)
    if chunk < min(MIN_CHUNK, length):
        return x.copy_(_blocked_reverse_cumsum(x.flip(1), discount.to(x.device, x.dtype)).flip(1))
    if shared:
        grow, shrink = _shared_powers(discounts[0], chunk, x.dtype, x.device)  # c^k, c^{−k}: [K], read-only
    else:
        grow = _row_powers(discount.to(x.device, x.dtype), chunk)         # c^k, [B, K]
        shrink = grow.reciprocal()                                        # c^{−k}
    if chunk == length:
        return x.mul_(shrink).cumsum_(1).mul_(grow)
    full, rest = divmod(length, chunk)
    grow, shrink = grow[..., None, :], shrink[..., None, :]               # broadcast over the chunks
    parts = [x[:, : full * chunk].view(rows, full, chunk)]
    if rest:
        parts.append(x[:, full * chunk:].view(rows, 1, rest))
    for part in parts:
        k = part.shape[-1]
        part.mul_(shrink[..., :k]).cumsum_(-1).mul_(grow[..., :k])
    # carry y_{−1} across chunk boundaries
    c = discount.to(x.device, x.dtype)
    ends = discounted_cumsum_(x[:, chunk - 1 :: chunk].clone(), c**chunk)  # Y_n = e_n + c^K·Y_{n−1}
    carry = c[:, None, None] * grow                                        # c^{k+1}, [B, 1, K]
    if full > 1:                                                           # chunks 1..full−1
        parts[0][:, 1:].addcmul_(ends[:, : full - 1, None], carry)
    if rest:
        parts[1].addcmul_(ends[:, full - 1, None, None], carry[..., :rest])
    return x


def discounted_reverse_cumsum(x: Tensor, discount: Tensor) -> Tensor:
    """y_t = Σ_{k≥t} c^{k−t} x_k, i.e. y_t = x_t + c·y_{t+1}, per row (``x``: [B, T], c: [B]).

    The rows reversed, :func:`discounted_cumsum_` (closed form per chunk), reversed back.
    """
    if x.shape[0] == 0 or x.shape[1] == 0:
        return x.clone()
    return discounted_cumsum_(x.flip(1), discount).flip(1)


def action_slots(action_mask: Tensor, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """Skip-observation index of every token, ``[B, T]`` int64, and the action count of each row.

    The k-th action token of a row (k = 1..n, observations skipped) gets slot k; every other token
    gets slot 0, a spare column. With ``reverse`` the numbering runs from the end (the last action
    token gets slot 1, the first gets n). Scattering into ``n_max + 1`` columns with it compacts the
    action tokens of a row to the left (:func:`compact_actions`); gathering with it puts them back
    (:func:`expand_actions`). The cumsum runs in int16 (int32 for T ≥ 2^15): small temporaries; only
    the result is int64, the index dtype ``scatter_``/``gather`` take without a conversion.
    """
    mask = action_mask if action_mask.dtype == torch.bool else action_mask.bool()
    rows, length = mask.shape
    if length == 0:
        return (torch.zeros(rows, 0, dtype=torch.long, device=mask.device),
                torch.zeros(rows, dtype=torch.long, device=mask.device))
    rank = mask.cumsum(1, dtype=torch.int16 if length < 2**15 else torch.int32)
    count = rank[:, -1].long()
    if reverse:
        torch.sub(rank[:, -1:] + 1, rank, out=rank)               # n + 1 − rank
    return rank.mul_(mask).long(), count


def compact_actions(x: Tensor, slots: Tensor, width: int) -> Tensor:
    """``out[b, k]`` = x at the token of slot k of row b (k = 1..width); column 0 and unused slots are 0."""
    out = torch.zeros(x.shape[0], width + 1, dtype=x.dtype, device=x.device).scatter_(1, slots, x)
    out[:, 0] = 0
    return out


def expand_actions(compact: Tensor, slots: Tensor) -> Tensor:
    """Inverse of :func:`compact_actions`: each action token gets its slot's entry, other tokens 0.

    Requires ``compact[:, 0] == 0`` (the spare column non-action tokens read from).
    """
    return compact.gather(1, slots)


# ----------------------------------------------------------------------------- GAE


def gae(rewards: Tensor, values: Tensor, action_mask: Tensor, gamma: float, lam: float | Tensor,
        bootstrap_values: Tensor | None = None,
        bootstrap_advantages: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Skip-observation GAE over the action tokens t = 1..n of each row.

        δ_t = r_t + γ·V_{t+1} − V_t,      V_{n+1} = bootstrap_values (default 0)
        A_t = δ_t + γλ·A_{t+1},           A_{n+1} = bootstrap_advantages (default 0)
        G_t = A_t + V_t

    Only action tokens (``action_mask`` ≠ 0) are steps: V_{t+1} of the last token of an action span
    is the value of the first token of the next action span. ``lam`` is a float or a ``[B]`` tensor
    (per-row λ, e.g. the length-adaptive policy λ). ``bootstrap_values`` ([B]) is the value after
    the last action token (truncated rollouts, BOOT mode); ``bootstrap_advantages`` ([B]) chains a
    row to the advantage of the step after it (BOOT mode). Values at non-action positions are
    ignored (they must be finite: the returns there are 0 + V·0); rewards there must be 0.
    Advantages and returns are exactly 0 where ``action_mask`` is 0. Returns
    ``(advantages, returns)`` in the dtype of ``values``; δ and A are float64 inside.

    Vectorised in three steps, no per-token loop:

    1. Compact: the action tokens of each row are scattered into columns numbered from the *end*,
       column k = n + 1 − t holds action token t (:func:`action_slots`). Observation gaps vanish,
       and column 0, the sink of every non-action token, is the step after the last action:
       V'_0 = V_{n+1}, A'_0 = A_{n+1}.
    2. Scan: in those columns the backward recursion runs forward,

           δ'_k = r'_k + γ·V'_{k−1} − V'_k,      A'_k = δ'_k + γλ·A'_{k−1},

       i.e. A'_k = Σ_{i≤k} (γλ)^{k−i}·δ'_i, a discounted cumulative sum evaluated in closed form
       (:func:`discounted_cumsum_`: scale by (γλ)^{−i}, ``cumsum``, scale by (γλ)^k), float64.
    3. Expand: column 0 is zeroed and A is gathered back to the tokens (non-action tokens read
       the zero); G = A + V·mask in the dtype of ``values``.
    """
    rows, length = _check_same_2d(rewards=rewards, values=values, action_mask=action_mask)
    device = values.device
    discount = _per_row(lam, rows, "lam", device)
    if gamma != 1.0:
        discount = discount * gamma
    if rows == 0 or length == 0:
        return torch.zeros_like(values), torch.zeros_like(values)
    mask = (action_mask if action_mask.dtype == torch.bool else action_mask.bool()).contiguous()
    slots, count = action_slots(mask, reverse=True)                 # [B, T]; 0 off the actions
    width = int(count.max()) + 1                                    # column 0 + n_max action columns
    if width == 1:                                                  # no action token at all
        if bool(rewards.detach().bool().any()):
            raise ValueError("rewards must be 0 outside action_mask (a reward on a non-action token would be lost)")
        return torch.zeros_like(values), torch.zeros_like(values)
    v = torch.zeros(rows, width, dtype=values.dtype, device=device).scatter_(1, slots, values.detach())
    v = v.to(torch.float64)
    v.select(1, 0).zero_()                                          # values of non-action tokens land here

    adv = torch.empty(rows, width, dtype=torch.float64, device=device)  # δ', then A', in place
    if gamma == 1.0:
        torch.sub(v[:, :-1], v[:, 1:], out=adv[:, 1:])              # γ·V'_{k−1} − V'_k
    else:
        torch.mul(v[:, :-1], gamma, out=adv[:, 1:]).sub_(v[:, 1:])
    _add_compact_rewards(adv, rewards.detach(), mask, slots)       # δ'_k = r'_k + γ·V'_{k−1} − V'_k
    if bootstrap_values is not None:                                # V'_0 = V_{n+1}
        adv[:, 1].add_(_per_row(bootstrap_values, rows, "bootstrap_values", device), alpha=gamma)
    adv[:, 0] = (0 if bootstrap_advantages is None                  # A'_0 = A_{n+1}
                 else _per_row(bootstrap_advantages, rows, "bootstrap_advantages", device))
    discounted_cumsum_(adv, discount)                               # A'_k = δ'_k + γλ·A'_{k−1}
    adv.select(1, 0).zero_()                                        # what non-action tokens gather
    advantages = adv.to(values.dtype).gather(1, slots)
    # G_t = A_t + V_t on action tokens; 0 + V·0 = 0 elsewhere
    returns = torch.addcmul(advantages, values.detach(), mask.view(torch.uint8).to(values.dtype))
    return advantages, returns


def _add_compact_rewards(delta: Tensor, rewards: Tensor, mask: Tensor, slots: Tensor) -> None:
    """``delta[b, slots[b, t]] += rewards[b, t]``, after checking that rewards are 0 off the mask.

    Rewards are sparse in practice (an outcome reward and a few penalties per row), so their
    positions are found by a ``nonzero`` over 8-byte words of ``rewards ≠ 0`` (T/8 words a row)
    and only those entries are moved; dense rewards fall back to a full ``scatter_``.
    """
    nonzero = rewards.bool()
    flat = nonzero.reshape(-1)
    if flat.numel() % 8 == 0 and flat.storage_offset() % 8 == 0:
        words = flat.view(torch.int64).nonzero()                    # [H, 1]: words holding a nonzero reward
        if words.shape[0] * 64 <= flat.numel():                     # sparse: ≤ 1 word in 8
            candidates = (words * 8 + torch.arange(8, device=flat.device)).view(-1)
            where = candidates.masked_select(flat.index_select(0, candidates))  # flat index of each nonzero reward
            slot = slots.view(-1).index_select(0, where)            # 0 off the mask
            if not bool(slot.all()):
                raise ValueError("rewards must be 0 outside action_mask (a reward on a non-action token would be lost)")
            row = torch.div(where, mask.shape[1], rounding_mode="floor")
            value = rewards.reshape(-1).index_select(0, where).to(delta.dtype)
            delta.index_put_((row, slot), value, accumulate=True)
            return
    if int(torch.gt(nonzero, mask).view(torch.uint8).max()):
        raise ValueError("rewards must be 0 outside action_mask (a reward on a non-action token would be lost)")
    compact = torch.zeros(delta.shape, dtype=rewards.dtype, device=rewards.device).scatter_(1, slots, rewards)
    delta[:, 1:].add_(compact[:, 1:])


def gae_reference_loop(rewards: Tensor, values: Tensor, action_mask: Tensor, gamma: float, lam: float | Tensor,
                       bootstrap_values: Tensor | None = None,
                       bootstrap_advantages: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Plain Python-loop version of :func:`gae` (same equations, token by token).

    For tests and the benchmark only.
    """
    rows, length = _check_same_2d(rewards=rewards, values=values, action_mask=action_mask)
    cpu = torch.device("cpu")
    lams = _per_row(lam, rows, "lam", cpu).tolist()
    next_values = _per_row(bootstrap_values, rows, "bootstrap_values", cpu).tolist()
    next_advantages = _per_row(bootstrap_advantages, rows, "bootstrap_advantages", cpu).tolist()
    advantages = [[0.0] * length for _ in range(rows)]
    returns = [[0.0] * length for _ in range(rows)]
    for b, (r_row, v_row, m_row) in enumerate(zip(rewards.tolist(), values.tolist(), action_mask.tolist())):
        v_next, a_next = next_values[b], next_advantages[b]
        for t in reversed(range(length)):
            if m_row[t] == 0:
                continue
            delta = r_row[t] + gamma * v_next - v_row[t]
            a_next = delta + gamma * lams[b] * a_next
            v_next = v_row[t]
            advantages[b][t] = a_next
            returns[b][t] = a_next + v_row[t]
    return (torch.tensor(advantages, dtype=values.dtype, device=values.device),
            torch.tensor(returns, dtype=values.dtype, device=values.device))


def length_adaptive_lambda(num_action_tokens: Tensor, alpha: float) -> Tensor:
    """λ_p = 1 − 1/(α·L) (VAPO; SAO and CompactionRL use α = 1.5), clamped to [0, 1].

    L is the number of action tokens of the whole rollout (summed over its sub-traces).
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    length = num_action_tokens.to(torch.float64)
    lam = 1.0 - 1.0 / (alpha * length.clamp(min=1e-12))
    return lam.clamp(0.0, 1.0).to(num_action_tokens.dtype if num_action_tokens.is_floating_point() else torch.float32)


# ----------------------------------------------------------------------------- across sub-traces


def _first_last_action(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the first and of the last action token of each row (0 for rows without one)."""
    length = mask.shape[1]
    first = mask.int().argmax(1)
    last = length - 1 - mask.flip(1).int().argmax(1)
    return first, torch.where(mask.any(1), last, 0)


def trajectory_position_correction(gamma: float, lam: Tensor, tokens_after: Tensor) -> Tensor:
    """(γ·λ_p)^{N_{>s}}: CompactionRL eq. 14, the factor on segment s's local advantages.

    N_{>s} is the number of action tokens in later segments of the same rollout.
    """
    return (gamma * lam) ** tokens_after.to(lam.dtype)


def gae_over_segments(rewards_final: Tensor, values: Tensor, action_mask: Tensor, rollout_index: Tensor,
                      segment_index: Tensor, gamma: float, lam_policy: float | Tensor, lam_critic: float = 1.0,
                      mode: str = "crl", final_values: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """GAE across the compacted sub-traces of rollouts (ALGORITHMS.md §3.3).

    Row b is segment ``segment_index[b]`` of rollout ``rollout_index[b]``, whose outcome reward is
    ``rewards_final[rollout_index[b]]``. Advantages use ``lam_policy`` (float or [B]); returns
    G = A(λ_c) + V use ``lam_critic``.

    ``crl`` (CompactionRL eq. 13–14): each segment is its own episode, r = R at its last action
    token and V after it = 0;

        A_{s,i} = (γλ_p)^{N_{>s}} · A^loc_{s,i},      G_{s,i} = A^loc_{s,i}(λ_c) + V_{s,i}

    ``boot``: the segments of a rollout form one skip-observation chain; r = R only at the last
    action of the last segment, and the last action of segment s bootstraps from the first
    action of segment s+1:  V_{s,n_s+1} = V_{s+1,1},  A_{s,n_s+1} = A_{s+1,1}.

    ``final_values`` ([R], default 0 = terminal) is the value after a rollout's last action token,
    for truncated rollouts; it bootstraps the last segment of the rollout in both modes.

    With γ = λ = 1 and an outcome-only reward both give A = R − V on every action token.
    Segments without action tokens are skipped. Returns ``(advantages, returns)``.
    """
    if mode not in GAE_MODES:
        raise ValueError(f"mode must be one of {GAE_MODES}, got {mode!r}")
    rows, _ = _check_same_2d(values=values, action_mask=action_mask)
    for name, t in (("rollout_index", rollout_index), ("segment_index", segment_index)):
        if tuple(t.shape) != (rows,) or t.is_floating_point():
            raise ValueError(f"{name} must be an integer [B]={rows} tensor, got {t.dtype} {tuple(t.shape)}")
    if rewards_final.dim() != 1:
        raise ValueError(f"rewards_final must be [R], got shape {tuple(rewards_final.shape)}")
    if final_values is not None and tuple(final_values.shape) != tuple(rewards_final.shape):
        raise ValueError(f"final_values must be [R] like rewards_final, got {tuple(final_values.shape)}")
    if rows and (int(rollout_index.min()) < 0 or int(rollout_index.max()) >= rewards_final.shape[0]):
        raise ValueError(f"rollout_index out of range for {rewards_final.shape[0]} rollouts")
    device = values.device
    rollout_index, segment_index = rollout_index.to(device, torch.long), segment_index.to(device, torch.long)
    same_rollout = rollout_index[:, None] == rollout_index[None, :]
    same_segment = same_rollout & (segment_index[:, None] == segment_index[None, :])
    if bool((same_segment.sum(1) > 1).any()):
        raise ValueError("two rows have the same (rollout_index, segment_index)")

    mask = action_mask != 0
    count = mask.sum(1)
    first, last = _first_last_action(mask)
    later = same_rollout & (segment_index[None, :] > segment_index[:, None]) & (count > 0)[None, :]
    has_next = later.any(1)  # not the last (non-empty) segment of its rollout
    lam_p = _per_row(lam_policy, rows, "lam_policy", device)
    reward = rewards_final.to(device, values.dtype)[rollout_index]
    v_final = (torch.zeros(rows, dtype=torch.float64, device=device) if final_values is None
               else final_values.detach().to(device, torch.float64)[rollout_index] * (~has_next))

    def place(at_rows: Tensor) -> Tensor:
        """R of the row's rollout at its last action token, for the selected rows."""
        r = torch.zeros_like(values)
        return r.scatter(1, last[:, None], torch.where(at_rows & (count > 0), reward, 0.0)[:, None])

    if mode == "crl":
        rewards = place(torch.ones(rows, dtype=torch.bool, device=device))
        local_adv, _ = gae(rewards, values, action_mask, gamma, lam_p, v_final)
        _, returns = gae(rewards, values, action_mask, gamma, lam_critic, v_final)
        tokens_after = later.to(torch.float64) @ count.to(torch.float64)
        factor = trajectory_position_correction(gamma, lam_p, tokens_after)
        return (local_adv.double() * factor[:, None]).to(values.dtype), returns

    # boot: walk the chains from their last segment backwards, one segment depth at a time
    next_row = torch.where(later, segment_index[None, :], torch.iinfo(torch.long).max).argmin(1)
    depth = later.sum(1)  # number of non-empty later segments in the rollout
    rewards = place(~has_next)
    v_first = values.gather(1, first[:, None]).squeeze(1).double()
    advantages, returns = torch.zeros_like(values), torch.zeros_like(values)
    a_first = torch.zeros(rows, dtype=torch.float64, device=device)   # A(λ_p) at each row's first action token
    c_first = torch.zeros(rows, dtype=torch.float64, device=device)   # A(λ_c) at each row's first action token
    for d in range(int(depth.max()) + 1 if rows else 0):
        sel = torch.nonzero((depth == d) & (count > 0)).squeeze(1)
        if sel.numel() == 0:
            continue
        nxt, chained = next_row[sel], has_next[sel].double()
        boot_v = v_first[nxt] * chained + v_final[sel]
        args = (rewards[sel], values[sel], action_mask[sel], gamma)
        adv, _ = gae(*args, lam_p[sel], boot_v, a_first[nxt] * chained)
        adv_critic, ret = gae(*args, lam_critic, boot_v, c_first[nxt] * chained)
        advantages[sel], returns[sel] = adv, ret
        a_first[sel] = adv.gather(1, first[sel, None]).squeeze(1).double()
        c_first[sel] = adv_critic.gather(1, first[sel, None]).squeeze(1).double()
    return advantages, returns


__all__ = [
    "BLOCK", "GAE_MODES", "discount_matrix", "discounted_cumsum_", "discounted_reverse_cumsum", "action_slots",
    "compact_actions",
    "expand_actions", "gae", "gae_reference_loop", "length_adaptive_lambda", "trajectory_position_correction",
    "gae_over_segments",
]
