"""Exact resume (rl/checkpoint.py) with real DeepSpeed on the CPU and a tiny model.

Train, save, train on → weights W; fresh learners + load + the same training → exactly W (and the
same optimiser state, sampler batch and RNG draws). A process SIGKILLed while writing a checkpoint
leaves the previous one as `latest`, and the resumed run draws the batch the uninterrupted run drew.
"""

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from envs.tasks import Task
from rl.batch import collate
from rl.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from rl.config import AlgoConfig, DeepSpeedConfig
from rl.learner import CriticLearner, PolicyLearner, PPOLearner, init_distributed
from rl.orchestrator import TaskSampler
from rollout.trajectory import Segment, Trajectory

VOCAB = 48
BATCH = 4
SEED = 7


def make_model(path: Path) -> None:
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(path))


def make_tasks(n: int = 10) -> list[Task]:
    return [Task(task_id=f"fam-{i:04d}", family="fam", split="train", difficulty=1, instruction="fix it",
                 files={"a.py": "x = 1\n"}, hidden_tests={"test_a.py": "pass\n"}, grade_command=("true",))
            for i in range(n)]


def build(model_dir: Path, zero_stage: int) -> PPOLearner:
    # critic_warmup_steps=1: a resumed learner that forgot `steps_done` would skip its policy step
    algo = AlgoConfig(critic_warmup_steps=1, policy_lr=3e-3, critic_lr=3e-3, micro_batch_tokens=48)
    ds = DeepSpeedConfig(zero_stage=zero_stage)
    return PPOLearner(PolicyLearner(model_dir, algo.policy_lr, algo, ds, temperature=1.0, warmup_steps=3),
                      CriticLearner(model_dir, algo, ds), algo)


def trajectories_for(tasks: list[Task]) -> list[Trajectory]:
    """Deterministic episodes derived from the task ids (the batch depends on what the sampler drew)."""
    trajs = []
    for k, task in enumerate(tasks):
        g = torch.Generator().manual_seed(int(task.task_id.split("-")[1]))
        seg = Segment(rollout_id=f"{task.task_id}-{k}", index=0)
        seg.append(torch.randint(1, VOCAB, (4,), generator=g).tolist(), sampled=False)
        first = torch.randint(1, VOCAB, (3,), generator=g).tolist()
        seg.append(first, sampled=True, logprobs=[-math.log(VOCAB)] * 3, versions=[0] * 3)
        seg.append([5, 6], sampled=False)
        seg.append([7, 8], sampled=True, logprobs=[-math.log(VOCAB)] * 2, versions=[0] * 2)
        reward = float(first[0] % 2 == 0)
        trajs.append(Trajectory(rollout_id=seg.rollout_id, task_id=task.task_id, segments=[seg], reward=reward,
                                passed=bool(reward)))
    return trajs


def train_one(learner: PPOLearner, sampler: TaskSampler) -> tuple[list[str], dict]:
    tasks = sampler.next_batch(BATCH)
    metrics = learner.train_step(collate(trajectories_for(tasks), pad_token_id=0))
    return [t.task_id for t in tasks], metrics


def snapshot(learner: PPOLearner) -> dict:
    """Weights, optimiser and scheduler state and DeepSpeed counters of both engines (CPU copies)."""
    out = {}
    for name, part in (("policy", learner.policy), ("critic", learner.critic)):
        e = part.engine
        out[name] = {"module": {k: v.detach().clone() for k, v in e.module.state_dict().items()},
                     "optimizer": clone(e.optimizer.state_dict()), "scheduler": e.lr_scheduler.state_dict(),
                     "global_steps": e.global_steps}
    out["steps_done"] = learner.steps_done
    return out


