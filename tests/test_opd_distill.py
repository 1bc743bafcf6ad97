"""End to end: `horizonrl-distill` with tiny models runs the whole OPD loop for real (Hydra, the
student's hf engine and rollout workers with bubblewrap sandboxes, one teacher engine actor per
expert, DeepSpeed learner, wandb offline): it trains the expert it lacks with `horizonrl-train`,
reuses the one it has, merges, and writes the student and summary.json with the contract."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from envs.solver import scripted_solution
from envs.suite import builtin_suite
from rollout.chat import prompt_text, render_tool_call
from rollout.hf_engine import load_causal_lm
from rollout.tokenizer import build_bpe_tokenizer, load_tokenizer

TASKS = [t for t in builtin_suite(0) if t.split == "train" and t.family in ("wrong_operator", "off_by_one")]


def tiny(out, tok, seed):
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def distill(args, run_dir):
    exe = Path(sys.executable).with_name("horizonrl-distill")
    return subprocess.run([str(exe), *args, f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=900)


def small_run(root: Path) -> list[str]:
    return [
        "steps=2", "rollout.episodes_per_step=4", "rollout.num_workers=1", "sampling.max_new_tokens=8",
        "agent.max_turns=2", "async_rollout.buffer_size=6", "logging.wandb_mode=offline",
        "opd.eval_samples_per_task=1", "opd.eval_max_tasks=3", "algo.policy_lr=1e-3",
        "opd.offpolicy_samples_per_task=1", "opd.offpolicy_epochs=2", "opd.offpolicy_replay=1",
        "opd.domains=[{name:ops,families:[wrong_operator],weight:2.0},{name:bounds,families:[off_by_one],weight:1.0}]",
        f"opd.base.checkpoint='{root / 'base'}'", "opd.base.train=[]",
        f"opd.experts=[{{name:ops_expert,domain:ops,checkpoint:'{root / 'ops_expert'}'}},"
        f"{{name:bounds_expert,domain:bounds,checkpoint:'{root / 'bounds_expert'}',train_dir:'{root / 'bounds_run'}',"
        "train:['sft.steps=2','sft.batch_size=4','steps=0','eval.samples_per_task=1','eval.max_tasks=1',"
        "'agent.max_turns=1','sampling.max_new_tokens=8','rollout.num_workers=1','logging.wandb_mode=disabled']}]",
    ]


@pytest.fixture(scope="module")
def distill_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("opd_e2e")
    corpus = [prompt_text(t.instruction) + "".join(render_tool_call(c) for c in scripted_solution(t)) for t in TASKS]
    tok = build_bpe_tokenizer(corpus, 400, root / "tok")
    tiny(root / "base", tok, 0)
    tiny(root / "ops_expert", tok, 1)
    run_dir = root / "run"
    proc = distill(small_run(root), run_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, run_dir, proc.stdout


def test_prints_the_run_dir_last_and_trains_the_missing_expert(distill_run):
    root, run_dir, stdout = distill_run
    assert stdout.strip().splitlines()[-1] == str(run_dir.resolve())
    assert (root / "bounds_run" / "summary.json").is_file()     # horizonrl-train ran for the missing expert
    assert load_tokenizer(root / "bounds_expert").get_vocab() == load_tokenizer(root / "base").get_vocab()
    assert "ops_expert: reusing" in stdout
    # the off-policy phase: per training task one episode of the bounds expert and two of the ops expert
    # (its domain weighs 2:1), two passes of 4
    episodes = sum(2 if t.family == "wrong_operator" else 1 for t in TASKS)
    progress = re.findall(r"offpolicy (\d+)/(\d+) forward_kl=", stdout)
    assert progress and {int(total) for _, total in progress} == {2 * -(-episodes // 4)}


def test_summary_has_the_domains_contract(distill_run):
    _, run_dir, _ = distill_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["domains"]) == {"ops", "bounds"}
    for name, d in summary["domains"].items():
        for key in ("before", "after", "expert"):
            assert 0.0 <= d[key] <= 1.0, (name, key, d)
        gain = d["expert"] - d["before"]
        if gain > 0:
            assert d["recovery"] == pytest.approx((d["after"] - d["before"]) / gain)
        else:
            assert math.isnan(d["recovery"])
        assert math.isfinite(d["reverse_kl"]["first"]) and math.isfinite(d["reverse_kl"]["last"])
        assert math.isfinite(d["reverse_kl_heldout"]["after"])
        offpolicy = d["after_offpolicy"]     # the student between the off-policy and the on-policy phase
        assert 0.0 <= offpolicy["pass_rate"] <= 1.0 and math.isfinite(offpolicy["reverse_kl_heldout"])
    assert (summary["offpolicy_samples_per_task"], summary["offpolicy_epochs"]) == (1, 2)
    assert summary["offpolicy_samples_per_domain"] == {"ops": 2, "bounds": 1}
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    assert all(math.isfinite(s["policy/loss"]) for s in steps)
    assert all(math.isfinite(s["replay/forward_kl"]) for s in steps)   # a replayed step after each OPD step
    assert summary["plot"] == str(run_dir.resolve() / "distill.png") and Path(summary["plot"]).stat().st_size > 5000


def test_student_is_a_standard_checkpoint_that_moved(distill_run):
    root, run_dir, _ = distill_run
    student = load_causal_lm(run_dir / "student")
    base = load_causal_lm(root / "base")
    assert load_tokenizer(run_dir / "student").get_vocab() == load_tokenizer(root / "base").get_vocab()
    moved = [not torch.equal(a, b) for a, b in zip(student.state_dict().values(), base.state_dict().values())]
    assert any(moved)


def test_refuses_a_missing_expert_naming_the_path(distill_run, tmp_path):
    root, _, _ = distill_run
    args = [a for a in small_run(root) if not a.startswith("opd.experts=")]
    gone = tmp_path / "no_such_expert"
    args.append(f"opd.experts=[{{name:ops_expert,domain:ops,checkpoint:'{root / 'ops_expert'}'}},"
                f"{{name:bounds_expert,domain:bounds,checkpoint:'{gone}'}}]")
    proc = distill(args, tmp_path / "run")
    assert proc.returncode != 0
    assert str(gone) in proc.stdout + proc.stderr
