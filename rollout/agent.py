"""The agent loop: one episode of a coding task, token-in/token-out.

render context -> engine.generate(token ids) -> parse tool call -> guard -> sandbox -> append
observation (mask 0) -> ... -> submit / turn limit -> grade in a pristine copy.

With compaction on (``AgentConfig.compaction``), when the room left after a tool result would fall
under ``compaction_threshold_tokens``, the segment ends (with a sampled summary, or a rule
digest) and the episode goes on in a new segment of the same rollout (see
:mod:`rollout.compaction`).

The context is a list of token ids that only ever grows by :meth:`Segment.append`: sampled ids
go in as the engine returned them (mask 1, with log-probs and weight versions), new text (tool
output, headers) is tokenised piece by piece (mask 0). Nothing is decoded and re-encoded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable, Protocol

from envs.env import CodingEnv
from envs.tasks import Task
from rollout.chat import IM_END, ParseError, encode_text, observation_text, parse_tool_call, prompt_text
from rollout.compaction import COMPACTION_MODES, compact, compaction_due, tool_message_text
from rollout.engine import Engine, SamplingParams
from rollout.trajectory import Segment, Status, Trajectory


@dataclass
class AgentConfig:
    max_turns: int = 6
    max_context_tokens: int = 1024
    min_turn_tokens: int = 16          # stop with CONTEXT_LIMIT when less room than this is left
    compaction: str = "none"           # none | summary (the policy summarises) | rule (a digest, no summary tokens)
    compaction_threshold_tokens: int = 256  # compact when less room than this would be left after a tool result;
    #                                  summary mode needs room for the request and the summary in it (else: rule digest)
    keep_last_steps: int = 2           # steps (tool call + result) copied verbatim into the next segment
    max_segments: int = 4              # segments per rollout at most (compactions = max_segments - 1)
    summary_max_tokens: int = 128      # cap on a sampled summary, and on a rule digest

    def __post_init__(self) -> None:
        if self.compaction not in COMPACTION_MODES:
            raise ValueError(f"agent.compaction = {self.compaction!r}; expected one of {COMPACTION_MODES}")
        if self.compaction == "none":
            return
        if not self.min_turn_tokens <= self.compaction_threshold_tokens < self.max_context_tokens:
            raise ValueError(f"agent.compaction_threshold_tokens must be in [min_turn_tokens, max_context_tokens) = "
                             f"[{self.min_turn_tokens}, {self.max_context_tokens}), got {self.compaction_threshold_tokens}")
        if self.keep_last_steps < 0 or self.max_segments < 1 or self.summary_max_tokens < 1:
            raise ValueError(f"agent.keep_last_steps must be >= 0 (got {self.keep_last_steps}), max_segments >= 1 "
                             f"(got {self.max_segments}), summary_max_tokens >= 1 (got {self.summary_max_tokens})")


class ToolGuard(Protocol):
    """What the agent loop needs from an episode's anti-hack guard (`antihack.guard.EpisodeGuard`)."""

    def check(self, call: dict, step: int, weight_version: int, recent_context: list[str]): ...

    def reward_adjustment(self, reward: float) -> float: ...

    def close(self) -> None: ...


GuardFactory = Callable[[Task, str, CodingEnv], ToolGuard]


