"""scripts/eval_heldout.py: the held-out pass rate of existing checkpoints, as horizonrl-train measures it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from envs.suite import builtin_suite
from tiny_models import save_tiny_agent_policy

SCRIPT = Path(__file__).parents[1] / "scripts" / "eval_heldout.py"
SMALL = ["eval.max_tasks=3", "sampling.max_new_tokens=8", "agent.max_turns=2", "engine.num_threads=1",
         "rollout.num_workers=1"]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    tasks = [t for t in builtin_suite(0) if t.split == "train"][:20]
    return save_tiny_agent_policy(tmp_path_factory.mktemp("policy"), tasks)


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_greedy_by_default_with_the_sampled_figure_and_sampled_when_asked(policy_dir):
    proc = run(str(policy_dir), "--", *SMALL)                      # the default preset: greedy + 1 sampled
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["checkpoint"] == str(policy_dir) and line["decoding"] == "greedy"
    assert line["episodes"] == 3 and line["sampled_episodes"] == 3 and 0.0 <= line["pass_rate"] <= 1.0
    proc = run(str(policy_dir), "--", *SMALL, "eval.greedy=false", "eval.sampled_samples_per_task=0",
               "eval.samples_per_task=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["decoding"] == "sampled" and line["episodes"] == 6 and "sampled_pass_rate" not in line


def test_a_missing_checkpoint_is_named(tmp_path):
    proc = run(str(tmp_path / "nope"), "--", *SMALL)
    assert proc.returncode != 0 and str(tmp_path / "nope") in proc.stderr
