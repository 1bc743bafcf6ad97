"""The grader of SWE-bench-style tasks, run *inside* the grading sandbox (standard library only).

``python3 -I .horizonrl/swebench_runner.py .horizonrl/spec.json`` in a pristine copy of the
agent's repository (see :mod:`envs.loaders`):

1. applies the task's test patch with ``git apply`` (outside any git repository: the agent's
   ``.git`` is never copied into the grading dir);
2. runs the FAIL_TO_PASS and PASS_TO_PASS tests in a child process, with pytest when it is
   installed and every id is a pytest node id (``tests/test_x.py::TestC::test_m``), else with
   unittest (node ids, dotted names and ``test_m (pkg.test_x.TestC)`` ids are understood); the
   spec's ``runner`` may force either. The child imports the test runner *before* it puts the
   repository on ``sys.path``, so a repository file named ``pytest.py`` cannot stand in for it,
   and plugins are not auto-loaded;
3. prints one line per test and exits 0 only if every listed test was seen to pass. A child that
   dies early (``os._exit(0)`` at import time, a crash) leaves tests unreported: they fail.

The spec: ``{"instance_id", "test_patch_file", "fail_to_pass": [...], "pass_to_pass": [...],
"runner": "auto" | "pytest" | "unittest"}``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile

PYTEST_CHILD = r"""
import json, os, sys
import pytest
out_path, ids_path = sys.argv[1], sys.argv[2]
with open(ids_path) as handle:
    ids = json.load(handle)
sys.path.insert(0, os.getcwd())
outcomes = {}

class Recorder:
    def pytest_runtest_logreport(self, report):
        if report.failed:
            outcomes[report.nodeid] = "failed"
        elif report.nodeid not in outcomes and (report.when == "call" or report.skipped):
            outcomes[report.nodeid] = "skipped" if report.skipped else "passed"

pytest.main(["-q", "-rfE", "-p", "no:cacheprovider", "--rootdir", os.getcwd(), *ids], plugins=[Recorder()])
with open(out_path, "w") as handle:
    json.dump(outcomes, handle)
"""

UNITTEST_CHILD = r"""
import importlib, inspect, json, os, sys, types, unittest
out_path, ids_path = sys.argv[1], sys.argv[2]
with open(ids_path) as handle:
    pairs = json.load(handle)
sys.path.insert(0, os.getcwd())

def runnable(name):
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        parent = None
        for attr in parts[cut:]:
            parent, obj = obj, getattr(obj, attr)
        if isinstance(obj, types.ModuleType):
            return True
        if inspect.isclass(obj):
            return issubclass(obj, unittest.TestCase)
        return inspect.isclass(parent) and issubclass(parent, unittest.TestCase)
    raise ImportError("cannot import " + name)

outcomes = {}
for original, name in pairs:
    try:
        if not runnable(name):
            print(original + ": not a unittest test (a plain test function needs pytest)")
            outcomes[original] = "error"
            continue
        suite = unittest.defaultTestLoader.loadTestsFromName(name)
    except Exception as exc:
        print(original + ": cannot load: " + type(exc).__name__ + ": " + str(exc))
        outcomes[original] = "error"
        continue
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    ok = result.wasSuccessful() and result.testsRun > 0 and not result.skipped
    outcomes[original] = "passed" if ok else "failed"
with open(out_path, "w") as handle:
    json.dump(outcomes, handle)
