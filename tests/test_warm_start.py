"""SFT data: demonstrations rendered by `demo_trajectory` match what the real agent loop produces
when the scripted solution plays it; with compaction on, the demonstrations are compacted into
segments by the agent loop itself (summary tokens are actions), in real sandboxes."""

import asyncio
from functools import partial

import pytest

from envs.suite import builtin_suite
from rl.warm_start import ScriptedPolicy, demo_trajectories, demo_trajectory, demonstrations, split_for_warm_start
from rollout.agent import AgentConfig, run_episode
from rollout.chat import IM_END, SPECIAL_TOKENS, encode_text
from rollout.engine import SamplingParams
from rollout.tokenizer import build_bpe_tokenizer
from rollout.worker import EnvConfig, make_env

TASKS = [t for t in builtin_suite(0) if t.split == "train"][::40][:8]


@pytest.fixture(scope="module")
def demos():
    return demonstrations(TASKS, EnvConfig(), threads=2)


@pytest.fixture(scope="module")
def tokenizer(demos, tmp_path_factory):
    return build_bpe_tokenizer((d.text() for d in demos), 600, tmp_path_factory.mktemp("tok"))


def test_rendered_demonstration_is_exactly_what_the_agent_loop_produces(demos, tokenizer):
    params = SamplingParams(temperature=1.0, max_new_tokens=512,
                            stop_token_ids=(tokenizer.convert_tokens_to_ids(IM_END),))
    for i, demo in enumerate(demos):
        played = asyncio.run(run_episode(ScriptedPolicy(tokenizer, [c for c, _ in demo.turns]), tokenizer,
                                         partial(make_env, cfg=EnvConfig()), demo.task, "p", params,
                                         AgentConfig(max_turns=len(demo.turns))))
        rendered = demo_trajectory(demo, tokenizer, "r")
        assert played.passed
        assert played.segments[0].tokens == rendered.segments[0].tokens
        assert played.segments[0].loss_mask == rendered.segments[0].loss_mask


def test_compaction_splits_demonstrations_into_segments_like_the_policys_episodes(demos, tokenizer):
    # compact after every tool result (threshold just under the budget): read | edit | submit
    agent = AgentConfig(max_turns=3, max_context_tokens=2048, compaction_threshold_tokens=2000, compaction="summary",
                        keep_last_steps=1, max_segments=4)
    trajs = demo_trajectories(demos, tokenizer, agent, EnvConfig(), max_new_tokens=256)
    summary_request = encode_text(tokenizer, "Write a concise summary")
    for demo, traj in zip(demos, trajs):
        assert traj.passed and len(traj.segments) == len(demo.turns)
        assert [s.index for s in traj.segments] == list(range(len(demo.turns)))
        assert len({s.rollout_id for s in traj.segments}) == 1
        for seg in traj.segments:
            assert seg.num_action_tokens > 0
        first = traj.segments[0]
        text = tokenizer.decode(first.tokens, skip_special_tokens=False)
        assert "Write a concise summary" in text and "Done so far: read_file" in text
        # the summary the scripted policy wrote is an action (mask 1), the request is context (mask 0)
        ids = first.tokens
        start = next(i for i in range(len(ids)) if ids[i:i + len(summary_request)] == summary_request)
        assert set(first.loss_mask[start:start + len(summary_request)]) == {0}
        assert first.loss_mask[-1] == 1 or tokenizer.decode(ids[-1:]) in SPECIAL_TOKENS
        # the next segment starts from the summary, not from the old transcript
        assert "Summary of your earlier work" in tokenizer.decode(traj.segments[1].tokens, skip_special_tokens=False)
    plain = demo_trajectories(demos, tokenizer, AgentConfig(), EnvConfig(), max_new_tokens=256)
    assert [len(t.segments) for t in plain] == [1] * len(demos)


def test_split_for_warm_start_is_per_family_disjoint_and_seeded():
    tasks = [t for t in builtin_suite(0) if t.split == "train"]
    warm, rl = split_for_warm_start(tasks, 0.5, seed=3)
    assert not {t.task_id for t in warm} & {t.task_id for t in rl}
    assert len(warm) + len(rl) == len(tasks)
    for family in {t.family for t in tasks}:
        assert any(t.family == family for t in warm) and any(t.family == family for t in rl)
    assert split_for_warm_start(tasks, 0.5, seed=3) == (warm, rl)
    assert split_for_warm_start(tasks, 1.0, seed=3) == (tasks, tasks)
