"""Compaction in the agent loop (ALGORITHMS.md §3.1-3.2), with a real tokenizer and real sandboxes,
driven by a scripted engine: it replays fixed assistant turns and answers a summary request
with a fixed summary; every call samples at its own weight version and log-prob."""

import asyncio
from functools import partial

import pytest

from antihack.guard import Guard, GuardConfig
from envs.solver import scripted_solution
from envs.suite import builtin_suite
from envs.tools import ToolCall
from rollout.agent import AgentConfig, run_episode
from rollout.chat import (IM_END, encode_text, message, message_header, prompt_text, render_tool_call,
                          stop_token_ids, system_prompt)
from rollout.compaction import (DIGEST_PREFIX, SUMMARY_PREFIX, compaction_due, edited_files, rule_digest,
                                 steps_that_fit, summary_request_text)
from rollout.engine import GenerateOutput, SamplingParams
from rollout.tokenizer import build_bpe_tokenizer
from rollout.trajectory import Segment, Status
from rollout.worker import EnvConfig, episode_guard, make_env

TASK = [t for t in builtin_suite(0) if t.split == "train"][0]
READ, FIX, SUBMIT = (render_tool_call(c) + IM_END for c in scripted_solution(TASK))
SUMMARY = "Read tools.py: ** should be *. Fixed it. Left: submit." + IM_END


def echo(i: int) -> str:
    return render_tool_call(ToolCall("bash", {"command": f"echo step{i}"})) + IM_END


class ScriptedEngine:
    """Replays assistant texts as token ids; answers a summary request with `summary`.

    Call n samples at weight version n with log-prob -0.01·(n+1) per token, so tests can tell
    which call sampled which tokens."""

    def __init__(self, tokenizer, texts, summary=SUMMARY):
        self.tokenizer, self.texts, self.summary = tokenizer, list(texts), summary
        self.request = encode_text(tokenizer, summary_request_text())
        self.calls: list[tuple[str, list[int], list[int]]] = []   # (kind, prompt, sampled ids)

    async def generate(self, prompt_ids, params):
        is_summary = list(prompt_ids[-len(self.request):]) == self.request
        text = self.summary if is_summary else self.texts.pop(0)
        ids = encode_text(self.tokenizer, text)[: params.max_new_tokens]
        n = len(self.calls)
        self.calls.append(("summary" if is_summary else "action", list(prompt_ids), ids))
        stop = bool(ids) and ids[-1] in params.stop_token_ids
        return GenerateOutput(ids, [-0.01 * (n + 1)] * len(ids), "stop" if stop else "length", [n] * len(ids))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    corpus = [prompt_text(t.instruction) + "".join(render_tool_call(c) for c in scripted_solution(t))
              for t in builtin_suite(0)[:50]]
    return build_bpe_tokenizer(corpus, 400, tmp_path_factory.mktemp("tok"))


# a context budget in which a handful of steps fit: every long episode below has to compact
SMALL = dict(max_context_tokens=800, compaction_threshold_tokens=300, summary_max_tokens=160, keep_last_steps=2,
             max_turns=20)
LONG = [READ, FIX] + [echo(i) for i in range(10)] + [SUBMIT]


def run(tokenizer, texts, make_guard=None, **agent):
    engine = ScriptedEngine(tokenizer, texts)
    params = SamplingParams(max_new_tokens=200, stop_token_ids=stop_token_ids(tokenizer))
    traj = asyncio.run(run_episode(engine, tokenizer, partial(make_env, cfg=EnvConfig()), TASK, "r-7", params,
                                   AgentConfig(**agent), make_guard))
    return traj, engine