def clone(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: clone(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(clone(v) for v in x)
    return x


def assert_identical(a, b, where="state"):
    """Exact (bitwise) equality of nested states."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    elif type(a).__eq__ is object.__eq__ and hasattr(a, "__dict__"):  # e.g. DeepSpeed's loss scaler
        assert type(a) is type(b), where
        assert_identical(vars(a), vars(b), where)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def rng_draws() -> tuple:
    return random.random(), torch.rand(3), np.random.rand(2).tolist()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    init_distributed(DeepSpeedConfig(master_port=0))
    path = tmp_path_factory.mktemp("ckpt_policy")
    make_model(path)
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread, as in the subprocess, so results are bitwise comparable across processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_resume_continues_exactly(model_dir, tmp_path, one_thread, zero_stage):
    root = tmp_path / "ckpt"
    learner, sampler = build(model_dir, zero_stage), TaskSampler(make_tasks(), SEED)
    history = []
    for step in range(2):
        _, m = train_one(learner, sampler)
        history.append({"step": step, **m})
    at_save = snapshot(learner)
    path = save_checkpoint(root, 2, learner, sampler, version=2, metrics_history=history, extra={"ema": 0.25},
                           keep=3)
    assert latest_checkpoint(root) == path
    expected_draws = rng_draws()
    next_ids, _ = train_one(learner, sampler)
    target = snapshot(learner)
    # the step really moved both models (otherwise "equal after resume" would prove nothing)
    for name in ("policy", "critic"):
        assert any(not torch.equal(at_save[name]["module"][k], v) for k, v in target[name]["module"].items())

    random.seed(123), torch.manual_seed(123), np.random.seed(123)
    fresh, fresh_sampler = build(model_dir, zero_stage), TaskSampler(make_tasks(), SEED)
    state = load_checkpoint(root, fresh, fresh_sampler)
    assert (state.path, state.step, state.version, state.extra) == (path, 2, 2, {"ema": 0.25})
    assert state.metrics_history == json.loads(json.dumps(history))
    assert fresh.steps_done == 2 and fresh_sampler.state() == {"epoch": 0, "pos": 2 * BATCH}
    assert_identical(snapshot(fresh), at_save, "restored")
    draws = rng_draws()
    assert draws[0] == expected_draws[0] and torch.equal(draws[1], expected_draws[1]) and draws[2] == expected_draws[2]

    ids, _ = train_one(fresh, fresh_sampler)
    assert ids == next_ids
    assert_identical(snapshot(fresh), target, "after one more step")

    # the policy is also kept in save_pretrained layout, with the weights of the saved step
    hf = AutoModelForCausalLM.from_pretrained(str(path / "policy_hf"), local_files_only=True, dtype=torch.float32)
    for k, v in hf.state_dict().items():
        assert torch.equal(v, at_save["policy"]["module"][k]), k


def test_keep_last_n_and_errors_name_the_path(model_dir, tmp_path):
    root = tmp_path / "ckpt"
    learner, sampler = build(model_dir, 0), TaskSampler(make_tasks(), SEED)
    for step in range(1, 5):
        save_checkpoint(root, step, learner, sampler, version=step, metrics_history=[], extra={}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000003", "step_00000004"]
    assert latest_checkpoint(root) == root / "step_00000004"
    with pytest.raises(ValueError):
        save_checkpoint(root, 5, learner, sampler, version=5, metrics_history=[], extra={}, keep=0)
    # resuming from an earlier checkpoint starts a new timeline: checkpoints after it go, and a
    # same-step one is replaced (also when `latest` names it)
    load_checkpoint(root / "step_00000003", learner, sampler)
    save_checkpoint(root, 3, learner, sampler, version=3, metrics_history=[], extra={"branch": 1}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000003"]
    assert load_checkpoint(root, learner, sampler).extra == {"branch": 1}
    save_checkpoint(root, 3, learner, sampler, version=3, metrics_history=[], extra={"branch": 2}, keep=2)
    assert load_checkpoint(root, learner, sampler).extra == {"branch": 2}
    save_checkpoint(root, 4, learner, sampler, version=4, metrics_history=[], extra={}, keep=2)

    # a sampler over other tasks cannot take the saved position
    with pytest.raises(CheckpointError, match="task sampler"):
        load_checkpoint(root, learner, TaskSampler(make_tasks(12), SEED))

    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError, match=str(missing)):
        load_checkpoint(missing, learner, sampler)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=str(empty)):
        load_checkpoint(empty, learner, sampler)
    # a truncated DeepSpeed file: the size check names the checkpoint
    ds_file = next((root / "step_00000004" / "policy").rglob("*.pt"))
    ds_file.write_bytes(ds_file.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=str(root / "step_00000004")):
        load_checkpoint(root, learner, sampler)
    # damaged contents of the right size: the loader's error is wrapped with the path
    ds_file = next((root / "step_00000003" / "critic").rglob("*.pt"))
    ds_file.write_bytes(b"\0" * ds_file.stat().st_size)
    with pytest.raises(CheckpointError, match=str(root / "step_00000003" / "critic")):
        load_checkpoint(root / "step_00000003", learner, sampler)
    # `latest` naming a checkpoint that is gone
    (root / "latest").write_text("step_00000009\n")
    with pytest.raises(CheckpointError, match="step_00000009"):
        load_checkpoint(root, learner, sampler)


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from rl.config import DeepSpeedConfig
    from rl.learner import init_distributed
    from rl.checkpoint import save_checkpoint
    from rl.orchestrator import TaskSampler
    import test_checkpoint as h

    init_distributed(DeepSpeedConfig(master_port=0))
    root = Path({root!r})
    learner, sampler = h.build(Path({model!r}), 0), TaskSampler(h.make_tasks(), h.SEED)
    for step in range(2):
        h.train_one(learner, sampler)
    save_checkpoint(root, 2, learner, sampler, version=2, metrics_history=[], extra={{}}, keep=3)
    h.train_one(learner, sampler)  # step 3 trains on batch 3, then its checkpoint is interrupted

    write_critic = learner.critic.engine.save_checkpoint
    def write_then_stall(*args, **kwargs):  # the policy and critic states are on disk, the rest is not
        write_critic(*args, **kwargs)
        print("WRITING", flush=True)
        time.sleep(600)
    learner.critic.engine.save_checkpoint = write_then_stall
    save_checkpoint(root, 3, learner, sampler, version=3, metrics_history=[], extra={{}}, keep=3)
""")


def test_sigkill_mid_write_resumes_from_last_complete(model_dir, tmp_path, one_thread):
    root = tmp_path / "ckpt"
    script = CHILD.format(tests=str(Path(__file__).parent), root=str(root), model=str(model_dir))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 300
        for line in child.stdout:
            if line.strip() == "WRITING" or time.time() > deadline:
                break
        assert child.poll() is None, child.stderr.read()[-3000:]
        assert (root / ".tmp-step_00000003" / "critic").is_dir()  # really killed in the middle of the write
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    # the uninterrupted run, in this process
    ref, ref_sampler = build(model_dir, 0), TaskSampler(make_tasks(), SEED)
    for _ in range(2):
        train_one(ref, ref_sampler)
    ref_ids, _ = train_one(ref, ref_sampler)
    target = snapshot(ref)

    assert (root / "latest").read_text().strip() == "step_00000002"
    resumed, sampler = build(model_dir, 0), TaskSampler(make_tasks(), SEED)
    state = load_checkpoint(root, resumed, sampler)
    assert state.path == root / "step_00000002" and state.step == 2 and state.version == 2
    ids, _ = train_one(resumed, sampler)
    assert ids == ref_ids  # batch 3 again, not batch 4: nothing past the acknowledged checkpoint was lost
    assert_identical(snapshot(resumed), target, "resumed vs uninterrupted")

    # the next save clears the interrupted write and moves `latest` on
    save_checkpoint(root, 3, resumed, sampler, version=3, metrics_history=[], extra={}, keep=3)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000003"]
    assert load_checkpoint(root, build(model_dir, 0), TaskSampler(make_tasks(), SEED)).step == 3
