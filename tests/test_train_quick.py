"""End to end: `horizonrl-train experiment=quick` runs the whole loop for real (bubblewrap
sandboxes, a transformers policy in a Ray engine actor, Ray rollout workers, DeepSpeed policy
and critic, Hydra, wandb offline) and writes its summary, plot, checkpoint and wandb run."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from rollout.hf_engine import load_causal_lm
from rollout.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("quick")
    exe = Path(sys.executable).with_name("horizonrl-train")
    proc = subprocess.run([str(exe), "experiment=quick", f"hydra.run.dir={run_dir}"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir, proc.stdout


def test_prints_the_run_dir_last(quick_run):
    run_dir, stdout = quick_run
    assert stdout.strip().splitlines()[-1] == str(run_dir.resolve())


def test_summary_has_the_contract(quick_run):
    run_dir, _ = quick_run
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("heldout_pass_rate_before_rl", "heldout_pass_rate_after_rl", "steps", "wall_time_s", "wandb_dir",
                "checkpoint_dir"):
        assert key in summary
    assert 0.0 <= summary["heldout_pass_rate_before_rl"] <= 1.0
    assert 0.0 <= summary["heldout_pass_rate_after_rl"] <= 1.0
    assert Path(summary["wandb_dir"]).is_dir()
    assert (run_dir / "pass_rate.png").stat().st_size > 1000
    episodes = [json.loads(line) for line in Path(summary["heldout_episodes_after_rl"]).read_text().splitlines()]
    assert len(episodes) == summary["heldout_episodes"]
    assert sum(e["passed"] for e in episodes) / len(episodes) == summary["heldout_pass_rate_after_rl"]
    assert all(e["transcript"] for e in episodes)


def test_pass_rate_does_not_fall_and_losses_are_finite(quick_run):
    run_dir, _ = quick_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["heldout_pass_rate_after_rl"] >= summary["heldout_pass_rate_before_rl"]
    final = summary["final_metrics"]
    for key in ("policy/loss", "critic/loss", "policy/entropy", "policy/grad_norm", "critic/grad_norm"):
        assert math.isfinite(final[key]), (key, final)
    # explained variance is undefined (NaN) only when every return in the batch is the same
    if 0.0 < final["rollout/pass_rate"] < 1.0:
        assert math.isfinite(final["critic/explained_variance"])


def test_checkpoint_loads_with_from_pretrained(quick_run):
    run_dir, _ = quick_run
    ckpt = Path(json.loads((run_dir / "summary.json").read_text())["checkpoint_dir"])
    model = load_causal_lm(ckpt)
    tokenizer = load_tokenizer(ckpt)
    assert model.config.vocab_size == len(tokenizer)


def test_resume_continues_from_the_checkpoint_with_the_async_orchestrator(quick_run, tmp_path):
    """`resume=<checkpoints>` picks up the finished quick run at its last step (weights, optimiser,
    sampler, metrics history) and trains two more steps with `orchestrator=async`; its held-out
    figures are greedy, with the sampled ones beside them (the default preset's evaluation)."""
    run_dir, _ = quick_run
    first = json.loads((run_dir / "summary.json").read_text())
    exe = Path(sys.executable).with_name("horizonrl-train")
    proc = subprocess.run([str(exe), "experiment=quick", f"resume={run_dir / 'checkpoints'}", "steps=6",
                           "orchestrator=async", "async_rollout.buffer_size=24", "eval.greedy=true",
                           "eval.sampled_samples_per_task=2", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"at step {first['steps']}" in proc.stdout
    resumed = json.loads((tmp_path / "summary.json").read_text())
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 6]  # only the new steps were trained
    assert resumed["final_metrics"]["weights/version"] == 6
    assert "orchestrator/dropped_stale" in resumed["final_metrics"]
    assert Path(resumed["checkpoint_dir"]).is_dir()
    assert resumed["heldout_decoding"] == "greedy" and resumed["heldout_episodes"] == 24
    assert resumed["heldout_sampled_episodes"] == 48
    for side in ("before", "after"):
        sampled = [json.loads(line) for line in
                   Path(resumed[f"heldout_sampled_episodes_{side}_rl"]).read_text().splitlines()]
        assert len(sampled) == 48
        assert sum(e["passed"] for e in sampled) / 48 == resumed[f"heldout_sampled_pass_rate_{side}_rl"]
    assert "greedy" in proc.stdout and "sampled" in proc.stdout   # the console names both figures
