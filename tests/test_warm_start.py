"""SFT data: demonstrations (and a noisy demonstrator's wrong fixes) rendered by `demo_trajectory` match what the real agent loop produces
when the scripted solution plays it; with compaction on, the demonstrations are compacted into
segments by the agent loop itself (summary tokens are actions), in real sandboxes."""

import asyncio
import dataclasses
import random
from functools import partial

import pytest

from envs.solver import (identifiers, perturbed_solution, plausible_wrong_lines, retried_edit, scripted_solution,
                         unindented_edit)
from envs.suite import builtin_suite
from envs.tasks import TaskError
from envs.tools import ToolCall
from rl.warm_start import ScriptedPolicy, demo_trajectories, demo_trajectory, demonstrations, split_for_warm_start
from rollout.agent import AgentConfig, run_episode
from rollout.chat import IM_END, SPECIAL_TOKENS, encode_text, render_tool_call
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


def test_plausible_wrong_lines_are_one_edit_away_and_keep_indentation():
    assert plausible_wrong_lines("    return a + b") == sorted(
        f"    return a {op} b" for op in ("-", "*", "/", "//", "%", "**"))
    assert plausible_wrong_lines("    if not data:") == ["    if data:"]
    assert "    return hi - lo + 2" in plausible_wrong_lines("    return hi - lo + 1")
    assert "    return hi - lo + 0" in plausible_wrong_lines("    return hi - lo + 1")
    assert "        total -= value" in plausible_wrong_lines("        total += value")
    assert plausible_wrong_lines("    return x and y") == ["    return x or y"]
    # names come only from the caller (the file's identifiers); keywords are never renamed
    assert plausible_wrong_lines("    return best") == []
    assert plausible_wrong_lines("    return best", ("best", "value")) == ["    return value"]
    assert plausible_wrong_lines("    return (") == []          # does not tokenise: no edits


def test_perturbed_solution_writes_a_wrong_fix_on_every_builtin_task():
    rng = random.Random(0)
    for task in builtin_suite(0):
        right, wrong = scripted_solution(task), perturbed_solution(task, rng)
        assert [c.name for c in wrong] == [c.name for c in right]
        assert wrong[1].arguments["old"] == right[1].arguments["old"]
        assert wrong[1].arguments["new"] not in (right[1].arguments["new"], right[1].arguments["old"])
        plain = plausible_wrong_lines(right[1].arguments["new"])
        renamed = plausible_wrong_lines(right[1].arguments["new"], tuple(identifiers(task.files[right[1].arguments["path"]])))
        # an operator/literal edit where the line has one (names are kept right: the policy must still copy them)
        assert wrong[1].arguments["new"] in (plain if set(plain) - {right[1].arguments["old"]} else renamed)


def test_perturbed_solution_refuses_a_solution_without_one_line_edit():
    task = TASKS[0]
    multi = dataclasses.replace(task, solution=(ToolCall("write_file", {"path": "x.py", "content": "1\n"}),
                                                ToolCall("submit", {})))
    with pytest.raises(TaskError, match=f"{task.task_id}.*exactly one single-line str_replace"):
        perturbed_solution(multi, random.Random(0))


def test_unindented_edit_keeps_the_fix_and_drops_only_its_indentation():
    for task in builtin_suite(0):
        right = scripted_solution(task)
        flat = unindented_edit(task, right)
        assert [c.name for c in flat] == [c.name for c in right] and flat[0] == right[0] and flat[2] == right[2]
        assert flat[1].arguments["old"] == right[1].arguments["old"]
        assert flat[1].arguments["new"] == right[1].arguments["new"].lstrip() != right[1].arguments["new"]
    task = TASKS[0]
    top_level = [ToolCall("str_replace", {"path": "x.py", "old": "A = 1", "new": "A = 2"}), ToolCall("submit", {})]
    with pytest.raises(TaskError, match=f"{task.task_id}.*writes one indented line"):
        unindented_edit(task, top_level)


def test_unindented_demonstrations_apply_their_edit_and_fail_their_grade(tokenizer):
    tasks = [t for t in builtin_suite(0) if t.split == "train"][::25][:12]
    mixed = demonstrations(tasks, EnvConfig(), threads=2, indent_kept=0.25, seed=3)
    flat = [d for d in mixed if d.turns[1][0].arguments["new"] != d.task.solution[1].arguments["new"]]
    assert len(flat) == 9                                          # round(0.75 * 12), drawn with the seed
    for demo in flat:
        assert demo.turns[1][0].arguments["new"] == demo.task.solution[1].arguments["new"].lstrip()
        assert demo.turns[1][1].startswith("Edited") and not demo.passed     # applied, and the file no longer runs
    assert all(d.passed for d in mixed if d not in flat)
    both = demonstrations(tasks, EnvConfig(), threads=2, accuracy=0.5, indent_kept=0.5, seed=3)
    assert sum(d.passed for d in both) < 6                          # the two habits are drawn independently


