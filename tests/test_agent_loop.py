"""The agent loop with a real tokenizer, real sandboxes and the real guard, driven by a
scripted engine (a stand-in for the policy that replays fixed assistant turns)."""

import asyncio
from functools import partial

import pytest

from antihack.guard import Guard, GuardConfig
from envs.solver import scripted_solution
from envs.suite import builtin_suite
from rollout.agent import AgentConfig, run_episode
from rollout.chat import IM_END, encode_text, prompt_text, render_tool_call, stop_token_ids
from rollout.engine import GenerateOutput, SamplingParams
from rollout.tokenizer import build_bpe_tokenizer
from rollout.trajectory import Status
from rollout.worker import EnvConfig, episode_guard, make_env

TASK = [t for t in builtin_suite(0) if t.split == "train"][0]


class ScriptedEngine:
    """Replays assistant texts as token ids, each with log-prob -0.5, at weight version 3."""

    def __init__(self, tokenizer, texts):
        self.tokenizer, self.texts, self.prompts = tokenizer, list(texts), []

    async def generate(self, prompt_ids, params):
        self.prompts.append(list(prompt_ids))
        ids = encode_text(self.tokenizer, self.texts.pop(0))[: params.max_new_tokens]
        stop = bool(ids) and ids[-1] in params.stop_token_ids
        return GenerateOutput(ids, [-0.5] * len(ids), "stop" if stop else "length", [3] * len(ids))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    corpus = [prompt_text(t.instruction) + "".join(render_tool_call(c) for c in scripted_solution(t))
              for t in builtin_suite(0)[:50]]
    return build_bpe_tokenizer(corpus, 400, tmp_path_factory.mktemp("tok"))


def run(tokenizer, texts, make_guard=None, max_turns=6):
    engine = ScriptedEngine(tokenizer, texts)
    params = SamplingParams(max_new_tokens=200, stop_token_ids=stop_token_ids(tokenizer))
    traj = asyncio.run(run_episode(engine, tokenizer, partial(make_env, cfg=EnvConfig()), TASK, "r-1", params,
                                   AgentConfig(max_turns=max_turns), make_guard))
    return traj, engine


def test_scripted_solution_passes_and_tokens_are_kept(tokenizer):
    texts = [render_tool_call(c) + IM_END for c in scripted_solution(TASK)]
    traj, engine = run(tokenizer, texts)
    assert traj.status == Status.SUBMITTED and traj.passed and traj.reward == 1.0
    seg = traj.segments[0]
    assert len(seg.tokens) == len(seg.loss_mask) == len(seg.behavior_logprobs) == len(seg.weight_versions)
    # every assistant turn's ids appear verbatim, with mask 1, log-prob and version
    for prompt in engine.prompts:
        assert seg.tokens[: len(prompt)] == prompt          # context only ever grows
    sampled = [t for t, m in zip(seg.tokens, seg.loss_mask) if m]
    assert sampled == [i for text in texts for i in encode_text(tokenizer, text)]
    assert {v for v, m in zip(seg.weight_versions, seg.loss_mask) if m} == {3}
    assert all(lp == -0.5 for lp, m in zip(seg.behavior_logprobs, seg.loss_mask) if m)
    # the file the agent read came back as an observation with mask 0
    obs = tokenizer.decode([t for t, m in zip(seg.tokens, seg.loss_mask) if not m])
    assert next(iter(TASK.files.values())).strip() in obs


def test_malformed_output_becomes_an_error_observation(tokenizer):
    texts = ['<tool_call>{"name": read_file}</tool_call>' + IM_END, "no call at all" + IM_END,
             render_tool_call(scripted_solution(TASK)[-1]) + IM_END]
    traj, _ = run(tokenizer, texts)
    assert traj.status == Status.SUBMITTED and traj.parse_errors == 2 and not traj.passed
    assert "not valid JSON" in traj.transcript[0]["observation"]


def test_unterminated_turn_is_closed_and_turn_limit_ends(tokenizer):
    traj, _ = run(tokenizer, ["rambling " * 5] * 2, max_turns=2)
    assert traj.status == Status.TURN_LIMIT and traj.num_turns == 2
    seg = traj.segments[0]
    im_end = encode_text(tokenizer, IM_END)[0]
    # the closing <|im_end|> that the loop added is context (mask 0), not an action
    closers = [m for t, m in zip(seg.tokens, seg.loss_mask) if t == im_end]
    assert 0 in closers


def test_guard_blocks_a_hack_with_dummy_output_and_the_episode_goes_on(tokenizer, tmp_path):
    guard = Guard.from_config(GuardConfig(), audit_path=str(tmp_path / "audit.sqlite"), run_name="t")
    hack = render_tool_call(type(scripted_solution(TASK)[0])("bash", {"command": "cat /work/test_hidden.py"})) + IM_END
    texts = [hack] + [render_tool_call(c) + IM_END for c in scripted_solution(TASK)]
    traj, _ = run(tokenizer, texts, make_guard=partial(episode_guard, guard))
    assert traj.passed and traj.status == Status.SUBMITTED
    assert len(traj.hack_events) == 1 and traj.hack_events[0]["action"] == "block"
    assert "No such file" in traj.transcript[0]["observation"]
