"""``horizonrl-env``: list suites, run a task (scripted or given calls) with its grade, exec one
command in a fresh sandbox as one JSON line; bad input is a clear error with exit code 2."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from envs.cli import main
from envs.suite import builtin_suite

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "envs" / "examples"
FIRST = builtin_suite(0)[0]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_the_builtin_suite(capsys):
    code, out, err = run(capsys, "list", "--split", "heldout")
    rows = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and len(rows) == 84 and err.strip() == "84 task(s)"
    assert all(row[1] == "heldout" for row in rows) and rows[0][3] in "123"
    code, out, _ = run(capsys, "list", "--json")
    tasks = [json.loads(line) for line in out.splitlines()]
    assert len(tasks) == 588 and tasks[0]["task_id"] == FIRST.task_id and tasks[0]["has_solution"]


def test_list_example_suites(capsys):
    code, out, _ = run(capsys, "list", str(EXAMPLES / "terminal_bench"))
    assert code == 0 and [line.split("\t")[0] for line in out.splitlines()] == [
        "count-errors", "fix-sales-report", "hello-file"]
    code, out, _ = run(capsys, "list", str(EXAMPLES / "swebench" / "tasks.jsonl"), "--split", "train")
    assert [line.split("\t")[0] for line in out.splitlines()] == ["calc__clamp-1", "textkit__slug-2"]
    assert "clamp() ignores the upper bound" in out


def test_list_reports_broken_tasks(capsys, tmp_path):
    shutil.copytree(EXAMPLES / "terminal_bench" / "hello-file", tmp_path / "hello-file")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "task.yaml").write_text("difficulty: [\n")
    code, out, err = run(capsys, "list", str(tmp_path))
    assert code == 2 and out == "" and "broken/task.yaml: not valid YAML" in err
    code, out, err = run(capsys, "list", str(tmp_path), "--skip-broken")
    assert code == 0 and out.startswith("hello-file\t")
    assert "skipped broken task:" in err and "1 broken task(s) skipped" in err


def test_run_plays_the_scripted_solution_and_grades(capsys):
    code, out, _ = run(capsys, "run", FIRST.task_id)
    assert code == 0
    assert f"# task {FIRST.task_id}" in out and ">>> read_file" in out and ">>> str_replace" in out
    assert "Edited " in out and "# grade: PASSED (reward 1.0)" in out


def test_run_with_given_calls_and_json_output(capsys, tmp_path):
    calls = tmp_path / "calls.jsonl"
    calls.write_text(json.dumps({"name": "bash", "arguments": {"command": "ls"}}) + "\n"
                     + json.dumps({"name": "submit", "arguments": {}}) + "\n")
    code, out, _ = run(capsys, "run", "hello-file", "--suite", str(EXAMPLES / "terminal_bench"),
                       "--calls", str(calls), "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1                                                   # nothing was done: the grade fails
    assert lines[0]["call"]["name"] == "bash" and lines[0]["observation"].startswith("exit_code: 0")
    assert lines[1]["done"] and lines[2]["grade"]["passed"] is False and lines[2]["grade"]["reward"] == 0.0
    code, out, _ = run(capsys, "run", "calc__clamp-1", "--suite", str(EXAMPLES / "swebench" / "tasks.jsonl"))
    assert code == 0 and ">>> bash" in out and "git apply" in out and "RESOLVED" in out


@pytest.mark.parametrize("argv, fragment", [
    (("run", "no-such-task"), "no task 'no-such-task' in suite 'builtin'"),
    (("list", "/nonexistent/suite.txt"), "not a .jsonl task file or a task directory"),
    (("run", FIRST.task_id, "--calls", "/nonexistent/calls.jsonl"), "calls.jsonl: cannot read"),
    (("exec", "--backend", "docker", "--docker-url", "unix:///nonexistent/d.sock", "--", "true"),
     "no docker engine is reachable at unix:///nonexistent/d.sock"),
    (("exec", "--backend", "docker", "--protected", "/etc", "--", "true"), "--protected applies to the local backend"),
    (("exec",), "no command given"),
])
def test_errors_are_clear_and_exit_2(capsys, argv, fragment):
    code, out, err = run(capsys, *argv)
    assert code == 2 and fragment in err and err.startswith(f"horizonrl-env {argv[0]}: error: ")


def test_bad_calls_file_names_the_line(capsys, tmp_path):
    calls = tmp_path / "calls.jsonl"
    calls.write_text(json.dumps({"name": "submit", "arguments": {}}) + "\n" + json.dumps({"tool": "x"}) + "\n")
    code, _, err = run(capsys, "run", FIRST.task_id, "--calls", str(calls))
    assert code == 2 and "calls.jsonl:2: not a tool call" in err


def test_exec_prints_one_json_line(capsys):
    code, out, _ = run(capsys, "exec", "--backend", "local", "--", "echo out; echo err >&2; exit 3")
    assert code == 0 and len(out.splitlines()) == 1
    assert json.loads(out) == {"exit_code": 3, "stdout": "out\n", "stderr": "err\n", "timed_out": False}
    code, out, _ = run(capsys, "exec", "--", "printf", "%s|", "a b", "$HOME")       # several args are quoted
    assert json.loads(out)["stdout"] == "a b|$HOME|"
    code, out, _ = run(capsys, "exec", "--timeout", "0.5", "--", "sleep 30")
    result = json.loads(out)
    assert result["timed_out"] and result["exit_code"] == 124


def test_exec_masks_protected_paths(capsys, tmp_path):
    code, out, _ = run(capsys, "exec", "--protected", "/usr/lib/os-release", "--protected", "/usr/share/doc", "--",
                       "cat /usr/lib/os-release /proc/self/root/usr/lib/os-release; ls -A /usr/share/doc | wc -l")
    result = json.loads(out)
    assert result["stdout"] == "0\n" and result["stderr"].count("Permission denied") == 2
    code, out, _ = run(capsys, "exec", "--", "head -c 4 /usr/lib/os-release; ls /usr/share/doc | head -c 1 | wc -c")
    assert json.loads(out)["stdout"] != "0\n"                          # unmasked without --protected


def test_the_module_runs_as_a_program():
    done = subprocess.run([sys.executable, "-m", "envs.cli", "exec", "--", "echo hi"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout)["stdout"] == "hi\n"