def test_retried_edit_misses_with_a_line_the_hint_corrects():
    retriable = 0
    for task in builtin_suite(0):
        right = scripted_solution(task)
        try:
            calls = retried_edit(task, right, random.Random(0))
        except TaskError as exc:
            assert task.task_id in str(exc)
            continue
        retriable += 1
        miss, edit = calls[1].arguments, right[1].arguments
        assert calls[0] == right[0] and calls[2:] == right[1:]
        assert miss["new"] == edit["new"] and miss["old"] != edit["old"]
        assert miss["old"].strip() not in task.files[miss["path"]]
    assert retriable >= 580                       # 582 of 588: a few `return x` lines have no correctable slip


def test_retrying_demonstrations_recover_from_the_hint_and_pass():
    tasks = [t for t in builtin_suite(0) if t.split == "train"][::25][:12]
    demos = demonstrations(tasks, EnvConfig(), threads=2, retry=0.5, seed=3)
    retried = [d for d in demos if len(d.turns) == 4]
    assert len(retried) == 6 and all(d.passed for d in demos)          # round(0.5 * 12), drawn with the seed
    for demo in retried:
        (miss, missed), (edit, edited) = demo.turns[1], demo.turns[2]
        assert missed.startswith("Error: old string not found") and missed.rstrip().endswith(edit.arguments["old"])
        assert edited.startswith("Edited") and edit == demo.task.solution[1]
    flat = demonstrations(tasks, EnvConfig(), threads=2, retry=0.5, indent_kept=0.0, seed=3)
    assert not any(d.passed for d in flat)            # the retried edit is the one written flush left
    assert [len(d.turns) for d in flat] == [len(d.turns) for d in demos]


def spans(seg, call):
    """The loss masks of every occurrence of the token ids `call` in `seg`."""
    n = len(call)
    return [tuple(seg.loss_mask[i:i + n]) for i in range(len(seg.tokens) - n + 1) if seg.tokens[i:i + n] == call]


def test_a_retrying_demonstrators_miss_is_context_not_a_target(tokenizer):
    """The misremembered edit is shown (tokens kept, loss mask 0); the retry and the rest are trained,
    whether the demonstration is rendered or played through the agent loop with compaction."""
    tasks = [t for t in builtin_suite(0) if t.split == "train"][::25][:6]
    demos = [d for d in demonstrations(tasks, EnvConfig(), threads=2, retry=1.0, seed=3) if len(d.turns) == 4]
    assert len(demos) >= 5
    agent = AgentConfig(max_turns=4, max_context_tokens=2048, compaction_threshold_tokens=2000, compaction="summary",
                        keep_last_steps=1, max_segments=5)
    played = demo_trajectories(demos, tokenizer, agent, EnvConfig(), max_new_tokens=256)
    for demo, traj in zip(demos, played):
        assert demo.context_turns == {1}
        miss, retry = (encode_text(tokenizer, render_tool_call(demo.turns[i][0]) + IM_END) for i in (1, 2))
        rendered = demo_trajectory(demo, tokenizer, "r").segments[0]
        assert spans(rendered, miss) == [(0,) * len(miss)] and spans(rendered, retry) == [(1,) * len(retry)]
        assert rendered.num_action_tokens == sum(
            len(encode_text(tokenizer, render_tool_call(c) + IM_END)) for i, (c, _) in enumerate(demo.turns) if i != 1)
        assert len(traj.segments) > 1                          # compacted: the miss is context in every segment
        seen = [m for seg in traj.segments for m in spans(seg, miss)]
        assert seen and all(set(m) == {0} for m in seen)
        assert (1,) * len(retry) in [m for seg in traj.segments for m in spans(seg, retry)]


def test_noisy_demonstrator_gets_its_share_wrong_and_keeps_them_unfiltered(tokenizer):
    tasks = [t for t in builtin_suite(0) if t.split == "train"][::25][:12]
    noisy = demonstrations(tasks, EnvConfig(), threads=2, accuracy=0.25, seed=3)
    assert [d.task.task_id for d in noisy] == [t.task_id for t in tasks]
    assert sum(d.passed for d in noisy) == 3                       # round(0.75 * 12) wrong fixes, each fails its grade
    again = demonstrations(tasks, EnvConfig(), threads=2, accuracy=0.25, seed=3)
    assert [[c for c, _ in d.turns] for d in again] == [[c for c, _ in d.turns] for d in noisy]   # seeded
    for demo in noisy:
        edit = demo.turns[1][0].arguments
        solution = demo.task.solution[1].arguments
        assert (edit["new"] == solution["new"]) == demo.passed
        assert demo.turns[1][1].startswith("Edited")               # the wrong fix still applied: a real edit
        traj = demo_trajectory(demo, tokenizer, "r")
        assert traj.passed == demo.passed and traj.reward == float(demo.passed)
    assert all(d.passed for d in demonstrations(tasks, EnvConfig(), threads=2))
