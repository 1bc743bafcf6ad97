"""SWE-bench and Terminal-Bench loaders: the shipped examples end to end (the reference solution
passes, doing nothing fails), no future history, hidden artifacts only at grading, the grader
under pytest and unittest, clear errors for malformed tasks, skip-and-report of broken ones."""

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from envs.env import CodingEnv, grading_files
from envs.loaders import (HIDDEN_DIR, LoadedTasks, git_snapshot, load_swebench_jsonl, load_tasks,
                          load_terminal_bench_dir, load_terminal_bench_task)
from envs.sandbox import SandboxError, SandboxLimits
from envs.solver import scripted_solution
from envs.suite import load_suite, save_tasks_jsonl, builtin_suite
from envs.swebench_runner import is_pytest_id, pytest_outcome, unittest_name
from envs.tasks import Task, TaskError
from envs.tools import ToolCall

ROOT = Path(__file__).resolve().parents[1]
SWE = ROOT / "envs" / "examples" / "swebench" / "tasks.jsonl"
TB = ROOT / "envs" / "examples" / "terminal_bench"
LIMITS = SandboxLimits(timeout_s=30.0)
EXAMPLES = {task.task_id: task for task in load_tasks(SWE).tasks + load_tasks(TB).tasks}


def swe_records() -> list[dict]:
    return [json.loads(line) for line in SWE.read_text().splitlines()]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def bash(command: str) -> ToolCall:
    return ToolCall("bash", {"command": command})


# ---- the examples -------------------------------------------------------------------------------

def test_the_examples_load_as_tasks():
    assert sorted(EXAMPLES) == ["calc__clamp-1", "count-errors", "fix-sales-report", "hello-file",
                                "inventory__stock-3", "textkit__slug-2"]
    stock, slug = EXAMPLES["inventory__stock-3"], EXAMPLES["textkit__slug-2"]
    assert (stock.split, stock.difficulty, slug.split, slug.difficulty) == ("heldout", 2, "train", 2)
    assert EXAMPLES["calc__clamp-1"].difficulty == 1
    assert EXAMPLES["fix-sales-report"].family == "data-processing" and EXAMPLES["count-errors"].difficulty == 1
    assert EXAMPLES["hello-file"].family == "terminal-bench"
    report = EXAMPLES["fix-sales-report"]
    assert set(report.files) == {"report.py"}                        # task.yaml, tests, scripts are not the agent's
    assert set(report.hidden_tests) == {f"{HIDDEN_DIR}/tests/test_report.py", f"{HIDDEN_DIR}/run-tests.sh"}
    assert report.setup_command[:2] == ("bash", "-c") and "sales.csv" in report.setup_command[2]
    for task in EXAMPLES.values():
        assert task.solution and Task.from_dict(json.loads(json.dumps(task.to_dict()))) == task


@pytest.mark.parametrize("task_id", sorted(EXAMPLES))
def test_examples_pass_with_their_solution_and_fail_without(task_id):
    task = EXAMPLES[task_id]
    with CodingEnv(task, limits=LIMITS) as env:
        untouched = env.grade()
        assert not untouched.passed, untouched.output
        for call in scripted_solution(task):
            result = env.step(call)
            assert not result.error, result.observation
        solved = env.grade()
        assert solved.passed, solved.output
    if task_id.startswith(("calc", "textkit", "inventory")):
        assert "RESOLVED" in solved.output and "NOT RESOLVED" in untouched.output


def test_a_wrong_fix_fails_the_pass_to_pass_tests():
    task = EXAMPLES["calc__clamp-1"]
    with CodingEnv(task, limits=LIMITS) as env:
        text = env.sandbox.read_file("calc/ops.py")
        env.sandbox.write_file("calc/ops.py", text.replace("return value\n    return value", "return high\n    return high"))
        grade = env.grade()
        assert not grade.passed and "FAIL_TO_PASS: 1/1 passed\nPASS_TO_PASS: 2/3 passed" in grade.output


