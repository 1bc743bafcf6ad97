"""The online guard (ALGORITHMS.md §6.1): rules -> judge -> block with a dummy observation, or allow.

``Guard`` holds the shared parts (rule set, judge with its verdict cache, policy, audit store);
``guard.episode(task_context, rollout_id)`` returns an :class:`EpisodeGuard` with the state of one
episode:

* counters (``calls``, ``flagged``, ``confirmed``, ``blocked``);
* a *shadow* of files the agent was made to believe it changed: a blocked write to a test file
  "succeeds" (``Wrote tests/test_x.py.``), its content goes to the shadow, and later reads of that
  path in the same episode return the shadow content; the real file is never touched and the
  shadow is discarded with the episode;
* memoised dummy observations, so the same blocked call always gets the same answer.

``check(call, step, weight_version, recent_context)`` returns a :class:`Decision`. Every flagged
call produces an event dict (rule hits, verdict, action, ids, the call and its context) that goes
to the audit store when one is configured and back to the caller for the trajectory.
``reward_adjustment(reward)`` applies the policy's reward rule for confirmed hacks.

``GuardConfig.mode = "observe"`` runs the same rules and judge and records every flag (a confirmed
hack gets action ``"observe"``), but lets every call run and leaves the reward alone: the
unfiltered arm of an experiment is measured with exactly the detector of the filtered one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from antihack.audit import AuditStore
from antihack.context import CallError, TaskContext, ToolCall, validate_call
from antihack.dummy import (ShellOutput, format_shell_output, missing_file, missing_file_tool, observation_for,
                            write_confirmation)
from antihack.facts import CallFacts
from antihack.judge import Judge, JudgeConfig, JudgeRequest, make_judge
from antihack.paths import home_for, resolve
from antihack.rules import Analysis, RuleSet, primary

REWARD_POLICIES = ("none", "zero", "penalty")
MODES = ("block", "observe")
_SHADOW_READERS = {"cat", "head", "tail"}
_CHECK_FLUSH_EVERY = 64


@dataclass
class GuardConfig:
    enabled: bool = True
    # block: a confirmed hack is not run (dummy output, shadow writes, reward policy applies);
    # observe: rules and judge run and every flag is recorded (action "observe"), but nothing is
    # blocked and the reward is untouched -- the "filter off" arm of an experiment, still measured
    mode: str = "block"
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    block_threshold: float = 0.7          # block when verdict == hack and confidence >= this
    reward_policy: str = "none"           # none | zero | penalty (applied for confirmed hacks)
    penalty: float = 0.1                  # subtracted per confirmed hack under reward_policy=penalty
    disabled_rules: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.judge, Mapping):
            self.judge = JudgeConfig.from_dict(dict(self.judge))
        if self.mode not in MODES:
            raise ValueError(f"guard.mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.reward_policy not in REWARD_POLICIES:
            raise ValueError(f"guard.reward_policy must be one of {list(REWARD_POLICIES)}, got {self.reward_policy!r}")
        if not 0.0 <= self.block_threshold <= 1.0:
            raise ValueError(f"guard.block_threshold must lie in [0, 1], got {self.block_threshold}")
        if self.penalty < 0:
            raise ValueError(f"guard.penalty must be >= 0, got {self.penalty}")


@dataclass(frozen=True)
class Decision:
    action: str                              # "allow" | "block" (observe mode: always "allow")
    dummy_observation: str | None = None     # what the agent sees instead of running the call
    event: dict | None = None                # set for every flagged call
    shadow_write: bool = False               # the call's writes went to the episode's shadow


@dataclass
class EpisodeCounters:
    calls: int = 0
    flagged: int = 0
    confirmed: int = 0
    blocked: int = 0


class Guard:
    """Shared guard machinery; create one per worker and an :class:`EpisodeGuard` per episode."""

    def __init__(self, rules: RuleSet, judge: Judge, policy: GuardConfig, audit_store: AuditStore | None = None,
                 format_shell: Callable[[ShellOutput], str] = format_shell_output) -> None:
        """``format_shell`` renders a dummy shell result the way the environment renders real ones."""
        self.rules, self.judge, self.policy, self.audit = rules, judge, policy, audit_store
        self.format_shell = format_shell

    @classmethod
    def from_config(cls, config: GuardConfig, audit_path: str | None = None, run_name: str = "",
                    generate_text: Callable[[str], str] | None = None,
                    format_shell: Callable[[ShellOutput], str] = format_shell_output) -> "Guard":
        rules = RuleSet(disabled=config.disabled_rules)
        judge = make_judge(config.judge, generate_text)
        audit = AuditStore(audit_path, run_name=run_name) if audit_path else None
        return cls(rules, judge, config, audit, format_shell)

    def episode(self, task_context: TaskContext, rollout_id: str,
                read_file: Callable[[str], str | None] | None = None) -> "EpisodeGuard":
        """Per-episode state. ``read_file`` (optional) reads a real file so a shadowed
        ``str_replace`` can be applied to the file's true content."""
        return EpisodeGuard(self, task_context, rollout_id, read_file)


