"""The inference engine interface the agent loop and the orchestrator drive.

Two implementations share it: ``hf`` (a transformers model in a Ray actor, this package) and,
in production, ``sglang`` (servers behind a router). The orchestrator never knows which one it
drives: it calls :meth:`Engine.generate` with token ids and :meth:`Engine.update_weights` with a
state dict and a version number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                      # 0 = no top-k filter
    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"sampling temperature must be > 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling top_p must be in (0, 1] (got {self.top_p})")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling max_new_tokens must be >= 1 (got {self.max_new_tokens})")

    def greedy(self) -> "SamplingParams":
        """Argmax decoding with the same limits: top-k = 1 (SGLang's convention for temperature 0;
        verl validates this way by default, ``val_kwargs.do_sample=False``). Behaviour log-probs are
        then 0 for every token (the distribution is a point mass)."""
        return SamplingParams(temperature=1.0, top_p=1.0, top_k=1, max_new_tokens=self.max_new_tokens,
                              stop_token_ids=self.stop_token_ids)


@dataclass
class GenerateOutput:
    """New token ids exactly as sampled, their log-probs under the sampling distribution,
    why generation stopped, and the weight version that sampled each token."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str                  # "stop" | "length"
    weight_versions: list[int]


class Engine(Protocol):
    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerateOutput: ...

    async def update_weights(self, state: dict, version: int) -> None: ...

    async def weight_version(self) -> int: ...

    async def release_memory(self, tags: list[str] | None = None) -> None:
        """Colocated training: give the device memory back while the learner trains (between rollouts)."""

    async def resume_memory(self, tags: list[str] | None = None) -> None:
        """Take it back; `update_weights` on a released engine does this itself."""