def test_the_agent_gets_a_fresh_one_commit_repository_and_no_hidden_artifact():
    task = EXAMPLES["textkit__slug-2"]
    with CodingEnv(task, limits=LIMITS) as env:
        out = env.step(bash("git log --all --format=%s; git remote; git tag; git status --porcelain; "
                            "git rev-list --all | wc -l; ls -A; ls tests")).observation
        assert out.split("stdout:\n")[1].split("\n") == [
            f"base commit {'1' * 40}", "1", ".git", "tests", "textkit", "__init__.py", "test_slug.py"]
        assert "test_case.py" not in out                                # the test patch is not applied here
        env.step(bash("echo 'x = 1' > scratch.py && git add -A && git commit -qm wip && echo done"))
        assert (env.workdir / "scratch.py").exists()
        files = grading_files(task, {".git/config": "[core]\n", "textkit/slug.py": "bad", "tests/test_slug.py": "x"})
        assert ".git/config" not in files and files["tests/test_slug.py"] == task.files["tests/test_slug.py"]


# ---- SWE-bench from a local git repository -----------------------------------------------------

def git(repo: Path, *args: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(repo), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def upstream(tmp_path):
    """A git repository with a base commit and a later one holding the fix and a tag."""
    repo = tmp_path / "upstream"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "core.py").write_text("def double(x):\n    return x + x + 1\n")
    (repo / "tests").mkdir()
    (repo / "tests" / "__init__.py").write_text("")
    (repo / "tests" / "test_core.py").write_text(
        "import unittest\nfrom pkg.core import double\n\n\nclass T(unittest.TestCase):\n"
        "    def test_type(self):\n        self.assertIsInstance(double(1), int)\n")
    (repo / "link").symlink_to("/etc/passwd")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    base = git(repo, "rev-parse", "HEAD")
    (repo / "pkg" / "core.py").write_text("def double(x):\n    return 2 * x  # FUTURE-FIX\n")
    (repo / "FUTURE.txt").write_text("from the future\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "the future fix")
    git(repo, "tag", "v2")
    future = git(repo, "rev-parse", "HEAD")
    test_file = repo / "tests" / "test_core.py"
    base_tests = test_file.read_text()
    test_file.write_text(base_tests + "\n    def test_value(self):\n        self.assertEqual(double(4), 8)\n")
    test_patch = git(repo, "diff") + "\n"
    test_file.write_text(base_tests)
    record = {"instance_id": "up__core-1", "repo": "upstream", "base_commit": base, "problem_statement": "double is off by one",
              "test_patch": test_patch, "FAIL_TO_PASS": ["tests/test_core.py::T::test_value"],
              "PASS_TO_PASS": ["tests/test_core.py::T::test_type"]}
    return repo, base, future, record


def test_a_git_repository_is_read_at_the_base_commit_without_its_future(upstream, tmp_path):
    repo, base, future, record = upstream
    task = load_swebench_jsonl(write_jsonl(tmp_path / "up.jsonl", [record])).tasks[0]
    assert set(task.files) == {"pkg/__init__.py", "pkg/core.py", "tests/__init__.py", "tests/test_core.py"}
    assert "FUTURE" not in json.dumps(task.to_dict()) and task.family == "upstream"
    with CodingEnv(task, limits=LIMITS) as env:
        seen = env.step(bash(f"git log --all --oneline | wc -l; git tag; git cat-file -t {future} 2>&1; "
                             f"git cat-file -t {base} 2>&1; git reflog | wc -l; git remote -v")).observation
        lines = seen.split("stdout:\n")[1].splitlines()
        assert lines[0] == "1" and lines[-1] == "1" and len(lines) == 4, seen   # one commit, no tag, no remote
        assert all(line.startswith("fatal: ") for line in lines[1:3]), seen       # neither upstream commit exists
        assert not env.grade().passed
        env.sandbox.write_file("pkg/core.py", "def double(x):\n    return 2 * x\n")
        assert env.grade().passed


def test_git_repository_errors_name_the_field(upstream, tmp_path):
    repo, base, future, record = upstream
    with pytest.raises(TaskError, match=r"up.jsonl:1: field 'base_commit': 'deadbeef' is not a commit"):
        load_swebench_jsonl(write_jsonl(tmp_path / "up.jsonl", [dict(record, base_commit="deadbeef")]))
    with pytest.raises(TaskError, match=r"up.jsonl:1: field 'repo': .* is not a local git repository"):
        load_swebench_jsonl(write_jsonl(tmp_path / "up.jsonl", [dict(record, repo="astropy/astropy")]))
    with pytest.raises(TaskError, match=r"field 'base_commit' is required"):
        load_swebench_jsonl(write_jsonl(tmp_path / "up.jsonl", [dict(record, base_commit="")]))
    assert git_snapshot(repo, future)["pkg/core.py"].endswith("# FUTURE-FIX\n")


# ---- the grader ----------------------------------------------------------------------------------

def grading_dir(tmp_path: Path, task: Task, changes: dict[str, str]) -> Path:
    root = tmp_path / "grading"
    for path, text in grading_files(task, {**task.files, **changes}).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def run_grader(root: Path) -> subprocess.CompletedProcess:
    """The grader under this test's Python (which has pytest), as the sandbox would run it."""
    return subprocess.run([sys.executable, "-I", f"{HIDDEN_DIR}/swebench_runner.py", f"{HIDDEN_DIR}/spec.json"],
                          cwd=root, capture_output=True, text=True, timeout=120)


FIXED_CLAMP = EXAMPLES["calc__clamp-1"].files["calc/ops.py"].replace(
    "if value > high:\n        return value", "if value > high:\n        return high")


@pytest.mark.parametrize("changes, resolved", [
    ({}, False),
    ({"calc/ops.py": FIXED_CLAMP}, True),
    ({"pytest.py": "import sys\nsys.exit(0)\n"}, False),                       # a fake pytest cannot stand in
    ({"calc/ops.py": "import os\nos._exit(0)\n"}, False),                       # dying early reports nothing
])
def test_the_grader_under_pytest(tmp_path, changes, resolved):
    root = grading_dir(tmp_path, EXAMPLES["calc__clamp-1"], changes)
    done = run_grader(root)
    assert "with pytest" in done.stdout, done.stdout + done.stderr
    assert (done.returncode == 0) == resolved, done.stdout
    assert ("\nRESOLVED" in done.stdout) == resolved


def test_the_grader_reports_a_test_patch_that_does_not_apply(tmp_path):
    task = EXAMPLES["calc__clamp-1"]
    broken = Task.from_dict(dict(task.to_dict(), hidden_tests={**task.hidden_tests,
                                                                f"{HIDDEN_DIR}/test.patch": "--- a/nope.py\n+++ b/nope.py\n@@ -1 +1 @@\n-a\n+b\n"}))
    done = run_grader(grading_dir(tmp_path, broken, {"calc/ops.py": FIXED_CLAMP}))
    assert done.returncode == 1 and "the test patch does not apply" in done.stdout


def test_plain_test_functions_need_pytest(tmp_path):
    record = {"instance_id": "fn-1", "repo": {"mod.py": "X = 1\n", "test_mod.py": "from mod import X\n\ndef test_x():\n    assert X == 1\n"},
              "problem_statement": "p", "test_patch": "", "FAIL_TO_PASS": ["test_mod.py::test_x"], "PASS_TO_PASS": [],
              "test_runner": "unittest"}
    task = load_swebench_jsonl(write_jsonl(tmp_path / "fn.jsonl", [record])).tasks[0]
    done = run_grader(grading_dir(tmp_path, task, {}))
    assert done.returncode == 1 and "a plain test function needs pytest" in done.stdout
    forced = load_swebench_jsonl(write_jsonl(tmp_path / "fn.jsonl", [dict(record, test_runner="pytest")])).tasks[0]
    shutil.rmtree(tmp_path / "grading")
    assert run_grader(grading_dir(tmp_path, forced, {})).returncode == 0


def test_test_id_conversions():
    assert unittest_name("tests/test_x.py::TestC::test_m") == "tests.test_x.TestC.test_m"
    assert unittest_name("tests/test_x.py::TestC") == "tests.test_x.TestC"
    assert unittest_name("tests/test_x.py") == "tests.test_x"
    assert unittest_name("test_m (pkg.test_x.TestC)") == "pkg.test_x.TestC.test_m"
    assert unittest_name("test_m (pkg.test_x.TestC.test_m)") == "pkg.test_x.TestC.test_m"
    assert unittest_name("pkg.test_x.TestC.test_m") == "pkg.test_x.TestC.test_m"
    assert is_pytest_id("a/test_b.py::c") and not is_pytest_id("test_m (a.B)")
    outcomes = {"t.py::A::x": "passed", "t.py::A::y": "failed", "t.py::f[1]": "passed", "t.py::f[2]": "passed"}
    assert pytest_outcome("t.py::A::x", outcomes) == "passed"
    assert pytest_outcome("t.py::A", outcomes) == "failed"
    assert pytest_outcome("t.py::f", outcomes) == "passed"
    assert pytest_outcome("t.py::missing", outcomes) == "not run"


# ---- malformed tasks -----------------------------------------------------------------------------

@pytest.mark.parametrize("change, fragment", [
    ({"instance_id": ""}, "field 'instance_id'"),
    ({"problem_statement": None}, "field 'problem_statement'"),
    ({"repo": 7}, "field 'repo'"),
    ({"repo": {"../evil.py": "x"}}, "repo: file path '../evil.py'"),
    ({"repo": {"a.py": 3}}, "field 'repo'\\['a.py'\\]"),
    ({"repo": {".git/hooks/post-commit": "x"}}, "is under .git/"),
    ({"FAIL_TO_PASS": "not json"}, "field 'FAIL_TO_PASS'"),
    ({"PASS_TO_PASS": [1]}, "field 'PASS_TO_PASS'"),
    ({"FAIL_TO_PASS": [], "PASS_TO_PASS": []}, "nothing to grade"),
    ({"test_patch": ["x"]}, "field 'test_patch'"),
    ({"patch": ""}, "field 'patch'"),
    ({"difficulty": "a week"}, "field 'difficulty'"),
    ({"split": "test"}, "field 'split'"),
    ({"test_runner": "nose"}, "field 'test_runner'"),
])
def test_malformed_swebench_records_name_the_file_line_and_field(tmp_path, change, fragment):
    records = swe_records()
    records[1] = {**records[1], **change}
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(TaskError, match=f"bad.jsonl:2: .*{fragment}"):
        load_swebench_jsonl(path)
    loaded = load_swebench_jsonl(path, skip_broken=True)
    assert [t.task_id for t in loaded.tasks] == ["calc__clamp-1", "inventory__stock-3"]
    assert [b.source for b in loaded.broken] == [f"{path}:2"]


def test_broken_json_lines_are_skipped_and_reported(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [swe_records()[0], "{not json", "[1, 2]"])
    with pytest.raises(TaskError, match=r"mixed.jsonl:2: not valid JSON"):
        load_tasks(path)
    loaded = load_tasks(path, skip_broken=True)
    assert len(loaded.tasks) == 1
    assert [(b.source.rsplit("/", 1)[1], b.error.split(": ", 1)[1][:20]) for b in loaded.broken] == [
        ("mixed.jsonl:2", "not valid JSON (Expe"), ("mixed.jsonl:3", "an instance must be ")]


def make_tb(root: Path, name: str = "t1", **files: str) -> Path:
    directory = root / name
    defaults = {"instruction.md": "Do it.\n", "run-tests.sh": "exit 0\n", "tests/test_x.py": "pass\n"}
    for path, text in {**defaults, **files}.items():
        if text is None:
            continue
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_text(text)
    return directory


@pytest.mark.parametrize("files, fragment", [
    ({"run-tests.sh": None}, r"t1/run-tests.sh: missing"),
    ({"instruction.md": None}, r"t1: a task dir needs task.yaml or instruction.md"),
    ({"instruction.md": "  \n"}, r"t1/instruction.md: field 'instruction' is missing"),
    ({"task.yaml": "instruction: [1, 2\n"}, r"t1/task.yaml: not valid YAML"),
    ({"task.yaml": "- a\n- b\n"}, r"t1/task.yaml: must be a mapping"),
    ({"task.yaml": "difficulty: extreme\n"}, r"t1/task.yaml: field 'difficulty'"),
    ({"task.yaml": "split: test\n"}, r"t1/task.yaml: field 'split'"),
    ({"task.yaml": "category: 3\n"}, r"t1/task.yaml: field 'category'"),
    ({"task.yaml": "instruction: 5\n"}, r"t1/task.yaml: field 'instruction' must be a non-empty string"),
    ({"task.yaml": "instruction: twice\n"}, r"both task.yaml .* and instruction.md"),
])
def test_malformed_terminal_bench_dirs_name_the_file_and_field(tmp_path, files, fragment):
    directory = make_tb(tmp_path, **files)
    with pytest.raises(TaskError, match=fragment):
        load_terminal_bench_task(directory)


def test_links_in_task_dirs_are_refused(tmp_path):
    secret = tmp_path / "host_secret.txt"
    secret.write_text("host secret\n")
    directory = make_tb(tmp_path / "a")
    (directory / "data.txt").symlink_to(secret)
    with pytest.raises(TaskError, match="data.txt: is a symbolic link"):
        load_terminal_bench_task(directory)
    other = make_tb(tmp_path / "b")
    (other / "etc").symlink_to("/etc")
    with pytest.raises(TaskError, match="etc: is a symbolic link"):
        load_terminal_bench_task(other)


def test_a_directory_of_tasks_skips_and_reports_broken_ones(tmp_path):
    root = tmp_path / "suite"
    for name in ("hello-file", "count-errors"):
        shutil.copytree(TB / name, root / name)
    make_tb(root, "no-runner", **{"run-tests.sh": None})
    make_tb(root, "bad-yaml", **{"task.yaml": "difficulty: [\n"})
    (root / ".hidden").mkdir()
    with pytest.raises(TaskError, match="bad-yaml/task.yaml: not valid YAML"):
        load_terminal_bench_dir(root)
    loaded = load_tasks(root, skip_broken=True)
    assert isinstance(loaded, LoadedTasks)
    assert [t.task_id for t in loaded.tasks] == ["count-errors", "hello-file"]
    assert sorted(Path(b.source).name for b in loaded.broken) == ["bad-yaml", "no-runner"]
    assert all(b.error.startswith(b.source) for b in loaded.broken)


def test_a_failing_setup_script_is_an_infrastructure_error_naming_the_task(tmp_path):
    task = load_terminal_bench_task(make_tb(tmp_path, **{"setup.sh": "echo broken >&2; exit 3\n"}))
    with pytest.raises(SandboxError, match="setup command of task t1 failed: exit_code: 3"):
        CodingEnv(task, limits=LIMITS)


# ---- suites ----------------------------------------------------------------------------------------

@dataclass
class Spec:
    name: str
    seed: int = 0
    families: tuple = ()
    exploit_demo_fraction: float = 0.0


def test_load_suite_reads_every_format(tmp_path):
    assert [t.task_id for t in load_suite(Spec(str(SWE)), "heldout")] == ["inventory__stock-3"]
    assert len(load_suite(Spec(str(TB)), "train")) == 3
    assert [t.task_id for t in load_suite(Spec(str(TB / "hello-file")), "train")] == ["hello-file"]
    native = tmp_path / "native.jsonl"
    save_tasks_jsonl(builtin_suite(0)[:3] + [EXAMPLES["fix-sales-report"]], native)
    assert load_suite(Spec(str(native)), "train")[-1] == EXAMPLES["fix-sales-report"]   # setup_command kept
    with pytest.raises(TaskError, match="not a .jsonl task file or a task directory"):
        load_tasks(tmp_path / "missing.txt")