async def run_episode(engine: Engine, tokenizer, make_env: Callable[[Task], CodingEnv], task: Task,
                      rollout_id: str, sampling: SamplingParams, cfg: AgentConfig,
                      make_guard: GuardFactory | None = None) -> Trajectory:
    """Run one episode of `task` and return its trajectory with the pristine grade as reward.

    With a guard, every tool call is checked first; a blocked call is not executed and the agent
    sees the guard's dummy output instead (the call's tokens stay in the trajectory).
    With compaction, the trajectory has one segment per compaction more, and the transcript a
    ``{"compaction": {...}}`` entry for each."""
    seg = Segment(rollout_id=rollout_id, index=0)
    step_starts: list[int] = []  # where each step of `seg` (its first action token) starts, for keep-recent
    seg.append(encode_text(tokenizer, prompt_text(task.instruction)), sampled=False)
    traj = Trajectory(rollout_id=rollout_id, task_id=task.task_id, segments=[seg])
    im_end = encode_text(tokenizer, IM_END)
    try:
        env = await asyncio.to_thread(make_env, task)
    except Exception as exc:  # noqa: BLE001 - a broken task must not take down the worker
        traj.status = Status.ENV_ERROR
        traj.transcript.append({"error": f"environment setup failed: {exc}"})
        return traj
    guard = make_guard(task, rollout_id, env) if make_guard is not None else None
    try:
        traj.status = Status.TURN_LIMIT
        for turn in range(cfg.max_turns):
            room = cfg.max_context_tokens - len(seg.tokens)
            if room < cfg.min_turn_tokens:
                traj.status = Status.CONTEXT_LIMIT
                break
            params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                    max_new_tokens=min(sampling.max_new_tokens, room),
                                    stop_token_ids=sampling.stop_token_ids)
            step_starts.append(len(seg.tokens))
            out = await engine.generate(seg.tokens, params)
            seg.append(out.token_ids, sampled=True, logprobs=out.logprobs, versions=out.weight_versions)
            if out.finish_reason != "stop":
                seg.append(im_end, sampled=False)  # close the turn so the chat format stays valid
            traj.num_turns = turn + 1
            text = tokenizer.decode(out.token_ids, skip_special_tokens=False)
            call = parse_tool_call(text)
            if isinstance(call, ParseError):
                traj.parse_errors += 1
                observation, done = call.message, False
            else:
                observation, done = await _execute(env, call, guard, traj, turn, out.weight_versions)
            traj.transcript.append({"action": text, "observation": observation})
            if done:
                traj.status = Status.SUBMITTED
                break
            observation_ids = encode_text(tokenizer, observation_text(observation))
            if not compaction_due(cfg, len(seg.tokens) + len(observation_ids), turns_left=cfg.max_turns - turn - 1,
                                  num_segments=len(traj.segments)):
                seg.append(observation_ids, sampled=False)
                continue
            seg.append(encode_text(tokenizer, tool_message_text(observation)), sampled=False)
            compaction = await compact(engine, tokenizer, task, traj.transcript, seg, step_starts, sampling, cfg)
            traj.transcript.append({"compaction": compaction.record})
            if compaction.segment is None:
                traj.status = Status.CONTEXT_LIMIT
                break
            seg, step_starts = compaction.segment, compaction.step_starts
            traj.segments.append(seg)
        grade = await asyncio.to_thread(env.grade)
        traj.passed, traj.reward = grade.passed, grade.reward
        if guard is not None:
            traj.reward = guard.reward_adjustment(traj.reward)
    except Exception as exc:  # noqa: BLE001 - sandbox crash: excluded from training, kept for audit
        traj.status = Status.ENV_ERROR
        traj.transcript.append({"error": f"environment failed: {type(exc).__name__}: {exc}"})
    finally:
        if guard is not None:
            guard.close()
        await asyncio.to_thread(env.close)
    return traj


async def _execute(env: CodingEnv, call, guard: ToolGuard | None, traj: Trajectory, turn: int,
                   versions: list[int]) -> tuple[str, bool]:
    """Pass the call through the guard; run it in the sandbox unless the guard blocks it."""
    if guard is not None:
        recent = [t["action"] for t in traj.transcript if "action" in t][-2:]
        version = min(versions) if versions else -1
        decision = guard.check({"name": call.name, "arguments": call.arguments}, step=version,
                               weight_version=version, recent_context=recent)
        if decision.event is not None:
            traj.hack_events.append(decision.event)
        if decision.action == "block":
            return decision.dummy_observation or "", False
    result = await asyncio.to_thread(env.step, call)
    return result.observation, result.done