"""


def is_pytest_id(test_id: str) -> bool:
    """A pytest node id names a file: ``path/test_x.py`` or ``path/test_x.py::...``."""
    return test_id.split("::", 1)[0].endswith(".py")


def unittest_name(test_id: str) -> str:
    """The dotted unittest name of a pytest node id, a ``test_m (pkg.mod.Class)`` id or a dotted name."""
    verbose = re.fullmatch(r"(\w+) \(([\w.]+)\)", test_id.strip())
    if verbose:
        method, where = verbose.groups()
        return where if where.endswith("." + method) else f"{where}.{method}"
    if is_pytest_id(test_id):
        path, _, rest = test_id.partition("::")
        module = path[:-3].replace("/", ".")
        return ".".join([module] + [part for part in rest.split("::") if part])
    return test_id


def pytest_outcome(test_id: str, outcomes: dict[str, str]) -> str:
    """The outcome of a requested id among pytest's: every test it covers must have passed."""
    if test_id in outcomes:
        return outcomes[test_id]
    covered = [value for key, value in outcomes.items() if key.startswith((test_id + "::", test_id + "["))]
    if not covered:
        return "not run"
    return "passed" if all(value == "passed" for value in covered) else "failed"


def choose_runner(requested: str, test_ids: list[str]) -> str:
    if requested in ("pytest", "unittest"):
        return requested
    has_pytest = importlib.util.find_spec("pytest") is not None
    return "pytest" if has_pytest and all(is_pytest_id(test_id) for test_id in test_ids) else "unittest"


def apply_test_patch(patch_file: str) -> str | None:
    """Apply the test patch; None if it applied, else why not."""
    if not patch_file or os.path.getsize(patch_file) == 0:
        return None
    try:
        result = subprocess.run(["git", "apply", "--verbose", "--whitespace=nowarn", patch_file],
                                capture_output=True, text=True)
    except FileNotFoundError:
        return "git is not installed in the sandbox; it is needed to apply the test patch"
    if result.returncode != 0:
        return f"the test patch does not apply:\n{result.stderr.strip()}"
    return None


def run_tests(runner: str, test_ids: list[str]) -> dict[str, str]:
    """The outcome of each requested id: passed, failed, skipped, error or not run."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    with tempfile.TemporaryDirectory(prefix="horizonrl-grade-") as tmp:
        ids_path, out_path = os.path.join(tmp, "ids.json"), os.path.join(tmp, "outcomes.json")
        with open(ids_path, "w") as handle:
            json.dump(test_ids if runner == "pytest" else [[t, unittest_name(t)] for t in test_ids], handle)
        child = PYTEST_CHILD if runner == "pytest" else UNITTEST_CHILD
        subprocess.run([sys.executable, "-I", "-c", child, out_path, ids_path], env=env)
        try:
            with open(out_path) as handle:
                outcomes = json.load(handle)
        except (OSError, ValueError):
            outcomes = {}
    if not isinstance(outcomes, dict):
        outcomes = {}
    if runner == "pytest":
        return {test_id: pytest_outcome(test_id, outcomes) for test_id in test_ids}
    return {test_id: str(outcomes.get(test_id, "not run")) for test_id in test_ids}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: swebench_runner.py SPEC.json", file=sys.stderr)
        return 2
    with open(argv[1]) as handle:
        spec = json.load(handle)
    fail_to_pass, pass_to_pass = list(spec["fail_to_pass"]), list(spec["pass_to_pass"])
    problem = apply_test_patch(spec.get("test_patch_file", ""))
    if problem is not None:
        print(problem)
        return 1
    runner = choose_runner(spec.get("runner", "auto"), fail_to_pass + pass_to_pass)
    print(f"[{spec.get('instance_id', '?')}] running {len(fail_to_pass) + len(pass_to_pass)} test(s) with {runner}",
          flush=True)
    outcomes = run_tests(runner, fail_to_pass + pass_to_pass)
    ok = True
    for group, ids in (("FAIL_TO_PASS", fail_to_pass), ("PASS_TO_PASS", pass_to_pass)):
        passed = sum(outcomes[test_id] == "passed" for test_id in ids)
        print(f"{group}: {passed}/{len(ids)} passed")
        for test_id in ids:
            if outcomes[test_id] != "passed":
                ok = False
                print(f"  {outcomes[test_id].upper()}: {test_id}")
    print("RESOLVED" if ok else "NOT RESOLVED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
