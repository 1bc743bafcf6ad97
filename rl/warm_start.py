"""The default policy and its SFT warm start.

* :func:`demonstrations` runs the scripted solver of every training task through a real
  environment, so demonstrations carry real observations.
* :func:`build_default_policy` trains the byte-level BPE tokenizer on those transcripts and
  builds a small Qwen2/Llama model from config (no downloads), saved as a standard checkpoint.
* :func:`demo_trajectory` renders a demonstration with exactly the agent loop's format and
  masks (tool calls are actions, everything else is context).
* :func:`demo_trajectories` gives the SFT data: those renderings, or, with compaction on, the
  agent loop itself driven by :class:`ScriptedPolicy`, so that the demonstrations are compacted
  into segments exactly as the policy's own episodes will be.
"""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from envs.solver import perturbed_solution, retried_edit, scripted_solution, unindented_edit
from envs.tasks import Task, TaskError
from envs.tools import ToolCall
from rl.batch import collate
from rl.config import AlgoConfig, DeepSpeedConfig, ModelConfig, SFTConfig
from rl.learner import PolicyLearner
from rollout.agent import AgentConfig, run_episode
from rollout.chat import IM_END, encode_text, observation_text, prompt_text, render_tool_call
from rollout.compaction import summary_request_text
from rollout.engine import GenerateOutput, SamplingParams
from rollout.tokenizer import build_bpe_tokenizer
from rollout.trajectory import Segment, Status, Trajectory
from rollout.worker import EnvConfig, make_env


@dataclass
class Demonstration:
    task: Task
    turns: list[tuple[ToolCall, str]]   # (call, observation the environment returned)
    passed: bool = True                 # its grade; False only for a noisy demonstrator's wrong fix
    # turns that are context, not targets: a retrying demonstrator's misremembered edit is shown to
    # the policy (it is what its own slip and the tool's answer look like) but not trained on
    context_turns: frozenset[int] = frozenset()

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


def demonstration(task: Task, env_cfg: EnvConfig, wrong_fix: random.Random | None = None,
                  unindent: bool = False, retry: random.Random | None = None) -> Demonstration:
    """Run the scripted solver on `task` in a real sandbox; the result must pass its grade.

    With `wrong_fix` (a seeded RNG) the solver writes a plausible wrong fix instead
    (:func:`envs.solver.perturbed_solution`); with `unindent` it writes its fix without the line's
    indentation (:func:`envs.solver.unindented_edit`). Such a demonstration keeps whatever grade it gets.
    With `retry` (a seeded RNG) its first edit misses, the tool shows the closest line, and the edit is
    made again with it (:func:`envs.solver.retried_edit`); the miss is a context turn (no loss: the
    warm start teaches recovering from a slip, not making it). A task whose line has no misremembering
    the hint would correct (6 of the 588 built-in tasks) is demonstrated without the miss."""
    calls = scripted_solution(task) if wrong_fix is None else perturbed_solution(task, wrong_fix)
    context: frozenset[int] = frozenset()
    if retry is not None:
        try:
            retried = retried_edit(task, calls, retry)
            context = frozenset({next(i for i, c in enumerate(retried) if c.name == "str_replace")})
            calls = retried
        except TaskError:
            pass    # no plausible miss that the tool's hint would correct: the plain demonstration
    calls = unindented_edit(task, calls) if unindent else calls
    with make_env(task, env_cfg) as env:
        turns = [(call, env.step(call).observation) for call in calls]
        grade = env.grade()
    if wrong_fix is None and not unindent and not grade.passed:
        raise RuntimeError(f"the scripted solver failed task {task.task_id}: {grade.output[-500:]}")
    return Demonstration(task, turns, grade.passed, context)


def _seeded_share(count: int, share: float, salt: str) -> set[int]:
    """A seeded round(share * count) of the indices 0..count-1."""
    order = list(range(count))
    random.Random(salt).shuffle(order)
    return set(order[: round(share * count)])