def runs_of(seg: Segment) -> list[tuple[int, int]]:
    """[start, end) of each run of mask-1 tokens (one per sampled turn or summary)."""
    out, start = [], None
    for i, m in enumerate(seg.loss_mask + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def compactions(traj):
    return [t["compaction"] for t in traj.transcript if "compaction" in t]


def actions_before(traj, entry_index):
    """The action texts of the steps before the transcript's `entry_index`-th compaction entry."""
    seen, acts = 0, []
    for t in traj.transcript:
        if "compaction" in t:
            if seen == entry_index:
                return acts
            seen += 1
        elif "action" in t:
            acts.append(t["action"])
    raise AssertionError("no such compaction")


def check_segments_aligned(tokenizer, traj):
    assert [s.index for s in traj.segments] == list(range(len(traj.segments)))
    assert {s.rollout_id for s in traj.segments} == {"r-7"}
    for seg in traj.segments:
        assert len(seg.tokens) == len(seg.loss_mask) == len(seg.behavior_logprobs) == len(seg.weight_versions)
        # a valid chat: no empty assistant turn where a summary request or a kept step was spliced in
        assert "<|im_start|>assistant\n<|im_start|>" not in tokenizer.decode(seg.tokens, skip_special_tokens=False)


def kept_slice(tokenizer, old: Segment, new: Segment, note_ids: list[int]):
    """Split `new`'s prompt as system + task + note message + kept steps + assistant header, checking each part;
    return (start, end) of the kept steps in `new`."""
    head = encode_text(tokenizer, message("system", system_prompt()) + message("user", TASK.instruction)
                       + "<|im_start|>user\n")
    assert new.tokens[: len(head)] == head                                     # system + task
    assert new.tokens[len(head): len(head) + len(note_ids)] == note_ids        # the summary / digest
    start = len(head) + len(note_ids)
    closing = encode_text(tokenizer, IM_END + "\n" + message_header("assistant"))
    assert new.tokens[start: start + len(closing)] == closing
    return start + len(closing)


def test_summary_compaction_continues_and_still_grades(tokenizer):
    traj, engine = run(tokenizer, LONG, compaction="summary", **SMALL)
    check_segments_aligned(tokenizer, traj)
    assert len(traj.segments) >= 2 and len(compactions(traj)) == len(traj.segments) - 1
    assert all(c["mode"] == "summary" and not c["fallback"] for c in compactions(traj))
    # the fix was made in segment 0, the submit came in a later one: the sandbox carried over
    def sampled(seg):
        return tokenizer.decode([t for t, m in zip(seg.tokens, seg.loss_mask) if m], skip_special_tokens=False)
    assert FIX in sampled(traj.segments[0]) and SUBMIT in sampled(traj.segments[-1])
    assert traj.status == Status.SUBMITTED and traj.passed and traj.reward == 1.0
    assert traj.num_turns == len(LONG) and not engine.texts
    assert [k for k, _, _ in engine.calls].count("summary") == len(traj.segments) - 1
    assert all(len(seg.tokens) <= SMALL["max_context_tokens"] for seg in traj.segments)


def test_summary_tokens_are_actions_and_end_the_old_segment(tokenizer):
    traj, engine = run(tokenizer, LONG, compaction="summary", **SMALL)
    check_segments_aligned(tokenizer, traj)
    old = traj.segments[0]
    n = next(i for i, (kind, _, _) in enumerate(engine.calls) if kind == "summary")
    summary_ids = engine.calls[n][2]
    assert summary_ids == encode_text(tokenizer, SUMMARY)
    start, end = runs_of(old)[-1]
    assert end == len(old.tokens)                    # the summary is the old segment's last token run ...
    assert old.tokens[start:end] == summary_ids       # ... sampled ids kept as they are
    assert old.weight_versions[start:end] == [n] * len(summary_ids)
    assert old.behavior_logprobs[start:end] == pytest.approx([-0.01 * (n + 1)] * len(summary_ids))
    request = encode_text(tokenizer, summary_request_text())
    assert old.tokens[start - len(request): start] == request           # the request is context
    assert set(old.loss_mask[start - len(request): start]) == {0}
    assert engine.calls[n][1] == old.tokens[:start]  # the policy summarised the whole old context


def test_new_segment_prompt_is_system_task_summary_and_last_k_steps(tokenizer):
    k = SMALL["keep_last_steps"]
    traj, engine = run(tokenizer, LONG, compaction="summary", **SMALL)
    old, new = traj.segments[0], traj.segments[1]
    summary_ids = encode_text(tokenizer, SUMMARY)[:-1]            # without its closing <|im_end|>
    note = encode_text(tokenizer, SUMMARY_PREFIX) + summary_ids
    kept_start = kept_slice(tokenizer, old, new, note)
    # the engine's first prompt in the new segment is its whole prompt
    first = next(p for kind, p, _ in engine.calls if kind == "action" and p[: kept_start] == new.tokens[:kept_start])
    header = encode_text(tokenizer, message_header("assistant"))
    assert first == new.tokens[: len(first)] and first[-len(header):] == header
    kept = new.tokens[kept_start: len(first) - len(header)]
    # the kept steps are a verbatim copy of the old segment's last k steps (actions + tool results),
    # which end where the summary request begins
    request = encode_text(tokenizer, summary_request_text())
    old_end = runs_of(old)[-1][0] - len(request)
    old_start = runs_of(old)[-1 - k][0]
    assert kept == old.tokens[old_start:old_end]
    assert [old.loss_mask[i] for i in range(old_start, old_end)].count(1) > 0     # actions in the old segment
    assert set(new.loss_mask[: len(first)]) == {0}                               # context in the new one
    assert set(new.weight_versions[: len(first)]) == {-1}
    acts = actions_before(traj, 0)
    text = tokenizer.decode(kept, skip_special_tokens=False)
    assert text.startswith(acts[-k]) and all(a in text for a in acts[-k:]) and acts[-k - 1] not in text
    # the new segment's own turns are actions with their own versions
    assert new.loss_mask[len(first):].count(1) > 0
    assert min(v for v, m in zip(new.weight_versions, new.loss_mask) if m) > max(old.weight_versions)


def test_rule_mode_samples_no_summary_and_keeps_steps_verbatim(tokenizer):
    k = SMALL["keep_last_steps"]
    traj, engine = run(tokenizer, LONG, compaction="rule", **SMALL)
    check_segments_aligned(tokenizer, traj)
    assert len(traj.segments) >= 2 and traj.passed and traj.status == Status.SUBMITTED
    assert all(kind == "action" for kind, _, _ in engine.calls)
    # the only mask-1 tokens in the whole trajectory are the agent's turns, once each
    sampled = [t for s in traj.segments for t, m in zip(s.tokens, s.loss_mask) if m]
    assert sampled == [i for text in LONG for i in encode_text(tokenizer, text)]
    old, new = traj.segments[0], traj.segments[1]
    digest = encode_text(tokenizer, compactions(traj)[0]["note"])
    kept_start = kept_slice(tokenizer, old, new, digest)
    note = compactions(traj)[0]["note"]
    assert note.startswith(DIGEST_PREFIX) and "Files edited: tools.py." in note
    assert "str_replace tools.py -> Edited tools.py." in note and "echo step" in note
    # the rule-mode old segment ends with the last step's tool result; those steps are copied
    header = encode_text(tokenizer, message_header("assistant"))
    first = next(p for _, p, _ in engine.calls if p[:kept_start] == new.tokens[:kept_start])
    kept = new.tokens[kept_start: len(first) - len(header)]
    old_start = runs_of(old)[-k][0]
    assert kept == old.tokens[old_start:]
    assert tokenizer.decode(old.tokens, skip_special_tokens=False).endswith("<|im_start|>tool\nexit_code: 0\nstdout:\n"
                                                                         f"step{len(actions_before(traj, 0)) - 3}<|im_end|>\n")
    assert set(new.loss_mask[: len(first)]) == {0}


def test_every_compaction_keeps_the_last_k_steps_even_across_segments(tokenizer):
    # tiny budget: each segment only has room for one or two of its own steps, so a later
    # compaction keeps a step that was itself copied in from the segment before
    texts = [READ] + [echo(i) for i in range(10)] + [FIX, SUBMIT]
    agent = dict(SMALL, max_context_tokens=700, compaction_threshold_tokens=340, summary_max_tokens=48, max_segments=8)
    traj, _ = run(tokenizer, texts, compaction="rule", **agent)
    check_segments_aligned(tokenizer, traj)
    assert len(traj.segments) >= 4 and traj.passed
    k, copied_again = agent["keep_last_steps"], 0
    for c, (old, new) in enumerate(zip(traj.segments, traj.segments[1:])):
        rec = compactions(traj)[c]
        assert rec["kept_steps"] == k
        start = kept_slice(tokenizer, old, new, encode_text(tokenizer, rec["note"]))
        acts = actions_before(traj, c)
        text = tokenizer.decode(new.tokens[start:], skip_special_tokens=False)
        assert text.startswith(acts[-k]) and all(a in text for a in acts[-k:])
        kept_len = rec["tokens_after"] - start - len(encode_text(tokenizer, message_header("assistant")))
        assert kept_len > 0 and rec["tokens_before"] == len(old.tokens)
        assert new.tokens[start: start + kept_len] == old.tokens[len(old.tokens) - kept_len:]
        assert set(new.loss_mask[: rec["tokens_after"]]) == {0}
        copied_again += old.loss_mask[len(old.tokens) - kept_len] == 0  # its first kept step came from further back
    assert copied_again > 0


def test_max_segments_reached_ends_with_context_limit(tokenizer):
    texts = [READ] + [echo(i) for i in range(30)]
    traj, _ = run(tokenizer, texts, compaction="rule", **dict(SMALL, max_turns=30, max_segments=2))
    check_segments_aligned(tokenizer, traj)
    assert traj.status == Status.CONTEXT_LIMIT
    assert len(traj.segments) == 2 and len(compactions(traj)) == 1
    assert SMALL["max_context_tokens"] - len(traj.segments[-1].tokens) < 16
    assert not traj.passed and traj.reward == 0.0


def test_no_room_for_a_new_prompt_ends_with_context_limit(tokenizer):
    # a tiny context: the digest of ever more steps grows until system + task + digest leaves no room for a turn
    agent = dict(compaction="rule", max_context_tokens=300, compaction_threshold_tokens=150, summary_max_tokens=200,
                 max_segments=10, max_turns=20)
    traj, _ = run(tokenizer, [READ] + [echo(i) for i in range(20)], **agent)
    check_segments_aligned(tokenizer, traj)
    assert traj.status == Status.CONTEXT_LIMIT and 2 <= len(traj.segments) < agent["max_segments"]
    assert compactions(traj)[-1]["kept_steps"] is None and "tokens_after" not in compactions(traj)[-1]
    assert len(compactions(traj)) == len(traj.segments)     # the last one opened no segment
    assert all(c["kept_steps"] is not None for c in compactions(traj)[:-1])


def test_default_config_never_compacts(tokenizer):
    assert AgentConfig().compaction == "none"
    traj, engine = run(tokenizer, [READ] + [echo(i) for i in range(30)], max_context_tokens=560, max_turns=30)
    assert traj.status == Status.CONTEXT_LIMIT and len(traj.segments) == 1 and not compactions(traj)
    assert all(kind == "action" for kind, _, _ in engine.calls)


def test_summary_without_room_falls_back_to_the_rule_digest(tokenizer):
    # the summary request alone is longer than the room left when compaction triggers
    request = len(encode_text(tokenizer, summary_request_text()))
    agent = dict(SMALL, compaction_threshold_tokens=request // 2)
    traj, engine = run(tokenizer, LONG, compaction="summary", **agent)
    assert len(traj.segments) >= 2 and traj.passed
    assert compactions(traj)[0]["fallback"] and compactions(traj)[0]["mode"] == "rule"
    assert all(kind == "action" for kind, _, _ in engine.calls)
    assert not any(encode_text(tokenizer, summary_request_text()) == s.tokens[-request:] for s in traj.segments)


def test_guard_sees_actions_across_compaction(tokenizer, tmp_path):
    guard = Guard.from_config(GuardConfig(), audit_path=str(tmp_path / "audit.sqlite"), run_name="t")
    hack = render_tool_call(ToolCall("bash", {"command": "cat /work/test_hidden.py"})) + IM_END
    texts = [READ, FIX] + [echo(i) for i in range(8)] + [hack, SUBMIT]
    traj, _ = run(tokenizer, texts, make_guard=partial(episode_guard, guard), compaction="summary", **SMALL)
    assert len(traj.segments) >= 2 and traj.passed and traj.status == Status.SUBMITTED
    assert len(traj.hack_events) == 1 and traj.hack_events[0]["action"] == "block"


def test_rule_digest_lists_edits_and_results_and_fits_its_budget(tokenizer):
    transcript = [
        {"action": READ, "observation": TASK.files["tools.py"]},
        {"action": render_tool_call(ToolCall("write_file", {"path": "a.py", "content": "x"})) + IM_END,
         "observation": "Error: permission denied"},
        {"action": FIX, "observation": "Edited tools.py."},
        {"compaction": {"mode": "rule"}},
        {"action": "garbage", "observation": "Error: no tool call found."},
        {"action": echo(1), "observation": "exit_code: 0\nstdout:\nstep1"},
    ]
    assert edited_files(transcript) == ["tools.py"]
    text = tokenizer.decode(rule_digest(tokenizer, transcript, keep_last_steps=1, max_tokens=10_000))
    assert "Files edited: tools.py." in text
    assert "1. read_file tools.py -> def area_of_rect(length, breadth):" in text
    assert "4. invalid tool call -> Error: no tool call found." in text
    assert "echo step1" not in text and "Last 1 steps follow." in text
    budget = len(rule_digest(tokenizer, transcript, keep_last_steps=1, max_tokens=10_000)) - 10
    small = tokenizer.decode(rule_digest(tokenizer, transcript, keep_last_steps=1, max_tokens=budget))
    assert len(encode_text(tokenizer, small)) <= budget
    assert "(1 steps omitted)" in small and "read_file" not in small and "4. invalid tool call" in small
    assert len(rule_digest(tokenizer, transcript, keep_last_steps=1, max_tokens=5)) == 5


def test_config_is_checked():
    with pytest.raises(ValueError, match="compaction"):
        AgentConfig(compaction="drop")
    with pytest.raises(ValueError, match="threshold"):
        AgentConfig(compaction="rule", max_context_tokens=512, compaction_threshold_tokens=600)
    with pytest.raises(ValueError, match="max_segments"):
        AgentConfig(compaction="summary", max_segments=0)
    AgentConfig(max_context_tokens=100)      # compaction off: its fields are not checked


def test_compaction_is_due_only_when_room_runs_low_and_it_can_help():
    cfg = AgentConfig(compaction="rule", max_context_tokens=700, compaction_threshold_tokens=300, max_segments=3)
    assert compaction_due(cfg, context_len=401, turns_left=1, num_segments=1)
    assert not compaction_due(cfg, context_len=400, turns_left=1, num_segments=1)   # room 300 is not under 300
    assert not compaction_due(cfg, context_len=690, turns_left=0, num_segments=1)   # no turn left to use it
    assert not compaction_due(cfg, context_len=690, turns_left=1, num_segments=3)   # max_segments reached
    assert not compaction_due(AgentConfig(max_context_tokens=700), context_len=690, turns_left=1, num_segments=1)


def test_kept_steps_shrink_to_fit_the_new_context():
    cfg = AgentConfig(compaction="rule", max_context_tokens=700, compaction_threshold_tokens=300, keep_last_steps=2)
    starts, end = [100, 200, 300], 400
    assert steps_that_fit(100, starts, end, 5, cfg) == 2     # 100 + 200 + 5 leaves 395
    assert steps_that_fit(200, starts, end, 5, cfg) == 1     # two would leave 295 < 300
    assert steps_that_fit(390, starts, end, 5, cfg) == 0     # not even one step, but a turn fits
    assert steps_that_fit(690, starts, end, 5, cfg) is None  # less than min_turn_tokens: context limit
    assert steps_that_fit(100, [], end, 5, cfg) == 0         # no steps to keep
