"""The scripted solver: a correct demonstration for any task that carries a reference solution.

Every task of the built-in suite has exactly one buggy line, so its demonstration is always
the same three calls (see :func:`line_fix_solution`): read the file, replace the exact buggy
line (indentation included) by the fixed line, submit. The suite generator stores it in
``Task.solution``; :func:`scripted_solution` hands it out and checks that it is well formed.

:func:`perturbed_solution` is the same demonstration with a plausible wrong fix: the fixed line
one edit away from right (an operator swapped for another of its kind, an integer literal off by
one, a ``not`` dropped, ``and``/``or`` swapped). A warm start that mixes such demonstrations in
imitates a noisy demonstrator (unfiltered traces of a weaker model): the policy learns where and
how to edit, but not reliably which edit, and RL has to learn the rest from the reward.

:func:`unindented_edit` is the other habit of weak coding agents it can imitate: the right fix,
written without the line's indentation, so the edited file no longer parses (``return`` outside a
function, an unexpected indent) and the grade fails. The policy learns the fix from every such
demonstration, and from the reward alone that one token (the indentation) decides the outcome.

:func:`retried_edit` demonstrates the recovery a good agent makes: its first ``str_replace``
misremembers the line (one plausible edit away), the tool answers that the text is missing and
shows the file's closest line, and the agent repeats the edit with that exact line.
"""

from __future__ import annotations

import io
import keyword
import random
import tokenize

from envs.env import closest_lines
from envs.tasks import Task, TaskError
from envs.tools import ToolCall, check_arguments


def line_fix_solution(path: str, buggy_line: str, fixed_line: str) -> tuple[ToolCall, ...]:
    """read_file(path), str_replace(path, buggy_line, fixed_line), submit()."""
    if "\n" in buggy_line or "\n" in fixed_line:
        raise ValueError("a line fix replaces one line: neither line may contain a newline")
    return (ToolCall("read_file", {"path": path}),
            ToolCall("str_replace", {"path": path, "old": buggy_line, "new": fixed_line}),
            ToolCall("submit", {}))


def scripted_solution(task: Task) -> list[ToolCall]:
    """A sequence of tool calls that solves `task` (its grade passes after them)."""
    if not task.solution:
        raise TaskError(f"task {task.task_id} has no reference solution to demonstrate")
    for call in task.solution:
        problem = check_arguments(call)
        if problem is not None:
            raise TaskError(f"task {task.task_id}: invalid reference solution: {problem}")
    if task.solution[-1].name != "submit":
        raise TaskError(f"task {task.task_id}: the reference solution must end with submit()")
    return list(task.solution)


_OPERATOR_CLASSES: tuple[tuple[str, ...], ...] = (
    ("+", "-", "*", "/", "//", "%", "**"),
    ("<", "<=", ">", ">=", "==", "!="),
    ("+=", "-=", "*=", "/="),
    ("and", "or"),
)


def identifiers(source: str) -> list[str]:
    """The distinct names (not keywords) in `source`, in order of first use; [] if it does not tokenise."""
    try:
        names = [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
                 if t.type == tokenize.NAME and not keyword.iskeyword(t.string)]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return []
    return list(dict.fromkeys(names))


def plausible_wrong_lines(line: str, names: tuple[str, ...] = ()) -> list[str]:
    """Every line one edit away from `line` (sorted, unique, `line` itself excluded).

    The edits: one operator replaced by another of its class (arithmetic, comparison, augmented
    assignment, ``and``/``or``), one integer literal plus or minus one, one ``not`` removed, one
    name replaced by another of `names` (e.g. the file's identifiers). Indentation is kept; a
    line that does not tokenise as Python gives no edits."""
    body = line.lstrip()
    indent = line[: len(line) - len(body)]
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(body + "\n").readline)
                  if t.type in (tokenize.OP, tokenize.NAME, tokenize.NUMBER)]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return []
    out: set[str] = set()
    for tok in tokens:
        start, end = tok.start[1], tok.end[1]
        replacements: list[str] = []
        for operators in _OPERATOR_CLASSES:
            if tok.string in operators:
                replacements += [op for op in operators if op != tok.string]
        if tok.type == tokenize.NUMBER and tok.string.isdigit():
            value = int(tok.string)
            replacements += [str(value + 1)] + ([str(value - 1)] if value > 0 else [])
        if tok.type == tokenize.NAME and not keyword.iskeyword(tok.string):
            replacements += [name for name in names if name != tok.string]
        if tok.string == "not":
            end = end + 1 if body[end:end + 1] == " " else end
            replacements.append("")
        out.update(indent + body[:start] + new + body[end:] for new in replacements)
    out.discard(line)
    return sorted(out)


def perturbed_solution(task: Task, rng: random.Random) -> list[ToolCall]:
    """The task's demonstration with a plausible wrong fix: its one ``str_replace`` writes a line
    one edit away from the fixed line (:func:`plausible_wrong_lines`), never the buggy line again:
    an operator or literal edit, or, where the line has none, another of the file's names.
    Raises TaskError naming the task if the solution has no single-line ``str_replace`` to perturb."""
    calls = scripted_solution(task)
    edits = [i for i, call in enumerate(calls) if call.name == "str_replace"]
    if len(edits) != 1 or "\n" in calls[edits[0]].arguments["new"]:
        raise TaskError(f"task {task.task_id}: a perturbed demonstration needs a solution with exactly one "
                        f"single-line str_replace, found {len(edits)}")
    call = calls[edits[0]]
    wrong: list[str] = []
    # operator and literal edits first; the file's names only where the line has neither
    for names in ((), tuple(identifiers(task.files.get(call.arguments["path"], "")))):
        wrong = wrong or [line for line in plausible_wrong_lines(call.arguments["new"], names)
                          if line != call.arguments["old"]]
    if not wrong:
        raise TaskError(f"task {task.task_id}: the fixed line {call.arguments['new']!r} has no plausible wrong edit")
    calls[edits[0]] = ToolCall("str_replace", {**call.arguments, "new": rng.choice(wrong)})
    return calls


def unindented_edit(task: Task, calls: list[ToolCall]) -> list[ToolCall]:
    """`calls` (a demonstration of `task`) with its last ``str_replace`` (the one that applies, after
    any missed ones of :func:`retried_edit`) writing the new line without its leading whitespace; the
    old string stays exact, so the edit applies and breaks the file's indentation. Raises TaskError
    naming the task if that call is not a single-line ``str_replace`` of an indented line."""
    edits = [i for i, call in enumerate(calls) if call.name == "str_replace"]
    new = calls[edits[-1]].arguments["new"] if edits else ""
    if not new or "\n" in new or new == new.lstrip():
        raise TaskError(f"task {task.task_id}: an unindented demonstration needs a last str_replace that "
                        f"writes one indented line, found {len(edits)} str_replace calls")
    out = list(calls)
    out[edits[-1]] = ToolCall("str_replace", {**calls[edits[-1]].arguments, "new": new.lstrip()})
    return out


def retried_edit(task: Task, calls: list[ToolCall], rng: random.Random) -> list[ToolCall]:
    """`calls` (a demonstration of `task`) with a missed ``str_replace`` before its one edit: the old
    line misremembered one plausible edit away (:func:`plausible_wrong_lines`), chosen among those
    that are nowhere in the file and whose closest line in it (what the tool shows on a miss,
    :func:`envs.env.closest_lines`) is the real one, so the retry copies what the agent was shown.
    Raises TaskError naming the task if there is no single-line edit or no such misremembering."""
    edits = [i for i, call in enumerate(calls) if call.name == "str_replace"]
    if len(edits) != 1 or "\n" in calls[edits[0]].arguments["old"]:
        raise TaskError(f"task {task.task_id}: a retried demonstration needs exactly one single-line "
                        f"str_replace, found {len(edits)}")
    call = calls[edits[0]]
    old, text = call.arguments["old"], task.files.get(call.arguments["path"], "")
    misses: list[str] = []
    # operator and literal slips first; the file's names only where the line has neither
    for names in ((), tuple(identifiers(text))):
        misses = misses or [line for line in plausible_wrong_lines(old, names)
                            if line.strip() not in text and closest_lines(text, line) == old]
    if not misses:
        raise TaskError(f"task {task.task_id}: the line {old!r} has no misremembering that the tool's hint "
                        f"would correct")
    miss = ToolCall("str_replace", {**call.arguments, "old": rng.choice(misses)})
    return calls[:edits[0]] + [miss] + calls[edits[0]:]
