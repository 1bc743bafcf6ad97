"""Trajectory compaction: when the context budget runs low, end the segment and start the next.

ALGORITHMS.md §3.1. A rollout is a chain of segments (sub-traces) that share its ``rollout_id``;
segment s+1 starts from

    system + task + note + the last k steps (verbatim) + the assistant header

where the *note* is either

* ``summary``: written by the policy itself. The old segment gets a user message asking for a
  summary (context, mask 0); the sampled summary is the old segment's last action (mask 1, with
  its log-probs and weight versions), and the old segment ends there.
* ``rule``: a digest built from the transcript (files edited, each earlier step and its result).
  No summary tokens are sampled.

Invariants kept here:

* The kept-recent steps are *copied* from the old segment's token ids (one contiguous slice),
  never decoded and re-tokenised; in the new segment they are context (mask 0): they were
  sampled under the earlier context and are trained in the old segment (§3.2).
* The summary's ids are copied into the new prompt as they were sampled.
* New text (headers, the request, the digest) is tokenised piece by piece with
  :func:`rollout.chat.encode_text`; every array grows only through :meth:`Segment.append`.

The agent loop calls :func:`compaction_due` after each tool result, and, when it says so,
appends the tool message (without the next assistant header) and calls :func:`compact`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from envs.tasks import Task
from rollout.chat import (IM_END, IM_START, ParseError, encode_text, message, message_header, parse_tool_call,
                          system_prompt)
from rollout.engine import Engine, SamplingParams
from rollout.trajectory import Segment

if TYPE_CHECKING:  # the config lives with the agent loop, which imports this module
    from rollout.agent import AgentConfig

COMPACTION_MODES = ("none", "summary", "rule")

SUMMARY_REQUEST = ("Your context window is almost full and will be reset. Write a concise summary of your work "
                   "on the task so far: what you found, which files you changed and how, the results of the "
                   "commands you ran, and what remains to do. Do not call a tool.")
SUMMARY_PREFIX = "Summary of your earlier work on this task (the context was compacted):\n"
DIGEST_PREFIX = "Context compacted. "
EDIT_TOOLS = ("write_file", "str_replace")


@dataclass
class Compaction:
    """The result of one compaction: the new segment (None when it does not fit) and its kept steps."""

    segment: Segment | None
    step_starts: list[int]        # index of the first action token of each step kept in `segment`
    record: dict                  # the transcript's "compaction" entry


def compaction_due(cfg: AgentConfig, context_len: int, turns_left: int, num_segments: int) -> bool:
    """Compact when ``max_context_tokens − context_len < compaction_threshold_tokens``.

    Only when compaction is on, another turn will follow, and the rollout may still have another
    segment (``num_segments < max_segments``); otherwise the loop goes on until it runs out of room
    and ends with ``CONTEXT_LIMIT``."""
    return (cfg.compaction != "none" and turns_left > 0 and num_segments < cfg.max_segments
            and cfg.max_context_tokens - context_len < cfg.compaction_threshold_tokens)


def tool_message_text(observation: str) -> str:
    """The tool's answer without the next assistant header: what ends the step that triggers compaction.

    ``tool_message_text(o) + message_header("assistant") == observation_text(o)``."""
    return "\n" + message("tool", observation)


def summary_request_text() -> str:
    """The user message (context, mask 0) that asks the policy to summarise, and the header it answers under."""
    return message("user", SUMMARY_REQUEST) + message_header("assistant")


async def sample_summary(engine: Engine, tokenizer, seg: Segment, sampling: SamplingParams,
                         cfg: AgentConfig) -> list[int] | None:
    """Ask the policy for a summary at the end of `seg`; return the summary's body ids (stop token removed).

    The request is appended to `seg` as context (mask 0), the sampled ids as actions (mask 1, with
    log-probs and weight versions), closed by ``<|im_end|>`` (mask 0) if generation did not stop.
    Returns None, appending nothing, when less than ``min_turn_tokens`` of room would be left for
    the summary after the request."""
    request = encode_text(tokenizer, summary_request_text())
    closer = encode_text(tokenizer, IM_END)
    room = cfg.max_context_tokens - len(seg.tokens) - len(request) - len(closer)  # a cut summary still gets closed
    if room < cfg.min_turn_tokens:
        return None
    seg.append(request, sampled=False)
    params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                            max_new_tokens=min(cfg.summary_max_tokens, room), stop_token_ids=sampling.stop_token_ids)
    out = await engine.generate(seg.tokens, params)
    seg.append(out.token_ids, sampled=True, logprobs=out.logprobs, versions=out.weight_versions)
    body = list(out.token_ids)
    if out.finish_reason == "stop" and body and body[-1] in params.stop_token_ids:
        body.pop()
    else:
        seg.append(closer, sampled=False)
    return body


def _step_line(number: int, step: dict) -> str:
    """One digest line: the call (tool and its main argument) and the first line of its result."""
    call = parse_tool_call(step["action"])
    if isinstance(call, ParseError):
        what = "invalid tool call"
    else:
        arg = call.arguments.get("path", call.arguments.get("command", ""))
        what = f"{call.name} {_clip(str(arg), 60)}".rstrip()
    result = next((line for line in step["observation"].splitlines() if line.strip()), "(no output)")
    return f"{number}. {what} -> {_clip(result.strip(), 80)}"


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def edited_files(transcript: list[dict]) -> list[str]:
    """Paths the agent changed successfully (a ``write_file`` / ``str_replace`` whose result says so), in order."""
    files: list[str] = []
    for step in transcript:
        if "action" not in step:
            continue
        call = parse_tool_call(step["action"])
        if (not isinstance(call, ParseError) and call.name in EDIT_TOOLS
                and step["observation"].startswith(("Wrote ", "Edited ")) and call.arguments.get("path") not in files):
            files.append(str(call.arguments.get("path")))
    return files


def rule_digest(tokenizer, transcript: list[dict], keep_last_steps: int, max_tokens: int) -> list[int]:
    """The rule-based note: files edited, then one line per step not kept verbatim, at most `max_tokens` ids.

    When the lines do not fit, the oldest steps are dropped first (and counted); the ids are a
    tokenisation of new text, so cutting the last ids is safe."""
    steps = [s for s in transcript if "action" in s]
    earlier = steps[: max(0, len(steps) - keep_last_steps)]
    files = edited_files(transcript)
    head = DIGEST_PREFIX + f"Files edited: {', '.join(files) if files else 'none'}.\n"
    tail = f"Last {len(steps) - len(earlier)} steps follow." if len(earlier) < len(steps) else ""
    lines = [_step_line(i + 1, s) for i, s in enumerate(earlier)]
    dropped = 0
    while True:
        body = "".join(line + "\n" for line in lines[dropped:])
        omitted = f"({dropped} steps omitted)\n" if dropped else ""
        ids = encode_text(tokenizer, head + ("Earlier steps:\n" if lines else "") + omitted + body + tail)
        if len(ids) <= max_tokens or dropped == len(lines):
            return ids[:max_tokens]
        dropped += 1


def compacted_prompt_head(tokenizer, instruction: str) -> tuple[list[int], list[int]]:
    """The new text around the note: (system + task + the note message's opening, its closing + assistant header)."""
    opening = encode_text(tokenizer, message("system", system_prompt()) + message("user", instruction)
                          + f"{IM_START}user\n")
    closing = encode_text(tokenizer, f"{IM_END}\n" + message_header("assistant"))
    return opening, closing


def open_segment(old: Segment, opening: list[int], note: list[int], closing: list[int], kept: tuple[int, int],
                 header: list[int]) -> Segment:
    """Segment ``old.index + 1``: opening + note + closing + old.tokens[kept] (+ header when steps are kept).

    Everything is context (mask 0); the kept slice is copied from `old` as it is."""
    start, end = kept
    seg = Segment(rollout_id=old.rollout_id, index=old.index + 1)
    seg.append(opening, sampled=False)
    seg.append(note, sampled=False)
    seg.append(closing, sampled=False)
    if end > start:
        seg.append(old.tokens[start:end], sampled=False)
        seg.append(header, sampled=False)
    return seg


def steps_that_fit(prompt_len_without_steps: int, step_starts: list[int], steps_end: int, header_len: int,
                   cfg: AgentConfig) -> int | None:
    """How many of the last steps to keep: the most (≤ ``keep_last_steps``) that leave at least
    ``compaction_threshold_tokens`` of room; 0 if none does but the bare prompt leaves
    ``min_turn_tokens``; None if even that does not fit."""
    for k in range(min(cfg.keep_last_steps, len(step_starts)), 0, -1):
        length = prompt_len_without_steps + (steps_end - step_starts[-k]) + header_len
        if cfg.max_context_tokens - length >= cfg.compaction_threshold_tokens:
            return k
    if cfg.max_context_tokens - prompt_len_without_steps >= cfg.min_turn_tokens:
        return 0
    return None


async def compact(engine: Engine, tokenizer, task: Task, transcript: list[dict], seg: Segment,
                  step_starts: list[int], sampling: SamplingParams, cfg: AgentConfig) -> Compaction:
    """End `seg` (with a sampled summary in ``summary`` mode) and open the next segment.

    `seg` must end with the tool message of its last step; `step_starts` holds where each of its
    steps' first action token is. In ``summary`` mode with too little room left to sample a
    summary, the rule digest is used instead (recorded as ``fallback``). The new segment is None
    when not even system + task + note fits in the context with ``min_turn_tokens`` to spare: the
    episode then ends with ``CONTEXT_LIMIT``."""
    steps_end = len(seg.tokens)
    note: list[int] | None = None
    if cfg.compaction == "summary":
        summary = await sample_summary(engine, tokenizer, seg, sampling, cfg)
        if summary is not None:
            note = encode_text(tokenizer, SUMMARY_PREFIX) + summary
    fallback = cfg.compaction == "summary" and note is None
    if note is None:
        note = rule_digest(tokenizer, transcript, cfg.keep_last_steps, cfg.summary_max_tokens)
    opening, closing = compacted_prompt_head(tokenizer, task.instruction)
    header = encode_text(tokenizer, message_header("assistant"))
    bare = len(opening) + len(note) + len(closing)
    k = steps_that_fit(bare, step_starts, steps_end, len(header), cfg)
    record = {"mode": "rule" if fallback else cfg.compaction, "fallback": fallback, "segment": seg.index + 1,
              "tokens_before": len(seg.tokens), "kept_steps": k,
              "note": tokenizer.decode(note, skip_special_tokens=False)}
    if k is None:
        return Compaction(segment=None, step_starts=[], record=record)
    kept = (step_starts[-k], steps_end) if k else (steps_end, steps_end)
    new = open_segment(seg, opening, note, closing, kept, header)
    record["tokens_after"] = len(new.tokens)
    shift = bare - kept[0]
    return Compaction(segment=new, step_starts=[s + shift for s in step_starts[-k:]] if k else [], record=record)
