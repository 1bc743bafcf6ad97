"""The data contract between rollout and learner: trajectories made of segments (sub-traces).

Invariants (kept by :meth:`Segment.append`, the only place the per-token arrays grow):

* ``tokens``, ``loss_mask``, ``behavior_logprobs`` and ``weight_versions`` always have the
  same length.
* ``loss_mask`` is 1 only on tokens the policy sampled in *this* segment; prompt, template,
  tool output, and (after compaction) kept-recent copies of earlier turns are 0.
* ``behavior_logprobs`` is the engine's log-prob of each sampled token (0.0 where mask is 0);
  ``weight_versions`` is the policy version that sampled each token (-1 where mask is 0).
* Token ids are kept exactly as sampled; history is never re-tokenised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Status(str, Enum):
    """How an episode ended."""

    SUBMITTED = "submitted"      # the agent called submit
    TURN_LIMIT = "turn_limit"    # ran out of turns (truncated, not failed)
    CONTEXT_LIMIT = "context_limit"  # ran out of context with no compaction left
    ENV_ERROR = "env_error"      # the environment crashed: excluded from training


@dataclass
class Segment:
    """One trainable sub-trace of a rollout."""

    rollout_id: str
    index: int
    tokens: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    behavior_logprobs: list[float] = field(default_factory=list)
    weight_versions: list[int] = field(default_factory=list)

    def append(self, tokens: list[int], sampled: bool, logprobs: list[float] | None = None,
               versions: list[int] | None = None) -> None:
        """Append tokens; sampled tokens carry their behaviour log-probs and weight versions."""
        n = len(tokens)
        if sampled:
            if logprobs is None or versions is None or len(logprobs) != n or len(versions) != n:
                raise ValueError(f"sampled tokens need one log-prob and one version each "
                                 f"(got {n} tokens, {None if logprobs is None else len(logprobs)} log-probs, "
                                 f"{None if versions is None else len(versions)} versions)")
            self.behavior_logprobs.extend(float(x) for x in logprobs)
            self.weight_versions.extend(int(v) for v in versions)
        else:
            self.behavior_logprobs.extend([0.0] * n)
            self.weight_versions.extend([-1] * n)
        self.tokens.extend(int(t) for t in tokens)
        self.loss_mask.extend([1 if sampled else 0] * n)

    def make_context(self, start: int, n: int) -> None:
        """Tokens [start, start + n) become context, as :meth:`append` leaves unsampled tokens."""
        self.loss_mask[start:start + n] = [0] * n
        self.behavior_logprobs[start:start + n] = [0.0] * n
        self.weight_versions[start:start + n] = [-1] * n

    @property
    def num_action_tokens(self) -> int:
        return sum(self.loss_mask)

    def oldest_version(self) -> int | None:
        sampled = [v for v, m in zip(self.weight_versions, self.loss_mask) if m]
        return min(sampled) if sampled else None


@dataclass
class Trajectory:
    """One rollout of one task: its segments, outcome and guard events."""

    rollout_id: str
    task_id: str
    segments: list[Segment]
    reward: float = 0.0
    passed: bool = False
    status: Status = Status.SUBMITTED
    num_turns: int = 0
    parse_errors: int = 0
    hack_events: list[dict] = field(default_factory=list)
    transcript: list[dict] = field(default_factory=list)
    # The honest grade, for a task with a deliberate leak (envs.leak): the episode's tool calls
    # replayed on the leak-free copy of the task. None for tasks without a leak.
    honest_passed: bool | None = None

    @property
    def num_action_tokens(self) -> int:
        return sum(s.num_action_tokens for s in self.segments)

    def oldest_version(self) -> int | None:
        versions = [v for s in self.segments if (v := s.oldest_version()) is not None]
        return min(versions) if versions else None
