"""Anti-reward-hack guard for coding-agent RL (ALGORITHMS.md §6).

model tool call -> normalise (shell AST, ``$(...)``, base64, ``python -c``, heredocs, written code)
-> recall-first rules (:mod:`antihack.rules`) -> LLM judge for precision (:mod:`antihack.judge`)
-> block with a plausible dummy observation, shadowing writes (:mod:`antihack.guard`), or allow
-> every flag in the SQLite audit store (:mod:`antihack.audit`, CLI ``horizonrl-audit``).

The package works on plain data (tool-call dicts and :class:`TaskContext`) and imports nothing
from the rest of horizonrl.
"""

from antihack.audit import AuditStore
from antihack.context import CallError, TaskContext, ToolCall, normalise_call, validate_call
from antihack.guard import Decision, EpisodeGuard, Guard, GuardConfig
from antihack.judge import Judge, JudgeConfig, JudgeRequest, JudgeResult, ScriptedRule, Verdict, make_judge
from antihack.rules import RULES, Rule, RuleHit, RuleSet

__all__ = [
    "AuditStore", "CallError", "Decision", "EpisodeGuard", "Guard", "GuardConfig", "Judge", "JudgeConfig",
    "JudgeRequest", "JudgeResult", "RULES", "Rule", "RuleHit", "RuleSet", "ScriptedRule", "TaskContext", "ToolCall",
    "Verdict", "make_judge", "normalise_call", "validate_call",
]