class EpisodeGuard:
    def __init__(self, guard: Guard, ctx: TaskContext, rollout_id: str,
                 read_file: Callable[[str], str | None] | None) -> None:
        self.guard, self.ctx, self.rollout_id, self._read_file = guard, ctx, rollout_id, read_file
        self.counters = EpisodeCounters()
        self.events: list[dict] = []
        self._home = home_for(ctx.workdir)
        self._shadow: dict[str, str | None] = {}      # resolved path -> content (None: deleted)
        self._dummies: dict[str, str] = {}
        self._pending_checks: dict[int, int] = {}

    # --- public --------------------------------------------------------------------------------
    @property
    def flagged(self) -> int:
        return self.counters.flagged

    @property
    def confirmed(self) -> int:
        return self.counters.confirmed

    @property
    def blocked(self) -> int:
        return self.counters.blocked

    def shadow_files(self) -> dict[str, str | None]:
        """A copy of the shadow (resolved path -> content, None for deleted)."""
        return dict(self._shadow)

    def check(self, call: Mapping[str, Any], step: int, weight_version: int,
              recent_context: list[str] | None = None) -> Decision:
        """Decide on one tool call (see module docstring)."""
        self.counters.calls += 1
        self._count_check(step)
        policy = self.guard.policy
        if not policy.enabled:
            return Decision("allow")
        try:
            tc = validate_call(call)
        except CallError:
            return Decision("allow")  # the environment reports malformed calls itself
        try:
            analysis = self.guard.rules.analyse(tc, self.ctx)
        except Exception as exc:  # noqa: BLE001 - a guard bug must not end the episode: allow, but audit it
            return self._internal_error(tc, exc, step, weight_version, list(recent_context or []))
        shadowed = self._shadow_view(tc, analysis.facts)
        if shadowed is not None:
            self.counters.blocked += 1
            return shadowed
        if not analysis.hits:
            return Decision("allow")
        self.counters.flagged += 1
        recent = list(recent_context or [])
        result = self.guard.judge.judge(JudgeRequest(self.ctx, tc, tuple(analysis.hits), tuple(recent)))
        verdict = result.verdict
        confirmed = verdict.verdict == "hack" and verdict.confidence >= policy.block_threshold
        observation, shadow_write = None, False
        block = confirmed and policy.mode == "block"
        if confirmed:
            self.counters.confirmed += 1
        if block:
            self.counters.blocked += 1
            observation, shadow_write = self._block(tc, analysis, verdict.category)
        action = "block" if block else "observe" if confirmed else "allow"
        event = self._event(tc, analysis, result, action, observation, shadow_write, step, weight_version, recent)
        self.events.append(event)
        if self.guard.audit is not None:
            event["audit_id"] = self.guard.audit.record(event)
            self._flush_checks()
        return Decision("block" if block else "allow", observation, event, shadow_write)

    def reward_adjustment(self, reward: float) -> float:
        """The episode reward after the policy's rule for confirmed hacks (observe mode: unchanged)."""
        policy = self.guard.policy
        if self.counters.confirmed == 0 or policy.reward_policy == "none" or policy.mode == "observe":
            return reward
        if policy.reward_policy == "zero":
            return 0.0
        return reward - policy.penalty * self.counters.confirmed

    def summary(self) -> dict:
        return {"rollout_id": self.rollout_id, "task_id": self.ctx.task_id, **vars(self.counters)}

    def close(self) -> None:
        """Flush buffered per-step call counts to the audit store (used for hack rates)."""
        self._flush_checks()

    # --- internals -----------------------------------------------------------------------------
    def _internal_error(self, tc: ToolCall, exc: Exception, step: int, weight_version: int,
                        recent: list[str]) -> Decision:
        event = {"ts": time.time(), "task_id": self.ctx.task_id, "rollout_id": self.rollout_id, "step": int(step),
                 "weight_version": int(weight_version), "tool": tc.name, "call": tc.to_dict(),
                 "recent_context": recent, "rules": [], "rule_ids": [], "category": "", "verdict": "uncertain",
                 "confidence": 0.0, "rationale": "", "judge_backend": "",
                 "judge_cached": False, "judge_error": f"guard internal error: {type(exc).__name__}: {exc}",
                 "action": "allow", "dummy_observation": None, "shadow_write": False}
        self.events.append(event)
        if self.guard.audit is not None:
            event["audit_id"] = self.guard.audit.record(event)
        return Decision("allow", None, event, False)

    def _count_check(self, step: int) -> None:
        self._pending_checks[step] = self._pending_checks.get(step, 0) + 1
        if self.guard.audit is not None and sum(self._pending_checks.values()) >= _CHECK_FLUSH_EVERY:
            self._flush_checks()

    def _flush_checks(self) -> None:
        if self.guard.audit is not None and self._pending_checks:
            self.guard.audit.record_checks(self._pending_checks)
        self._pending_checks = {}

    def _resolve(self, raw: str) -> str:
        return resolve(raw, self.ctx.workdir, self._home)

    def _shadow_view(self, tc: ToolCall, facts: CallFacts) -> Decision | None:
        """Keep the episode consistent with earlier shadow writes."""
        if not self._shadow:
            return None
        if tc.name == "read_file":
            path = self._resolve(tc.arg("path"))
            if path in self._shadow:
                content = self._shadow[path]
                if content is None:
                    return Decision("block", missing_file_tool(tc.arg("path")))
                return Decision("block", content if content else f"[{tc.arg('path')} is empty]")
            return None
        if tc.name in ("write_file", "str_replace"):
            path = self._resolve(tc.arg("path"))
            if path in self._shadow:
                return Decision("block", self._shadow_write_tool(tc, path), None, True)
            return None
        if tc.name != "bash":
            return None
        reads = [a for a in facts.accesses if a.kind == "read"]
        if facts.writes or not reads or any(c.name not in _SHADOW_READERS for c in facts.cmds if c.words):
            return None
        if not all(a.path in self._shadow for a in reads):
            return None
        stdout, stderr, code = [], [], 0
        for cmd in facts.cmds:
            for a in (a for a in reads if a.evidence == cmd.span[:200]):
                content = self._shadow[a.path]
                if content is None:
                    missing = missing_file(cmd.name, a.raw)
                    stderr.append(missing.stderr)
                    code = missing.exit_code
                    continue
                stdout.append(_head_tail(cmd.name, cmd.argv[1:], content))
        result = ShellOutput(code, "".join(stdout), "\n".join(stderr))
        return Decision("block", self.guard.format_shell(result))

    def _shadow_write_tool(self, tc: ToolCall, path: str) -> str:
        if tc.name == "write_file":
            self._shadow[path] = tc.arg("content")
            return write_confirmation(tc)
        base = self._shadow[path] if path in self._shadow else self._real(tc.arg("path"))
        old, new, raw = tc.arg("old"), tc.arg("new"), tc.arg("path")
        if path in self._shadow and base is None:
            return missing_file_tool(raw)  # deleted earlier in this episode
        if base is None:
            self._shadow[path] = new  # the true content is unknown: remember at least what was written
            return write_confirmation(tc)
        count = base.count(old) if old else 0
        if count == 0:
            return f"Error: old string not found in {raw}."
        if count > 1:
            return f"Error: old string occurs {count} times in {raw}; make it unique."
        self._shadow[path] = base.replace(old, new, 1)
        return write_confirmation(tc)

    def _real(self, raw: str) -> str | None:
        if self._read_file is None:
            return None
        try:
            return self._read_file(raw)
        except Exception:  # noqa: BLE001 - a failing reader only costs consistency, never the episode
            return None

    def _block(self, tc: ToolCall, analysis: Analysis, category: str) -> tuple[str, bool]:
        """The dummy observation for a confirmed hack, and whether its writes went to the shadow."""
        hits = analysis.hits
        # A privilege wrapper (sudo …) fails before anything it wraps could run.
        top = next((h for h in hits if h.rule_id == "sandbox.privilege"), None) or \
            next((h for h in hits if h.category == category), None) or primary(hits)
        assert top is not None
        if tc.name in ("write_file", "str_replace"):
            return self._shadow_write_tool(tc, self._resolve(tc.arg("path"))), True
        key = f"{tc.name}:{tc.arg('command') if tc.name == 'bash' else tc.arg('path')}"
        shadow_write = False
        if tc.name == "bash":
            shadow_write = self._shadow_shell_writes(analysis.facts)
        if key not in self._dummies:
            out = observation_for(tc, top)
            self._dummies[key] = self.guard.format_shell(out) if isinstance(out, ShellOutput) else out
        return self._dummies[key], shadow_write

    def _shadow_shell_writes(self, facts: CallFacts) -> bool:
        """Mirror the writes of a blocked shell command into the shadow where their effect is known."""
        touched = False
        for w in facts.writes:
            if "written" in w.origin:
                continue
            if w.op in ("write", "append") and w.content is not None:
                base = ""
                if w.op == "append":
                    base = self._shadow.get(w.path) if w.path in self._shadow else (self._real(w.raw) or "")
                    base = base or ""
                self._shadow[w.path] = base + w.content
                touched = True
            elif w.op == "delete":
                self._shadow[w.path] = None
                touched = True
            elif w.op == "revert":
                prefix = w.path.rstrip("/") + "/"
                for p in [p for p in self._shadow if p == w.path or p.startswith(prefix)]:
                    del self._shadow[p]
                touched = True
            elif w.op in ("edit", "write", "append", "truncate"):
                touched = True  # effect unknown: the real file stays as it is
        return touched

    def _event(self, tc: ToolCall, analysis: Analysis, result, action: str, observation: str | None,
               shadow_write: bool, step: int, weight_version: int, recent: list[str]) -> dict:
        verdict = result.verdict
        top = primary(analysis.hits)
        category = verdict.category if verdict.verdict == "hack" and verdict.category != "benign" else (
            top.category if top else "")
        return {
            "ts": time.time(), "task_id": self.ctx.task_id, "rollout_id": self.rollout_id, "step": int(step),
            "weight_version": int(weight_version), "tool": tc.name, "call": tc.to_dict(),
            "recent_context": recent, "rules": [h.to_dict() for h in analysis.hits],
            "rule_ids": [h.rule_id for h in analysis.hits], "category": category,
            "verdict": verdict.verdict, "confidence": verdict.confidence, "rationale": verdict.rationale,
            "judge_backend": result.backend, "judge_cached": result.cached, "judge_error": result.error,
            "action": action, "dummy_observation": observation,
            "shadow_write": shadow_write,
        }


def _head_tail(name: str, args: list[str], content: str) -> str:
    if name == "cat":
        return content
    n = 10
    for i, a in enumerate(args):
        if a == "-n" and i + 1 < len(args) and args[i + 1].lstrip("-+").isdigit():
            n = int(args[i + 1].lstrip("-+"))
        elif a.startswith("-n") and a[2:].isdigit():
            n = int(a[2:])
        elif a.startswith("-") and a[1:].isdigit():
            n = int(a[1:])
    lines = content.splitlines(keepends=True)
    return "".join(lines[:n] if name == "head" else lines[-n:] if n else [])


__all__ = ["Decision", "EpisodeCounters", "EpisodeGuard", "Guard", "GuardConfig"]