def demonstrations(tasks: list[Task], env_cfg: EnvConfig, threads: int = 8, accuracy: float = 1.0,
                   seed: int = 0, indent_kept: float = 1.0, retry: float = 0.0) -> list[Demonstration]:
    """Demonstrations for every task, in task order (sandboxes run in parallel threads).

    `accuracy` < 1 makes a noisy demonstrator: a seeded round((1 - accuracy) * len(tasks)) of the
    tasks get a plausible wrong fix; `indent_kept` < 1: a seeded round((1 - indent_kept) * len(tasks))
    of them (drawn independently) write their fix without its indentation; `retry` > 0: a seeded
    round(retry * len(tasks)) of them (drawn independently) miss their first edit and retry it from
    the tool's hint (see :func:`demonstration`)."""
    wrong = _seeded_share(len(tasks), 1.0 - accuracy, f"{seed}-noisy-demonstrator")
    flat = _seeded_share(len(tasks), 1.0 - indent_kept, f"{seed}-unindented-demonstrator")
    retried = _seeded_share(len(tasks), retry, f"{seed}-retrying-demonstrator")
    rngs = [random.Random(f"{seed}-{task.task_id}") if i in wrong else None for i, task in enumerate(tasks)]
    retry_rngs = [random.Random(f"{seed}-retry-{task.task_id}") if i in retried else None
                  for i, task in enumerate(tasks)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda i: demonstration(tasks[i], env_cfg, rngs[i], i in flat, retry_rngs[i]),
                             range(len(tasks))))


def sft_demonstrations(tasks: list[Task], env_cfg: EnvConfig, sft: SFTConfig, seed: int) -> list[Demonstration]:
    """The warm start's demonstrations in the demonstrator's style that `sft` describes
    (``demo_accuracy``, ``demo_indent_kept``, ``demo_retry``)."""
    return demonstrations(tasks, env_cfg, accuracy=sft.demo_accuracy, seed=seed, indent_kept=sft.demo_indent_kept,
                          retry=sft.demo_retry)


def demo_trajectory(demo: Demonstration, tokenizer, rollout_id: str) -> Trajectory:
    """The demonstration as a trajectory: tool-call tokens (and their <|im_end|>) are actions, except
    in the demonstration's context turns (loss mask 0)."""
    seg = Segment(rollout_id=rollout_id, index=0)
    seg.append(encode_text(tokenizer, prompt_text(demo.task.instruction)), sampled=False)
    for i, (call, obs) in enumerate(demo.turns):
        action = encode_text(tokenizer, render_tool_call(call) + IM_END)
        if i in demo.context_turns:
            seg.append(action, sampled=False)
        else:
            seg.append(action, sampled=True, logprobs=[0.0] * len(action), versions=[0] * len(action))
        if i < len(demo.turns) - 1:
            seg.append(encode_text(tokenizer, observation_text(obs)), sampled=False)
    return Trajectory(rollout_id=rollout_id, task_id=demo.task.task_id, segments=[seg],
                      reward=float(demo.passed), passed=demo.passed)


class ScriptedPolicy:
    """An :class:`rollout.engine.Engine` that plays one task's scripted solution, call by call.

    Driving the real agent loop with it gives a demonstration in exactly the policy's format,
    compaction included: asked for a summary (the prompt ends with the summary request), it
    writes one from the calls it made so far; otherwise it emits its next tool call."""

    def __init__(self, tokenizer, calls: list[ToolCall]) -> None:
        self.tokenizer, self.calls, self.made = tokenizer, list(calls), 0
        self.summary_request = encode_text(tokenizer, summary_request_text())

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerateOutput:
        if prompt_ids[-len(self.summary_request):] == self.summary_request:
            text = scripted_summary(self.calls[: self.made])
        elif self.made < len(self.calls):
            text, self.made = render_tool_call(self.calls[self.made]), self.made + 1
        else:
            raise RuntimeError(f"the scripted solution has {len(self.calls)} calls; the agent asked for more")
        ids = encode_text(self.tokenizer, text + IM_END)
        finish = "stop" if len(ids) <= params.max_new_tokens else "length"
        ids = ids[: params.max_new_tokens]
        return GenerateOutput(token_ids=ids, logprobs=[0.0] * len(ids), finish_reason=finish,
                              weight_versions=[0] * len(ids))

    async def update_weights(self, state: dict, version: int) -> None:
        raise RuntimeError("a scripted policy has no weights")

    async def weight_version(self) -> int:
        return 0


