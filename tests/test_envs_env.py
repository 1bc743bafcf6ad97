"""CodingEnv: tool calls become bounded observations (errors included), and grading runs the
pristine hidden tests whatever the agent did to its work dir."""

import time

import pytest

from envs.env import CodingEnv, grading_files, make_printable, truncate_middle
from envs.sandbox import SandboxLimits
from envs.suite import builtin_suite
from envs.tasks import Task
from envs.tools import ToolCall

LIMITS = SandboxLimits(timeout_s=10.0)
TASK = Task(
    task_id="demo-0001", family="demo", split="train", difficulty=1,
    instruction="Fix the bug in calc.py: add(2, 3) returned -1, expected 5.",
    files={"calc.py": 'def add(a, b):\n    """Return the sum of a and b."""\n    return a - b\n'},
    hidden_tests={"test_hidden.py": (
        "import os\nimport sys\nimport unittest\n\nsys.path.append(os.getcwd())\n\n\n"
        "class HiddenTest(unittest.TestCase):\n"
        "    def test_add(self):\n        from calc import add\n        self.assertEqual(add(2, 3), 5)\n\n"
        "    def test_add_zero(self):\n        from calc import add\n        self.assertEqual(add(0, 4), 4)\n\n\n"
        'if __name__ == "__main__":\n    unittest.main()\n')},
    grade_command=("python3", "-I", "test_hidden.py"),
)
FIX = ToolCall("str_replace", {"path": "calc.py", "old": "    return a - b", "new": "    return a + b"})


def call(name, **arguments):
    return ToolCall(name, arguments)


@pytest.fixture
def env():
    with CodingEnv(TASK, limits=LIMITS) as environment:
        yield environment


# ---- tools ------------------------------------------------------------------------------------

def test_read_edit_bash_submit(env):
    read = env.step(call("read_file", path="calc.py"))
    assert read.observation == TASK.files["calc.py"] and not read.error and not read.done
    edit = env.step(FIX)
    assert (edit.observation, edit.error) == ("Edited calc.py.", False)
    assert env.step(call("read_file", path="/work/calc.py")).observation.endswith("return a + b\n")
    run = env.step(call("bash", command="python3 -c 'from calc import add; print(add(2, 3))'; echo oops >&2; exit 4"))
    assert run.observation == "exit_code: 4\nstdout:\n5\nstderr:\noops"
    assert env.step(call("bash", command="true")).observation == "exit_code: 0"
    wrote = env.step(call("write_file", path="notes/todo.txt", content="done\n"))
    assert wrote.observation == "Wrote notes/todo.txt." and (env.workdir / "notes/todo.txt").read_text() == "done\n"
    submitted = env.step(call("submit"))
    assert submitted.done and not submitted.error
    after = env.step(call("read_file", path="calc.py"))
    assert after.done and after.error and "already submitted" in after.observation


@pytest.mark.parametrize("tool_call, fragment", [
    (call("rm", path="calc.py"), 'unknown tool "rm"'),
    (call("read_file"), "missing argument(s): path"),
    (call("read_file", path="calc.py", lines="1-3"), "unknown argument(s): lines"),
    (call("str_replace", path="calc.py", old=1, new="x"), 'argument "old" of str_replace must be a string'),
    (ToolCall("bash", ["ls"]), "must be a JSON object"),
    (call("read_file", path="nope.py"), "file not found: nope.py"),
    (call("read_file", path="../../etc/passwd"), "'..' is not allowed"),
    (call("write_file", path="/etc/passwd", content="x"), "outside /work"),
    (call("str_replace", path="calc.py", old="return a * b", new="x"), "old string not found in calc.py"),
    (call("str_replace", path="calc.py", old="a", new="x"), "old string occurs 5 times in calc.py; make it unique"),
    (call("str_replace", path="calc.py", old="", new="x"), "old must not be empty"),
    (call("str_replace", path="gone.py", old="a", new="b"), "file not found: gone.py"),
    (call("bash", command="echo \x00"), "NUL byte"),
])
def test_bad_calls_are_error_observations(env, tool_call, fragment):
    result = env.step(tool_call)
    assert result.error and not result.done
    assert result.observation.startswith("Error: ") and fragment in result.observation
    assert (env.workdir / "calc.py").read_text() == TASK.files["calc.py"]   # nothing was changed


def test_a_missed_str_replace_shows_the_most_similar_text_to_copy(env):
    miss = env.step(call("str_replace", path="calc.py", old="    return a * b", new="    return a + b"))
    assert miss.error and miss.observation == ("Error: old string not found in calc.py. "
                                               "The most similar text in calc.py:\n    return a - b")
    retry = env.step(call("str_replace", path="calc.py", old=miss.observation.split("\n", 1)[1], new="    return a + b"))
    assert not retry.error and env.grade().passed
    two_lines = env.step(call("str_replace", path="calc.py", old='def add(a, b):\n    """Sum of a and b."""', new="x"))
    assert two_lines.observation.endswith('calc.py:\ndef add(a, b):\n    """Return the sum of a and b."""')
    far = env.step(call("str_replace", path="calc.py", old="import collections", new="x"))
    assert far.observation == "Error: old string not found in calc.py."             # nothing similar: no hint


