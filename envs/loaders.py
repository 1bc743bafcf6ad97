"""Task loaders for outside formats: SWE-bench-style JSONL and Terminal-Bench-style task dirs.

Both produce :class:`~envs.tasks.Task` objects that :class:`~envs.env.CodingEnv` runs like any
other (grading in a pristine copy, hidden artifacts never in the agent's sandbox).

**SWE-bench JSONL** (:func:`load_swebench_jsonl`), one instance per line:

* ``instance_id`` (the task id), ``problem_statement`` (the instruction), ``repo``: the
  repository at the base commit, either a dict ``path -> text`` or the path of a local git
  repository (relative paths are relative to the JSONL file), ``base_commit`` (required for a
  git repository: only that commit's tree is read; its history, remotes, tags and reflog never
  reach the task), ``test_patch``, ``FAIL_TO_PASS`` and ``PASS_TO_PASS`` (lists of test ids, or
  JSON strings of lists, as in the published datasets);
* optional: ``patch`` (the gold patch: it becomes the reference solution, ``git apply`` in the
  work dir), ``split``, ``family`` (default: the repository's name), ``difficulty`` (1-3 or
  SWE-bench Verified's ``"<15 min fix"`` .. ``">4 hours"``), ``test_runner`` (``auto``,
  ``pytest`` or ``unittest``). Other fields of the published datasets are ignored.
* The agent's sandbox starts from a fresh ``git init`` with one commit of the base snapshot (the
  task's ``setup_command``). The test patch, the test ids and the grader
  (:mod:`envs.swebench_runner`) are hidden artifacts under ``.horizonrl/``: the patch is applied
  with ``git apply`` only in the pristine grading copy, whose test files are the task's own.

**Terminal-Bench task dirs** (:func:`load_terminal_bench_task`), one directory per task (its
name is the task id):

* ``task.yaml`` (``instruction``, optional ``difficulty`` easy/medium/hard or 1-3, ``category``
  (the family), ``split``; other keys are ignored) and/or ``instruction.md``;
* ``setup.sh`` (optional) runs in the agent's sandbox before the agent; ``tests/`` and
  ``run-tests.sh`` are hidden: after the agent, ``run-tests.sh`` runs in the grading copy with
  ``TEST_DIR`` pointing at the tests; exit code 0 passes; ``solution.sh`` (optional) is the
  reference solution (one ``bash`` call);
* every other file is the agent's starting work dir (``Dockerfile`` and ``docker-compose.y*ml``
  are ignored: the sandbox image is the backend's). Links are refused: a task dir must not be
  able to pull host files into a task.

A malformed file raises :class:`~envs.tasks.TaskError` naming the file (and line) and the
field. Loading many tasks with ``skip_broken=True`` collects the broken ones in
:attr:`LoadedTasks.broken` instead, so one bad task never stops a worker. :func:`load_tasks`
picks the loader from the path (native task JSONL, SWE-bench JSONL, one task dir, a dir of
task dirs).
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from envs.sandbox import WORKDIR
from envs.tasks import SPLITS, Task, TaskError, check_relative_path
from envs.tools import ToolCall

HIDDEN_DIR = ".horizonrl"                   # where hidden artifacts sit in the grading copy
MAX_TASK_BYTES = 64 * 2**20                 # a task's files, all together
RUNNER_SOURCE = Path(__file__).with_name("swebench_runner.py")
SWEBENCH_RUNNERS = ("auto", "pytest", "unittest")
SWEBENCH_DIFFICULTY = {"<15 min fix": 1, "15 min - 1 hour": 2, "1-4 hours": 3, ">4 hours": 3}
TERMINAL_BENCH_DIFFICULTY = {"easy": 1, "medium": 2, "hard": 3}
TERMINAL_BENCH_RESERVED = frozenset({"task.yaml", "instruction.md", "setup.sh", "run-tests.sh", "solution.sh",
                                     "tests", "Dockerfile", "docker-compose.yaml", "docker-compose.yml"})
GIT_BASE_SETUP = ("git -c init.defaultBranch=main init -q && git add -A && "
                  "git -c user.name=horizonrl -c user.email=horizonrl@localhost -c commit.gpgsign=false "
                  "commit -q --no-verify --allow-empty -m {message}")


@dataclass(frozen=True)
class BrokenTask:
    """A task that could not be loaded: where it is (file[:line] or dir) and why."""

    source: str
    error: str


@dataclass(frozen=True)
class LoadedTasks:
    """The tasks that loaded and the broken ones that were skipped."""

    tasks: tuple[Task, ...]
    broken: tuple[BrokenTask, ...] = ()


class _Collector:
    """Gathers tasks; a TaskError is raised at once, or recorded when `skip_broken`."""

    def __init__(self, skip_broken: bool) -> None:
        self.skip_broken = skip_broken
        self.tasks: list[Task] = []
        self.broken: list[BrokenTask] = []

    def add(self, source: str, make: Callable[[], Task]) -> None:
        try:
            self.tasks.append(make())
        except TaskError as exc:
            message = str(exc) if str(exc).startswith(source) else f"{source}: {exc}"
            if not self.skip_broken:
                raise TaskError(message) from None
            self.broken.append(BrokenTask(source, message))

    def result(self) -> LoadedTasks:
        seen: dict[str, int] = {}
        for task in self.tasks:
            seen[task.task_id] = seen.get(task.task_id, 0) + 1
        duplicates = sorted(task_id for task_id, count in seen.items() if count > 1)
        if duplicates:
            raise TaskError(f"duplicate task id(s): {', '.join(duplicates)}")
        return LoadedTasks(tuple(self.tasks), tuple(self.broken))


# ---- dispatch -------------------------------------------------------------------------------

def load_tasks(path: Path, *, split: str = "train", skip_broken: bool = False) -> LoadedTasks:
    """Tasks from `path`: a ``.jsonl`` file (native :meth:`Task.to_dict` lines or SWE-bench
    instances, told apart by ``instance_id``), a Terminal-Bench task dir, or a dir of them.
    `split` is given to tasks whose record does not name one."""
    path = Path(path)
    if path.is_dir():
        if _is_terminal_bench_task(path):
            collector = _Collector(skip_broken)
            collector.add(str(path), lambda: load_terminal_bench_task(path, split=split))
            return collector.result()
        return load_terminal_bench_dir(path, split=split, skip_broken=skip_broken)
    if path.suffix == ".jsonl" and path.is_file():
        first = next((record for _, record in _jsonl_records(path, _Collector(True))), None)
        if isinstance(first, dict) and "instance_id" in first:
            return load_swebench_jsonl(path, split=split, skip_broken=skip_broken)
        return load_native_jsonl(path, skip_broken=skip_broken)
    raise TaskError(f"{path}: not a .jsonl task file or a task directory")


def load_native_jsonl(path: Path, *, skip_broken: bool = False) -> LoadedTasks:
    """Tasks from a JSON-lines file of :meth:`Task.to_dict` records; errors name the line."""
    collector = _Collector(skip_broken)
    for source, record in _jsonl_records(path, collector):
        collector.add(source, lambda record=record: Task.from_dict(record))
    return collector.result()


def _jsonl_records(path: Path, collector: _Collector) -> Iterator[tuple[str, Any]]:
    """(``file:line``, parsed JSON) of each non-empty line; unparsable lines go to `collector`."""
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise TaskError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            source = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                collector.add(source, _raise(TaskError(f"not valid JSON ({exc.msg} at column {exc.colno})")))
                continue
            yield source, record


def _raise(error: TaskError) -> Callable[[], Task]:
    def fail() -> Task:
        raise error
    return fail


# ---- SWE-bench ------------------------------------------------------------------------------

def load_swebench_jsonl(path: Path, *, split: str = "train", skip_broken: bool = False) -> LoadedTasks:
    """SWE-bench-style instances (one JSON object per line); see the module docstring."""
    path = Path(path)
    collector = _Collector(skip_broken)
    for source, record in _jsonl_records(path, collector):
        collector.add(source, lambda record=record: swebench_task(record, base_dir=path.parent, split=split))
    return collector.result()


def swebench_task(record: Any, *, base_dir: Path, split: str = "train") -> Task:
    """One SWE-bench-style instance as a Task; TaskError names the bad field."""
    if not isinstance(record, dict):
        raise TaskError(f"an instance must be a JSON object, got {type(record).__name__}")
    instance_id = _string(record, "instance_id")
    statement = _string(record, "problem_statement")
    repo = record.get("repo")
    base_commit = record.get("base_commit", "")
    if not isinstance(base_commit, str):
        raise TaskError(f"field 'base_commit' must be a string, got {type(base_commit).__name__}")
    if isinstance(repo, dict):
        files = _checked_files(repo, "repo")
        family = "swebench"
    elif isinstance(repo, str) and repo:
        repo_path = Path(repo) if Path(repo).is_absolute() else base_dir / repo
        if not base_commit:
            raise TaskError("field 'base_commit' is required when 'repo' is a git repository path")
        files = git_snapshot(repo_path, base_commit)
        family = repo_path.resolve().name or "swebench"
    else:
        raise TaskError("field 'repo' must be a dict of path -> text or the path of a local git repository, "
                        f"got {repo!r}")
    test_patch = record.get("test_patch", "")
    if not isinstance(test_patch, str):
        raise TaskError(f"field 'test_patch' must be a string (a unified diff), got {type(test_patch).__name__}")
    fail_to_pass = _test_ids(record, "FAIL_TO_PASS")
    pass_to_pass = _test_ids(record, "PASS_TO_PASS")
    if not fail_to_pass and not pass_to_pass:
        raise TaskError("fields 'FAIL_TO_PASS' and 'PASS_TO_PASS' are both empty: there is nothing to grade")
    runner = record.get("test_runner", "auto")
    if runner not in SWEBENCH_RUNNERS:
        raise TaskError(f"field 'test_runner' must be one of {SWEBENCH_RUNNERS}, got {runner!r}")
    family = record.get("family", family)
    if not isinstance(family, str) or not family.strip():
        raise TaskError(f"field 'family' must be a non-empty string, got {family!r}")
    spec = {"instance_id": instance_id, "test_patch_file": f"{HIDDEN_DIR}/test.patch",
            "fail_to_pass": fail_to_pass, "pass_to_pass": pass_to_pass, "runner": runner}
    hidden = {f"{HIDDEN_DIR}/swebench_runner.py": RUNNER_SOURCE.read_text(encoding="utf-8"),
              f"{HIDDEN_DIR}/spec.json": json.dumps(spec, indent=1) + "\n",
              f"{HIDDEN_DIR}/test.patch": test_patch}
    solution: tuple[ToolCall, ...] = ()
    patch = record.get("patch")
    if patch is not None:
        if not isinstance(patch, str) or not patch.strip():
            raise TaskError("field 'patch' (the gold patch) must be a non-empty unified diff")
        solution = (ToolCall("bash", {"command": _heredoc("git apply --whitespace=nowarn", patch)}),
                    ToolCall("submit", {}))
    message = f"base commit {base_commit}" if base_commit else "base snapshot"
    instruction = (f"{statement.strip()}\n\nThe repository is in {WORKDIR}, a git repository at its base commit. "
                   "Resolve the issue above; hidden tests will check your fix.\n")
    return Task(task_id=instance_id, family=family, split=_split(record, split),
                difficulty=_difficulty(record.get("difficulty", 2), SWEBENCH_DIFFICULTY),
                instruction=instruction, files=files, hidden_tests=hidden,
                grade_command=("python3", "-I", f"{HIDDEN_DIR}/swebench_runner.py", f"{HIDDEN_DIR}/spec.json"),
                solution=solution, setup_command=("bash", "-c", GIT_BASE_SETUP.format(message=shlex.quote(message))))


def git_snapshot(repo: Path, commit: str) -> dict[str, str]:
    """The files of `commit` in the local git repository `repo` (its tree only: no history);
    symlinks and submodules are left out, bytes that are not UTF-8 kept as surrogate escapes."""
    if not (repo / ".git").exists() and not (repo / "HEAD").is_file():
        raise TaskError(f"field 'repo': {repo} is not a local git repository (a dict of files or the path of a "
                        "cloned repository is needed)")

    def git(*args: str, data: bytes | None = None) -> bytes:
        try:
            result = subprocess.run(["git", "-c", f"safe.directory={repo.resolve()}", "-C", str(repo), *args],
                                    input=data, capture_output=True, env={"PATH": "/usr/bin:/bin", "HOME": "/"},
                                    timeout=120)
        except FileNotFoundError:
            raise TaskError("git is needed to read a repository snapshot but is not installed") from None
        if result.returncode != 0:
            raise TaskError(f"git {args[0]} failed in {repo}: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout

    try:
        sha = git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}").decode().strip()
    except TaskError:
        raise TaskError(f"field 'base_commit': {commit!r} is not a commit of {repo}") from None
    entries = []
    for entry in git("ls-tree", "-r", "-z", "--full-tree", sha).split(b"\0"):
        if not entry:
            continue
        meta, _, name = entry.partition(b"\t")
        mode, kind, blob = meta.decode().split()
        if kind == "blob" and mode in ("100644", "100755"):
            entries.append((name.decode("utf-8", errors="surrogateescape"), blob))
    if not entries:
        return {}
    batch = git("cat-file", "--batch", data="".join(f"{blob}\n" for _, blob in entries).encode())
    files, offset, total = {}, 0, 0
    for name, blob in entries:
        header_end = batch.index(b"\n", offset)
        size = int(batch[offset:header_end].split()[2])
        total += size
        if total > MAX_TASK_BYTES:
            raise TaskError(f"field 'repo': the snapshot of {repo} is over {MAX_TASK_BYTES} bytes")
        files[check_relative_path(name, "repo")] = batch[header_end + 1:header_end + 1 + size].decode(
            "utf-8", errors="surrogateescape")
        offset = header_end + 1 + size + 1
    return files


def _heredoc(command: str, text: str) -> str:
    """``command <<'EOF'`` with `text` as its stdin, with a delimiter that is no line of `text`."""
    delimiter, lines = "HORIZONRL_EOF", set(text.splitlines())
    while delimiter in lines:
        delimiter += "_"
    return f"{command} <<'{delimiter}'\n{text if text.endswith(chr(10)) else text + chr(10)}{delimiter}"


def _test_ids(record: dict[str, Any], field: str) -> list[str]:
    value = record.get(field, [])
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise TaskError(f"field {field!r} must be a list of test ids or a JSON string of one, got {value!r}") from None
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise TaskError(f"field {field!r} must be a list of non-empty test id strings, got {value!r}")
    return list(value)


# ---- Terminal-Bench -------------------------------------------------------------------------

def _is_terminal_bench_task(directory: Path) -> bool:
    return (directory / "task.yaml").is_file() or (directory / "instruction.md").is_file()


def load_terminal_bench_dir(root: Path, *, split: str = "train", skip_broken: bool = False) -> LoadedTasks:
    """Every task dir directly under `root` (names starting with '.' are skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise TaskError(f"{root}: not a directory")
    collector = _Collector(skip_broken)
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir() or child.is_symlink():
            continue
        collector.add(str(child), lambda child=child: load_terminal_bench_task(child, split=split))
    return collector.result()


def load_terminal_bench_task(directory: Path, *, split: str = "train") -> Task:
    """One Terminal-Bench-style task dir as a Task; see the module docstring."""
    directory = Path(directory)
    meta_path, instruction_path = directory / "task.yaml", directory / "instruction.md"
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        meta = _read_yaml(meta_path)
    elif not instruction_path.is_file():
        raise TaskError(f"{directory}: a task dir needs task.yaml or instruction.md")
    instruction = meta.get("instruction")
    if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
        raise TaskError(f"{meta_path}: field 'instruction' must be a non-empty string, got {instruction!r}")
    if instruction_path.is_file():
        text = _read_text(instruction_path, directory)
        if instruction is not None and text.strip():
            raise TaskError(f"{directory}: both task.yaml (field 'instruction') and instruction.md give the "
                            "instruction; keep one")
        instruction = text
    if instruction is None or not instruction.strip():
        raise TaskError(f"{meta_path if meta_path.is_file() else instruction_path}: field 'instruction' is missing "
                        "or empty")
    tests_dir, run_tests = directory / "tests", directory / "run-tests.sh"
    if not run_tests.is_file():
        raise TaskError(f"{run_tests}: missing (it runs the tests after the agent; exit code 0 passes)")
    tests = _read_tree(tests_dir, directory) if tests_dir.is_dir() else {}
    hidden = {f"{HIDDEN_DIR}/tests/{path}": text for path, text in tests.items()}
    hidden[f"{HIDDEN_DIR}/run-tests.sh"] = _read_text(run_tests, directory)
    files = {path: text for path, text in _read_tree(directory, directory).items()
             if PurePosixPath(path).parts[0] not in TERMINAL_BENCH_RESERVED}
    setup = directory / "setup.sh"
    solution_path = directory / "solution.sh"
    solution: tuple[ToolCall, ...] = ()
    if solution_path.is_file():
        solution = (ToolCall("bash", {"command": _read_text(solution_path, directory)}), ToolCall("submit", {}))
    family = meta.get("category", "terminal-bench")
    if not isinstance(family, str) or not family.strip():
        raise TaskError(f"{meta_path}: field 'category' must be a non-empty string, got {family!r}")
    try:
        difficulty = _difficulty(meta.get("difficulty", "medium"), TERMINAL_BENCH_DIFFICULTY)
        task_split = _split(meta, split)
    except TaskError as exc:
        raise TaskError(f"{meta_path}: {exc}") from None
    try:
        return Task(task_id=directory.resolve().name, family=family, split=task_split, difficulty=difficulty,
                    instruction=instruction, files=files, hidden_tests=hidden,
                    grade_command=("env", f"TEST_DIR={WORKDIR}/{HIDDEN_DIR}/tests", "bash",
                                   f"{HIDDEN_DIR}/run-tests.sh"),
                    solution=solution,
                    setup_command=("bash", "-c", _read_text(setup, directory)) if setup.is_file() else ())
    except TaskError as exc:
        raise TaskError(f"{directory}: {exc}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml   # PyYAML (a dependency of omegaconf / hydra-core)

    try:
        data = yaml.safe_load(_read_text(path, path.parent))
    except yaml.YAMLError as exc:
        raise TaskError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TaskError(f"{path}: must be a mapping of fields, got {type(data).__name__}")
    return data


def _read_text(path: Path, root: Path) -> str:
    """A regular file's text (no symlink), bytes that are not UTF-8 kept as surrogate escapes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        why = "is a symbolic link; task dirs may not contain links" if path.is_symlink() else exc.strerror
        raise TaskError(f"{path}: {why}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise TaskError(f"{path}: not a regular file")
        data = handle.read(MAX_TASK_BYTES + 1)
    if len(data) > MAX_TASK_BYTES:
        raise TaskError(f"{path}: over {MAX_TASK_BYTES} bytes")
    return data.decode("utf-8", errors="surrogateescape")


def _read_tree(directory: Path, root: Path) -> dict[str, str]:
    """Every file under `directory` as relative path -> text; links and special files are errors."""
    files, total = {}, 0
    for current, dirs, names in os.walk(directory, followlinks=False):
        dirs.sort()
        for name in dirs:
            if os.path.islink(os.path.join(current, name)):
                raise TaskError(f"{os.path.join(current, name)}: is a symbolic link; task dirs may not contain links")
        dirs[:] = [d for d in dirs if d not in ("__pycache__", ".git")]
        for name in sorted(names):
            full = Path(current) / name
            text = _read_text(full, root)
            total += len(text)
            if total > MAX_TASK_BYTES:
                raise TaskError(f"{directory}: its files are over {MAX_TASK_BYTES} bytes")
            files[check_relative_path(full.relative_to(directory).as_posix(), str(full))] = text
    return files


# ---- shared field helpers -------------------------------------------------------------------

def _string(record: dict[str, Any], field: str) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise TaskError(f"field {field!r} must be a non-empty string, got {value!r}")
    return value


def _checked_files(value: dict[Any, Any], field: str) -> dict[str, str]:
    for path, text in value.items():
        check_relative_path(path, field)
        if PurePosixPath(path).parts[0] == ".git":
            raise TaskError(f"field {field!r}: {path!r} is under .git/; the repository is set up from the files alone")
        if not isinstance(text, str):
            raise TaskError(f"field {field!r}[{path!r}] must be a string, got {type(text).__name__}")
    total = sum(len(text) for text in value.values())
    if total > MAX_TASK_BYTES:
        raise TaskError(f"field {field!r}: the files are over {MAX_TASK_BYTES} bytes")
    return dict(value)


def _split(record: dict[str, Any], default: str) -> str:
    value = record.get("split", default)
    if value not in SPLITS:
        raise TaskError(f"field 'split' must be one of {SPLITS}, got {value!r}")
    return value


def _difficulty(value: Any, names: dict[str, int]) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in (1, 2, 3):
        return value
    if isinstance(value, str) and value.strip().lower() in {k.lower(): v for k, v in names.items()}:
        return {k.lower(): v for k, v in names.items()}[value.strip().lower()]
    raise TaskError(f"field 'difficulty' must be 1, 2, 3 or one of {sorted(names)}, got {value!r}")
