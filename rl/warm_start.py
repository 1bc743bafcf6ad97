"""The default policy and its SFT warm start.

* :func:`demonstrations` runs the scripted solver of every training task through a real
  environment, so demonstrations carry real observations.
* :func:`build_default_policy` trains the byte-level BPE tokenizer on those transcripts and
  builds a small Qwen2/Llama model from config (no downloads), saved as a standard checkpoint.
* :func:`demo_trajectory` renders a demonstration with exactly the agent loop's format and
  masks (tool calls are actions, everything else is context).
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from envs.solver import scripted_solution
from envs.tasks import Task
from envs.tools import ToolCall
from rl.batch import collate
from rl.config import AlgoConfig, DeepSpeedConfig, ModelConfig, SFTConfig
from rl.learner import PolicyLearner
from rollout.chat import IM_END, encode_text, observation_text, prompt_text, render_tool_call
from rollout.tokenizer import build_bpe_tokenizer
from rollout.trajectory import Segment, Trajectory
from rollout.worker import EnvConfig, make_env


@dataclass
class Demonstration:
    task: Task
    turns: list[tuple[ToolCall, str]]   # (call, observation the environment returned); it passed its grade

    def text(self) -> str:
        parts = [prompt_text(self.task.instruction)]
        for call, obs in self.turns:
            parts.append(render_tool_call(call) + IM_END + observation_text(obs))
        return "".join(parts)


def split_for_warm_start(tasks: list[Task], fraction: float, seed: int) -> tuple[list[Task], list[Task]]:
    """(warm-start tasks, RL tasks): a seeded `fraction` of each family for the demonstrations and
    the rest for RL; with fraction 1 both are all of `tasks`."""
    if fraction >= 1.0:
        return list(tasks), list(tasks)
    warm, rl = [], []
    for family in sorted({t.family for t in tasks}):
        members = [t for t in tasks if t.family == family]
        random.Random(f"{seed}-{family}").shuffle(members)
        cut = max(1, min(len(members) - 1, round(fraction * len(members))))
        warm += members[:cut]
        rl += members[cut:]
    return warm, rl


def demonstration(task: Task, env_cfg: EnvConfig) -> Demonstration:
    """Run the scripted solver on `task` in a real sandbox; the result must pass its grade."""
    with make_env(task, env_cfg) as env:
        turns = [(call, env.step(call).observation) for call in scripted_solution(task)]
        grade = env.grade()
    if not grade.passed:
        raise RuntimeError(f"the scripted solver failed task {task.task_id}: {grade.output[-500:]}")
    return Demonstration(task, turns)


def demonstrations(tasks: list[Task], env_cfg: EnvConfig, threads: int = 8) -> list[Demonstration]:
    """Demonstrations for every task, in task order (sandboxes run in parallel threads)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda t: demonstration(t, env_cfg), tasks))


def demo_trajectory(demo: Demonstration, tokenizer, rollout_id: str) -> Trajectory:
    """The demonstration as a trajectory: tool-call tokens (and their <|im_end|>) are actions."""
    seg = Segment(rollout_id=rollout_id, index=0)
    seg.append(encode_text(tokenizer, prompt_text(demo.task.instruction)), sampled=False)
    for i, (call, obs) in enumerate(demo.turns):
        action = encode_text(tokenizer, render_tool_call(call) + IM_END)
        seg.append(action, sampled=True, logprobs=[0.0] * len(action), versions=[0] * len(action))
        if i < len(demo.turns) - 1:
            seg.append(encode_text(tokenizer, observation_text(obs)), sampled=False)
    return Trajectory(rollout_id=rollout_id, task_id=demo.task.task_id, segments=[seg], reward=1.0, passed=True)


def model_config(cfg: ModelConfig, tokenizer):
    common = dict(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                  num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                  num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=cfg.max_position_embeddings,
                  tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=None)
    if cfg.arch == "qwen2":
        return Qwen2Config(**common)
    if cfg.arch == "llama":
        return LlamaConfig(**common)
    raise ValueError(f"model.arch must be qwen2 or llama (got {cfg.arch!r})")


def build_default_policy(cfg: ModelConfig, demos: list[Demonstration], out_dir: Path, seed: int) -> Path:
    """Tokenizer from the demonstrations' text + a freshly initialised model, saved to `out_dir`."""
    tokenizer = build_bpe_tokenizer((d.text() for d in demos), cfg.vocab_size, out_dir)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(cfg, tokenizer), dtype=torch.float32)
    model.save_pretrained(str(out_dir))
    return out_dir


def sft_warm_start(base: Path, demos: list[Demonstration], tokenizer, sft: SFTConfig, algo: AlgoConfig,
                   ds: DeepSpeedConfig, out_dir: Path, seed: int, on_step=None) -> Path:
    """Supervised warm start on the demonstrations (cross-entropy on tool-call tokens only);
    saves the result as a standard checkpoint in `out_dir` and returns that path."""
    learner = PolicyLearner(base, lr=sft.lr, algo=algo, ds=ds, temperature=1.0, warmup_steps=sft.warmup_steps)
    trajectories = [demo_trajectory(d, tokenizer, f"demo-{i}") for i, d in enumerate(demos)]
    rng = random.Random(seed)
    for step in range(sft.steps):
        picked = rng.sample(trajectories, min(sft.batch_size, len(trajectories)))
        metrics = learner.sft_step(collate(picked, tokenizer.pad_token_id))
        if on_step is not None:
            on_step(step, metrics)
    learner.save_pretrained(out_dir, tokenizer)
    return out_dir
