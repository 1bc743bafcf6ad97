"""Turn trajectories into padded tensors and micro-batches for the learner.

One training sample per segment (sub-trace). Micro-batches are formed by a token budget over
samples sorted by length: padded (`rows x longest row <= budget`, padding stays small) or packed
(``algo.pack_sequences``: `sum of lengths <= budget`, first-fit decreasing; the rows of a micro-batch
run as one sequence with position ids restarting at each sample, so no padding is computed at all:
transformers then masks attention per sample, and flash-attention runs it as variable-length).
Position i of every tensor is aligned with token i: `action_mask[:, i]` says whether token i was
sampled by the policy, `behavior_logprobs[:, i]` is its behaviour log-prob; the log-prob and the
value of token i are read from the model's output at position i-1.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from rollout.trajectory import Status, Trajectory


@dataclass
class SampleBatch:
    input_ids: torch.Tensor          # [B, T] long, right-padded
    attention_mask: torch.Tensor     # [B, T] long
    action_mask: torch.Tensor        # [B, T] float
    behavior_logprobs: torch.Tensor  # [B, T] float
    rewards: torch.Tensor            # [B] rollout reward of each sample
    rollout_index: torch.Tensor      # [B] long, which rollout a sample belongs to
    segment_index: torch.Tensor      # [B] long, position of the segment in its rollout
    rollout_action_tokens: torch.Tensor  # [B] action tokens of the whole rollout (L)
    oldest_version: torch.Tensor     # [B] long
    sample_index: torch.Tensor       # [B] long, the sample's row in the collated batch (shards and slices keep it)

    @property
    def num_action_tokens(self) -> float:
        return float(self.action_mask.sum())

    def to(self, device: torch.device | str) -> "SampleBatch":
        """The batch on `device` (the learner's): collate builds it on the CPU."""
        return SampleBatch(*(t.to(device) for t in self.tensors()))

    def rows(self, idx: list[int]) -> "SampleBatch":
        """A micro-batch: the given rows, trimmed to their longest sequence (no rows: an empty batch)."""
        sel = torch.tensor(idx, dtype=torch.long, device=self.input_ids.device)
        length = int(self.attention_mask[sel].sum(-1).max()) if idx else 0
        return SampleBatch(*(t[sel][:, :length] if t.dim() == 2 else t[sel] for t in self.tensors()))

    def tensors(self) -> list[torch.Tensor]:
        """Every field, in declaration order (what the constructor takes)."""
        return [getattr(self, f.name) for f in fields(self)]


def trainable(trajectories: list[Trajectory]) -> list[Trajectory]:
    """Trajectories the learner may use: environment crashes are excluded (GLM-5 §3.2)."""
    return [t for t in trajectories if t.status != Status.ENV_ERROR and t.num_action_tokens > 0]


def collate(trajectories: list[Trajectory], pad_token_id: int) -> SampleBatch:
    segs = [(r, s, t) for r, t in enumerate(trajectories) for s in t.segments]
    if not segs:
        raise ValueError("no trainable samples in this batch")
    longest = max(len(s.tokens) for _, s, _ in segs)
    n = len(segs)
    ids = torch.full((n, longest), pad_token_id, dtype=torch.long)
    attn = torch.zeros((n, longest), dtype=torch.long)
    act = torch.zeros((n, longest))
    blp = torch.zeros((n, longest))
    for i, (_, s, _) in enumerate(segs):
        k = len(s.tokens)
        ids[i, :k] = torch.tensor(s.tokens)
        attn[i, :k] = 1
        act[i, :k] = torch.tensor(s.loss_mask, dtype=torch.float)
        blp[i, :k] = torch.tensor(s.behavior_logprobs)
    act[:, 0] = 0.0  # the first token has no context to be predicted from
    return SampleBatch(
        input_ids=ids, attention_mask=attn, action_mask=act, behavior_logprobs=blp,
        rewards=torch.tensor([t.reward for _, _, t in segs], dtype=torch.float),
        rollout_index=torch.tensor([r for r, _, _ in segs], dtype=torch.long),
        segment_index=torch.tensor([s.index for _, s, _ in segs], dtype=torch.long),
        rollout_action_tokens=torch.tensor([t.num_action_tokens for _, _, t in segs], dtype=torch.float),
        oldest_version=torch.tensor([s.oldest_version() if s.oldest_version() is not None else -1
                                     for _, s, _ in segs], dtype=torch.long),
        sample_index=torch.arange(n),
    )


def packed_micro_batches(batch: SampleBatch, token_budget: int) -> list[list[int]]:
    """Group rows so that the sum of their lengths <= token_budget (first-fit decreasing; a row longer
    than the budget goes alone)."""
    lengths = batch.attention_mask.sum(-1).tolist()
    groups: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((g for g, room in enumerate(free) if lengths[i] <= room), None)
        if slot is None:
            groups.append([i])
            free.append(token_budget - lengths[i])
        else:
            groups[slot].append(i)
            free[slot] -= lengths[i]
    return groups


def pack(mb: SampleBatch) -> dict:
    """The model inputs of micro-batch `mb` as one packed row: its samples' tokens back to back
    ([1, N], N = real tokens), position ids restarting at 0 for each sample. Without an attention
    mask transformers finds the sample boundaries from the position ids (no cache may be used)."""
    keep = mb.attention_mask.bool()
    positions = mb.attention_mask.cumsum(-1) - 1
    return {"input_ids": mb.input_ids[keep][None], "position_ids": positions[keep][None], "use_cache": False}


def unpack(mb: SampleBatch, packed: torch.Tensor) -> torch.Tensor:
    """Per-token outputs of a packed row ([1, N, ...]) back in `mb`'s padded layout ([rows, T, ...],
    zeros at padding)."""
    keep = mb.attention_mask.bool()
    out = packed.new_zeros(*keep.shape, *packed.shape[2:])
    out[keep] = packed[0]
    return out


def mini_batch_rows(sample_index: torch.Tensor, mini_batches: int) -> list[list[int]]:
    """PPO mini-batches (one optimiser step each): mini-batch i < k = `mini_batches` holds the samples
    collated as rows i, i + k, i + 2k, ... of the global batch (`SampleBatch.sample_index`), so each
    holds episodes from the whole collection order, and data-parallel ranks, each with its shard,
    step on the same global mini-batches as one rank with the whole batch. Returns this batch's
    (or shard's) row positions per mini-batch; a shard may hold none of a mini-batch (it then takes
    part in that step with zero gradient)."""
    if mini_batches < 1:
        raise ValueError(f"algo.policy_mini_batches must be >= 1, got {mini_batches}")
    which = (sample_index % mini_batches).tolist()
    return [[row for row, m in enumerate(which) if m == i] for i in range(mini_batches)]


def micro_batches(batch: SampleBatch, token_budget: int) -> list[list[int]]:
    """Group rows so that rows x longest row <= token_budget (a row longer than the budget goes alone)."""
    lengths = batch.attention_mask.sum(-1).tolist()
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > token_budget:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups
