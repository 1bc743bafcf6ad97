"""The coding environment: one task, one sandbox, tool calls in, bounded observations out.

* :meth:`CodingEnv.step` runs one tool call. Every problem with a call (unknown tool, bad
  arguments, missing file, ambiguous edit, ...) comes back as an observation with
  ``error=True``, never as an exception; exceptions mean the infrastructure failed.
  Observations are made printable and cut to ``max_observation_chars`` with a
  ``...[truncated N chars]...`` marker in the middle (head and tail are kept).
* File tools work on the host copy of the work dir (no process start); ``bash`` runs in the
  sandbox.
* :meth:`CodingEnv.grade` never trusts the work dir: it stops the agent's processes, copies the
  agent's regular files (no symlinks) into a *new* sandbox, drops anything that could change
  how tests run (``conftest.py``, ``sitecustomize.py``, ``*.pth``, runner configs, test files,
  caches, new top-level modules named like standard-library modules) and restores those the task
  itself ships, then writes the pristine hidden tests and runs ``task.grade_command`` there.
  The agent's ``.git`` is never copied: a task that needs version control (SWE-bench style)
  sets it up itself.
* A task's ``setup_command`` runs in the agent's sandbox when the environment is created,
  before the first step; if it fails, the constructor raises :class:`~envs.sandbox.SandboxError`
  naming the task (and leaves nothing behind).
* Sandboxes come from `factory` when one is given (a :class:`~envs.pool.SandboxPool`'s
  ``acquire``, a configured docker backend, ...), else from ``make_sandbox(backend, ...)``.
"""

from __future__ import annotations

import difflib
import os
import shlex
import stat
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Mapping

from envs.sandbox import (ExecResult, Sandbox, SandboxError, SandboxFactory, SandboxLimits, SandboxPathError,
                          make_sandbox)
from envs.tasks import Task
from envs.tools import ToolCall, check_arguments

MAX_GRADE_OUTPUT_CHARS = 8000
MAX_SETUP_OUTPUT_CHARS = 2000
MAX_GRADED_BYTES = 64 * 2**20                 # a bigger work dir fails its grade
RUNNER_FILES = frozenset({"conftest.py", "sitecustomize.py", "usercustomize.py", "pytest.ini", "tox.ini",
                          "setup.cfg", "pyproject.toml", "noxfile.py", ".coveragerc"})


@dataclass(frozen=True)
class StepResult:
    """The observation of one tool call; `done` after submit; `error` if the call failed."""

    observation: str
    done: bool
    error: bool


@dataclass(frozen=True)
class Grade:
    """The verdict of the pristine grader; reward is 1.0 if passed else 0.0."""

    passed: bool
    reward: float
    output: str


class _ToolError(Exception):
    """A tool call the agent got wrong; its message becomes the observation."""


# ---- observations ---------------------------------------------------------------------------

def make_printable(text: str) -> str:
    """Escape control characters (keeping newline and tab) and undecodable bytes."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch in "\n\t":
            out.append(ch)
        elif 0xDC80 <= ord(ch) <= 0xDCFF:          # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def truncate_middle(text: str, limit: int) -> str:
    """`text` cut to at most `limit` chars: two thirds head, one third tail, a marker between."""
    if len(text) <= limit:
        return text
    marker = f"\n...[truncated {len(text)} chars]...\n"          # an upper bound on the count
    keep = max(0, limit - len(marker))
    head, tail = keep * 2 // 3, keep - keep * 2 // 3
    marker = f"\n...[truncated {len(text) - head - tail} chars]...\n"
    return (text[:head] + marker + (text[len(text) - tail:] if tail else ""))[:limit]


def format_exec(result: ExecResult) -> str:
    """``exit_code: N`` then the non-empty ``stdout:`` / ``stderr:`` sections."""
    parts = [f"exit_code: {result.exit_code}" + (" (timed out)" if result.timed_out else "")]
    if result.stdout:
        parts.append("stdout:\n" + result.stdout.rstrip("\n"))
    if result.stderr:
        parts.append("stderr:\n" + result.stderr.rstrip("\n"))
    return "\n".join(parts)


# ---- grading --------------------------------------------------------------------------------

def is_runner_file(path: str) -> bool:
    """Files that decide how tests run: tests, runner hooks/configs, bytecode caches."""
    parts = PurePosixPath(path).parts
    name = parts[-1]
    return ("__pycache__" in parts or name.endswith((".pyc", ".pth")) or name in RUNNER_FILES
            or (name.startswith("test_") and name.endswith(".py")) or name.endswith("_test.py"))


def shadows_stdlib(path: str) -> bool:
    """A top-level module or package named like a standard-library module (e.g. unittest.py)."""
    parts = PurePosixPath(path).parts
    top = parts[0].removesuffix(".py") if len(parts) == 1 else parts[0]
    return top in sys.stdlib_module_names


def closest_lines(text: str, old: str, cutoff: float = 0.6, max_lines: int = 5000) -> str | None:
    """The run of ``len(old's lines)`` consecutive lines of `text` most similar to `old` (difflib
    ratio >= `cutoff`, whitespace at the ends ignored), as it stands in `text`; None if none is.
    Shown when a str_replace misses (as editing tools do), so the agent can copy the exact text."""
    lines = text.splitlines()
    width = len(old.strip("\n").splitlines()) or 1
    if len(lines) > max_lines or width > len(lines):
        return None
    target = old.strip()
    best, best_ratio = None, cutoff
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(target)
    for i in range(len(lines) - width + 1):
        window = "\n".join(lines[i:i + width])
        matcher.set_seq1(window.strip())
        if matcher.real_quick_ratio() < best_ratio or matcher.quick_ratio() < best_ratio:
            continue
        ratio = matcher.ratio()
        if ratio > best_ratio or (best is None and ratio >= best_ratio):
            best, best_ratio = window, ratio
    return best


def snapshot_files(root: Path, max_bytes: int = MAX_GRADED_BYTES) -> dict[str, str]:
    """The regular files under `root` (symlinks and special files skipped, caches pruned), as
    relative path -> text; bytes that are not UTF-8 survive as surrogate escapes."""
    files: dict[str, str] = {}
    total = 0
    for directory, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            full = os.path.join(directory, name)
            try:
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue                              # a symlink, a socket, an unreadable file
            with os.fdopen(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    continue
                total += info.st_size
                if total > max_bytes:
                    raise ValueError(f"the work dir holds more than {max_bytes} bytes of files; it is not graded")
                data = handle.read()
            files[os.path.relpath(full, root).replace(os.sep, "/")] = data.decode("utf-8", "surrogateescape")
    return files


def grading_files(task: Task, work: Mapping[str, str]) -> dict[str, str]:
    """The files of a grading dir: the agent's, minus runner files and new stdlib-shadowing
    modules, plus the task's own runner files and the hidden tests, both pristine."""
    def collides_with_hidden(path: str) -> bool:
        return any(path == h or path.startswith(h + "/") or h.startswith(path + "/") for h in task.hidden_tests)

    files = {path: text for path, text in work.items()
             if not is_runner_file(path) and not collides_with_hidden(path) and PurePosixPath(path).parts[0] != ".git"
             and (path in task.files or not shadows_stdlib(path))}
    files.update({path: text for path, text in task.files.items() if is_runner_file(path)})
    files.update(task.hidden_tests)
    return files


# ---- the environment ------------------------------------------------------------------------

class CodingEnv:
    """One episode of one task. Not thread-safe; use one per episode, as a context manager."""

    def __init__(self, task: Task, backend: str = "local", limits: SandboxLimits = SandboxLimits(),
                 max_observation_chars: int = 2000, *, factory: SandboxFactory | None = None) -> None:
        """`factory` (optional) makes the agent's and the grader's sandboxes instead of
        ``make_sandbox(backend, ...)``; `backend` is then only a label."""
        if max_observation_chars < 100:
            raise ValueError(f"max_observation_chars must be at least 100, got {max_observation_chars}")
        self.task = task
        self.backend = backend
        self.limits = limits
        self.max_observation_chars = max_observation_chars
        self.done = False
        self._factory: SandboxFactory = factory if factory is not None else partial(make_sandbox, backend)
        self.sandbox: Sandbox = self._factory(task.files, limits)
        self._closed = False
        if task.setup_command:
            try:
                self._run_setup()
            except BaseException:
                self.close()
                raise

    def _run_setup(self) -> None:
        result = self.sandbox.exec(shlex.join(self.task.setup_command), timeout=self.limits.timeout_s)
        if result.exit_code != 0 or result.timed_out:
            output = truncate_middle(make_printable(format_exec(result)), MAX_SETUP_OUTPUT_CHARS)
            raise SandboxError(f"the setup command of task {self.task.task_id} failed: {output}")

    @property
    def workdir(self) -> Path:
        """Host path of the agent's work dir."""
        return self.sandbox.workdir

    def __enter__(self) -> CodingEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def step(self, call: ToolCall) -> StepResult:
        """Run one tool call; problems with the call are observations with error=True."""
        if self._closed:
            raise RuntimeError(f"the environment of task {self.task.task_id} is closed")
        if self.done:
            return StepResult("Error: the episode is over: the work was already submitted.", done=True, error=True)
        try:
            problem = check_arguments(call)
            if problem is not None:
                raise _ToolError(problem)
            observation = getattr(self, f"_tool_{call.name}")(**call.arguments)
        except (_ToolError, SandboxPathError) as exc:
            return StepResult(self._bound(f"Error: {exc}"), done=False, error=True)
        self.done = call.name == "submit"
        return StepResult(self._bound(observation), done=self.done, error=False)

    def grade(self) -> Grade:
        """Run the pristine hidden tests against a copy of the agent's files in a fresh sandbox."""
        if self._closed:
            raise RuntimeError(f"the environment of task {self.task.task_id} is closed")
        self.sandbox.stop()     # nothing of the agent's may run (or change files) while we copy
        try:
            work = snapshot_files(self.sandbox.workdir)
        except ValueError as exc:
            return Grade(passed=False, reward=0.0, output=str(exc))
        grader = self._factory(grading_files(self.task, work), self.limits)
        try:
            result = grader.exec(shlex.join(self.task.grade_command), timeout=self.limits.timeout_s)
        finally:
            grader.close()
        passed = result.exit_code == 0 and not result.timed_out
        output = truncate_middle(make_printable(format_exec(result)), MAX_GRADE_OUTPUT_CHARS)
        return Grade(passed=passed, reward=1.0 if passed else 0.0, output=output)

    def close(self) -> None:
        """Kill the sandbox and delete its work dir. Idempotent."""
        if not self._closed:
            self._closed = True
            self.sandbox.close()

    # ---- tools (names match envs.tools.TOOL_SPECS) ----------------------------------------

    def _tool_bash(self, command: str) -> str:
        if "\x00" in command:
            raise _ToolError("the command contains a NUL byte.")
        return format_exec(self.sandbox.exec(command, timeout=self.limits.timeout_s))

    def _tool_read_file(self, path: str) -> str:
        text = self.sandbox.read_file(path)
        return text if text else f"[{path} is empty]"

    def _tool_write_file(self, path: str, content: str) -> str:
        self.sandbox.write_file(path, content)
        return f"Wrote {path}."

    def _tool_str_replace(self, path: str, old: str, new: str) -> str:
        if not old:
            raise _ToolError("old must not be empty.")
        text = self.sandbox.read_file(path)
        count = text.count(old)
        if count == 0:
            near = closest_lines(text, old)
            hint = f" The most similar text in {path}:\n{near}" if near is not None else ""
            raise _ToolError(f"old string not found in {path}.{hint}")
        if count > 1:
            raise _ToolError(f"old string occurs {count} times in {path}; make it unique.")
        self.sandbox.write_file(path, text.replace(old, new, 1))
        return f"Edited {path}."

    def _tool_submit(self) -> str:
        return "Submitted."

    def _bound(self, text: str) -> str:
        return truncate_middle(make_printable(text), self.max_observation_chars)