def test_observations_are_truncated_and_printable():
    with CodingEnv(TASK, limits=LIMITS, max_observation_chars=200) as env:
        env.step(call("write_file", path="big.txt", content="".join(f"line {i}\n" for i in range(1000))))
        read = env.step(call("read_file", path="big.txt")).observation
        assert len(read) <= 200 and "...[truncated " in read
        assert read.startswith("line 0\nline 1\n") and read.endswith("line 999\n")
        shown = read.split("...[truncated ")[1].split(" chars]")[0]
        assert int(shown) == len("".join(f"line {i}\n" for i in range(1000))) - (len(read) - len(
            f"\n...[truncated {shown} chars]...\n"))
        run = env.step(call("bash", command="seq 1 5000")).observation
        assert len(run) <= 200 and run.startswith("exit_code: 0\nstdout:\n1\n") and run.endswith("\n5000")
        weird = env.step(call("bash", command="printf 'a\\033[31mb\\x01c\\xff\\n'")).observation
        assert weird == "exit_code: 0\nstdout:\na\\x1b[31mb\\x01c\\xff"


def test_truncate_middle_and_make_printable_helpers():
    assert truncate_middle("short", 100) == "short"
    text = "x" * 500 + "y" * 500
    cut = truncate_middle(text, 120)
    assert len(cut) <= 120 and cut.startswith("x") and cut.endswith("y") and "[truncated" in cut
    assert make_printable("tab\tnew\nline\r\x07") == "tab\tnew\nline\\x0d\\x07"


def test_bash_timeout_is_an_observation(env):
    with CodingEnv(TASK, limits=SandboxLimits(timeout_s=0.5)) as quick:
        result = quick.step(call("bash", command="sleep 10"))
        assert not result.error and result.observation.startswith("exit_code: 124 (timed out)")
        assert quick.step(call("read_file", path="calc.py")).observation == TASK.files["calc.py"]


def test_closed_env_refuses_work():
    env = CodingEnv(TASK, limits=LIMITS)
    env.close()
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.step(call("submit"))
    with pytest.raises(RuntimeError, match="closed"):
        env.grade()


def test_max_observation_chars_is_validated():
    with pytest.raises(ValueError, match="max_observation_chars"):
        CodingEnv(TASK, max_observation_chars=10)


# ---- grading ------------------------------------------------------------------------------------

def test_grade_passes_only_when_fixed(env):
    before = env.grade()
    assert (before.passed, before.reward) == (False, 0.0) and "FAILED" in before.output
    env.step(FIX)
    after = env.grade()
    assert (after.passed, after.reward) == (True, 1.0)
    assert env.grade().passed                                            # grading is repeatable


TAMPERING = {
    "fake hidden test": {"test_hidden.py": "import sys\nsys.exit(0)\n"},
    "hidden test name as a directory": {"test_hidden.py/x.py": "pass\n"},
    "conftest": {"conftest.py": "import os\nos._exit(0)\n"},
    "sitecustomize": {"sitecustomize.py": "import os\nos._exit(0)\n"},
    "usercustomize in a user site": {".local/lib/python3.11/site-packages/usercustomize.py": "import os\nos._exit(0)\n"},
    "pth hook": {"hook.pth": "import os; os._exit(0)\n"},
    "shadow unittest module": {"unittest.py": "import os\nos._exit(0)\n"},
    "shadow unittest package": {"unittest/__init__.py": "import os\nos._exit(0)\n"},
    "stale bytecode": {"__pycache__/test_hidden.cpython-311.pyc": "garbage"},
    "runner config": {"pytest.ini": "[pytest]\naddopts = -p no:cacheprovider\n"},
    "other test file": {"test_calc.py": "import os\nos._exit(0)\n"},
    "exit at import": {"calc.py": "import sys\nsys.exit(0)\n"},
}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_tampering_does_not_change_the_verdict(name):
    with CodingEnv(TASK, limits=LIMITS) as env:
        for path, content in TAMPERING[name].items():
            assert not env.step(call("write_file", path=path, content=content)).error
        assert not env.grade().passed, name
        if name != "exit at import":                                     # the real fix still passes
            env.step(FIX)
            assert env.grade().passed, name


def test_deleting_or_symlinking_work_files_cannot_reach_the_grader(env):
    env.step(call("bash", command="rm calc.py; ln -s /etc/passwd calc.py; ln -s /etc etc_link"))
    grade = env.grade()
    assert not grade.passed and "calc" in grade.output


def test_background_processes_are_stopped_before_grading(env):
    env.step(call("bash", command="(sleep 0.3; sed -i 's/a - b/a + b/' calc.py) &"))
    assert not env.grade().passed
    time.sleep(0.6)
    assert "return a - b" in env.step(call("read_file", path="calc.py")).observation   # it never ran


def test_grading_files_restore_the_tasks_runner_files():
    task = Task(task_id="t-1", family="demo", split="train", difficulty=1, instruction="Fix it.",
                files={"calc.py": "x = 1\n", "tests/test_visible.py": "assert True\n", "setup.cfg": "[x]\n",
                       "calendar.py": "y = 1\n"},
                hidden_tests={"test_hidden.py": "pass\n"}, grade_command=("python3", "test_hidden.py"))
    work = {"calc.py": "x = 2\n", "tests/test_visible.py": "import os\nos._exit(0)\n", "conftest.py": "bad",
            "calendar.py": "y = 2\n", "json.py": "bad", "helper.py": "ok\n", "test_hidden.py": "bad"}
    assert grading_files(task, work) == {
        "calc.py": "x = 2\n", "helper.py": "ok\n", "calendar.py": "y = 2\n",   # the agent's work
        "tests/test_visible.py": "assert True\n", "setup.cfg": "[x]\n",       # pristine copies
        "test_hidden.py": "pass\n",
    }


def test_a_suite_task_end_to_end():
    task = builtin_suite(0)[0]
    with CodingEnv(task, limits=LIMITS) as env:
        assert not env.grade().passed
        read = env.step(call("read_file", path=next(iter(task.files))))
        assert read.observation == next(iter(task.files.values()))
        for step in task.solution[1:]:
            env.step(step)
        assert env.done and env.grade().passed