def scripted_summary(calls: list[ToolCall]) -> str:
    """The summary a careful agent writes at a compaction: what it looked at and what it changed."""
    done = "; ".join(f"{c.name} {c.arguments.get('path', '')}".strip() for c in calls) or "nothing yet"
    edited = sorted({str(c.arguments["path"]) for c in calls if c.name in ("write_file", "str_replace")})
    return f"Done so far: {done}. Files changed: {', '.join(edited) or 'none'}."


def demo_trajectories(demos: list[Demonstration], tokenizer, agent: AgentConfig, env_cfg: EnvConfig,
                      max_new_tokens: int, concurrency: int = 16) -> list[Trajectory]:
    """The SFT data. Without compaction, each demonstration rendered by :func:`demo_trajectory`;
    with it, each task's scripted solution played through :func:`rollout.agent.run_episode` (real
    sandboxes), so a long demonstration is split into segments at the same points, with the same
    prompts (digest or summary + kept steps), as the policy's episodes. Each must get the grade its
    demonstration got (a noisy demonstrator's wrong fix fails in both)."""
    if agent.compaction == "none":
        return [demo_trajectory(d, tokenizer, f"demo-{i}") for i, d in enumerate(demos)]
    params = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, stop_token_ids=(
        tokenizer.convert_tokens_to_ids(IM_END),))
    play = AgentConfig(**{**agent.__dict__, "max_turns": max(agent.max_turns, max(len(d.turns) for d in demos))})

    async def one(i: int, demo: Demonstration, slots: asyncio.Semaphore) -> Trajectory:
        async with slots:
            policy = ScriptedPolicy(tokenizer, [call for call, _ in demo.turns])
            return await run_episode(policy, tokenizer, partial(make_env, cfg=env_cfg), demo.task, f"demo-{i}",
                                     params, play)

    async def all_of_them() -> list[Trajectory]:
        slots = asyncio.Semaphore(concurrency)
        return list(await asyncio.gather(*(one(i, d, slots) for i, d in enumerate(demos))))
    trajectories = asyncio.run(all_of_them())
    for demo, traj in zip(demos, trajectories):
        if traj.passed != demo.passed or traj.status != Status.SUBMITTED:
            raise RuntimeError(f"the scripted solution of {demo.task.task_id} (passed={demo.passed}) got "
                               f"passed={traj.passed} when played through the "
                               f"agent loop with compaction={agent.compaction} ({traj.status}): "
                               f"{traj.transcript[-3:]}")
        for i in demo.context_turns:
            unmask_call(traj, encode_text(tokenizer, render_tool_call(demo.turns[i][0]) + IM_END))
    return trajectories


def unmask_call(traj: Trajectory, action: list[int]) -> None:
    """Make every trained occurrence of the tool call `action` (its token ids) in `traj` context
    (loss mask 0, as :meth:`Segment.append` leaves unsampled tokens); raises if there is none."""
    found, n = 0, len(action)
    for seg in traj.segments:
        for start in range(len(seg.tokens) - n + 1):
            if seg.tokens[start:start + n] == action and all(seg.loss_mask[start:start + n]):
                seg.make_context(start, n)
                found += 1
    if not found:
        raise RuntimeError(f"{traj.rollout_id}: a context turn of the demonstration is not among its actions")


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


def sft_warm_start(base: Path, trajectories: list[Trajectory], tokenizer, sft: SFTConfig, algo: AlgoConfig,
                   ds: DeepSpeedConfig, out_dir: Path, seed: int, on_step=None) -> Path:
    """Supervised warm start on demonstration trajectories (cross-entropy on their action tokens,
    every segment); saves the result as a standard checkpoint in `out_dir` and returns that path."""
    decay_steps = sft.steps if sft.lr_decay == "cosine" else 0
    learner = PolicyLearner(base, lr=sft.lr, algo=algo, ds=ds, temperature=1.0, warmup_steps=sft.warmup_steps,
                            decay_steps=decay_steps, min_lr_ratio=sft.min_lr_ratio)
    rng = random.Random(seed)
    for step in range(sft.steps):
        picked = rng.sample(trajectories, min(sft.batch_size, len(trajectories)))
        metrics = learner.sft_step(collate(picked, tokenizer.pad_token_id))
        if on_step is not None:
            on_step(step, metrics)
    learner.save_pretrained(out_dir, tokenizer)
    return out_dir
