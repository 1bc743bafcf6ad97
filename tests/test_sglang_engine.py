"""The sglang engine's HTTP client against the SGLang 0.5.23 test double (served from a thread):
generation (ids, log-probs, finish reasons, stop tokens and strings, version tags), abort, the
concurrency limit, the tensor and disk weight pushes (call order, flush retries, weights equal
the learner's, the version on new tokens, partial rollout across a push), the router, and clear
errors for a version mismatch, an unreachable or dead server, and a bad config."""

import asyncio
import time

import pytest
import requests
import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

from rollout.engine import SamplingParams
from rollout.hf_engine import HFGenerator
from rollout.sglang_double import RouterDouble, SGLangDouble
from rollout.sglang_engine import (
    SGLangConfig,
    SGLangEngine,
    SGLangError,
    SGLangRequestError,
    SGLangUnreachableError,
    SGLangVersionError,
    WeightSyncError,
    expand_weight_versions,
    flag_args,
    free_port,
    parse_score_response,
    router_command,
    sampling_payload,
    server_command,
)

VOCAB = 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny tied-embedding Qwen2 with a word-level tokenizer ("t0" .. "t63")."""
    path = tmp_path_factory.mktemp("tiny_sglang_model")
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=True, eos_token_id=None, bos_token_id=None)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(path))
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(path))
    return path


@pytest.fixture()
def double(model_dir):
    d = SGLangDouble(model_dir, weight_version="0")
    d.start()
    yield d
    d.stop()


def run(coro, timeout=30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def tokens_out(double, at_least):
    return lambda: any(len(r.output_ids) >= at_least for r in list(double.requests.values()))


async def started(cfg: SGLangConfig) -> SGLangEngine:
    engine = SGLangEngine(cfg)
    await engine.start()
    return engine


def learner_state(model_dir, shift):
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    torch.manual_seed(shift)
    state = {k: torch.randn_like(v) * 0.5 for k, v in model.state_dict().items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]   # tied, as the learner's state dict has it
    return state


def reference_logprobs(model, prompt, tokens, temperature):
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0].float()
    logp = torch.log_softmax(logits / temperature, -1)
    return [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(tokens)]


# ---------------------------------------------------------------------------------------------- generation
def test_generate_returns_ids_logprobs_and_versions(double):
    async def go():
        engine = await started(SGLangConfig(urls=[double.url]))
        try:
            prompt = [5, 6, 7, 8]
            out = await engine.generate(prompt, SamplingParams(temperature=0.7, max_new_tokens=12))
            assert len(out.token_ids) == len(out.logprobs) == len(out.weight_versions) == 12
            assert out.finish_reason == "length" and out.weight_versions == [0] * 12
            ref = reference_logprobs(double.model, prompt, out.token_ids, 0.7)
            assert max(abs(a - b) for a, b in zip(ref, out.logprobs)) < 1e-4
            assert await engine.weight_version() == 0
        finally:
            await engine.close()
    run(go())


def test_prefill_scoring_gives_the_hf_engines_scores_of_the_ids_sent(double, model_dir):
    """score_top_k (the OPD teachers' call): one prefill-only /generate per sequence; own log-probs and
    top k equal the hf engine's on the same ids at temperature 1; other temperatures are refused."""
    sequences = [[3, 9, 1, 44, 7, 7, 20], [5], [60, 2, 2]]

    async def go():
        engine = await started(SGLangConfig(urls=[double.url]))
        try:
            with pytest.raises(SGLangError, match="temperature 1 only"):
                await engine.score_top_k(sequences, 0.5, 3)
            return await engine.score_top_k(sequences, 1.0, 3), await engine.score(sequences, 1.0)
        finally:
            await engine.close()
    scored, own_only = run(go())
    expected = HFGenerator(model_dir, pad_token_id=0, seed=0, num_threads=2).score_top_k(sequences, 1.0, 3)
    for (own, ids, lps), (e_own, e_ids, e_lps), alone, seq in zip(scored, expected, own_only, sequences):
        assert len(own) == len(ids) == len(lps) == len(seq) and own[0] == 0.0
        assert max(abs(a - b) for a, b in zip(own, e_own)) < 1e-4 and alone == own
        assert ids == e_ids
        assert max(abs(a - b) for row, e_row in zip(lps, e_lps) for a, b in zip(row, e_row)) < 1e-4


def test_prefill_only_body_as_sglang_answers_it(double):
    """The double's prompt log-probs in SGLang 0.5.23's shape: from logprob_start_len on, the first
    entry's log-prob null, top rows likewise; no output; a start past the prompt is refused."""
    ids = [4, 8, 15, 16, 23]
    body = {"input_ids": ids, "return_logprob": True, "logprob_start_len": 2, "top_logprobs_num": 2,
            "sampling_params": {"max_new_tokens": 0}}
    answer = requests.post(double.url + "/generate", json=body, timeout=10).json()
    meta = answer["meta_info"]
    assert answer["output_ids"] == [] and meta["finish_reason"] == {"type": "length", "length": 0}
    assert [e[1] for e in meta["input_token_logprobs"]] == ids[2:] and meta["input_token_logprobs"][0][0] is None
    assert all(e[0] < 0 for e in meta["input_token_logprobs"][1:])
    assert meta["input_top_logprobs"][0] is None and [len(r) for r in meta["input_top_logprobs"][1:]] == [2, 2]
    assert requests.post(double.url + "/generate", json=body | {"logprob_start_len": 6}, timeout=10).status_code == 400
    # a server that scored other ids than the ones sent is an error, not a silent misalignment
    wrong = {"meta_info": {"input_token_logprobs": [[None, 4, None], [-1.0, 9, None]]}}
    with pytest.raises(SGLangRequestError, match="not the 2 ids sent"):
        parse_score_response(wrong, "server", sequence=[4, 8], k=0)


def test_stop_tokens_and_stop_strings_end_the_turn(double):
    async def go():
        engine = await started(SGLangConfig(urls=[double.url]))
        try:
            stop = tuple(range(1, VOCAB, 2))   # half the vocabulary stops: every turn stops quickly
            for _ in range(4):
                out = await engine.generate([4, 4, 4], SamplingParams(max_new_tokens=60, stop_token_ids=stop))
                assert out.finish_reason == "stop" and out.token_ids[-1] in stop   # the stop token is kept
                assert all(t not in stop for t in out.token_ids[:-1])
            out = await engine.generate([4, 4], SamplingParams(max_new_tokens=30), stop=["t"])  # every token's text
            assert out.finish_reason == "stop" and len(out.token_ids) == 1
        finally:
            await engine.close()
    run(go())


def test_sampling_params_in_sglang_form():
    p = sampling_payload(SamplingParams(temperature=0.5, top_p=0.9, top_k=0, max_new_tokens=7, stop_token_ids=(3,)),
                         ignore_eos=True, stop=["</tool>"])
    assert p == {"temperature": 0.5, "top_p": 0.9, "top_k": -1, "max_new_tokens": 7, "stop_token_ids": [3],
                 "stop": ["</tool>"], "ignore_eos": True, "no_stop_trim": True, "skip_special_tokens": False}
    assert sampling_payload(SamplingParams(top_k=5), ignore_eos=False)["top_k"] == 5


def test_top_k_and_top_p_are_accepted_by_the_server(double):
    async def go():
        engine = await started(SGLangConfig(urls=[double.url]))
        try:
            out = await engine.generate([1, 2], SamplingParams(top_k=1, max_new_tokens=6))
            greedy = await engine.generate([1, 2], SamplingParams(top_k=1, max_new_tokens=6))
            assert out.token_ids == greedy.token_ids          # top-k 1 is greedy
            out = await engine.generate([1, 2], SamplingParams(top_k=0, top_p=0.5, max_new_tokens=6))
            assert len(out.token_ids) == 6
        finally:
            await engine.close()
    run(go())


def test_weight_version_spans_expand_per_token():
    meta = {"weight_version": "3", "weight_versions": [{"version": "1", "start": 0, "end": 2},
                                                       {"version": "3", "start": 2, "end": 5}]}
    assert expand_weight_versions(meta, 5, "x") == [1, 1, 3, 3, 3]
    assert expand_weight_versions({"weight_version": "4"}, 3, "x") == [4, 4, 4]
    with pytest.raises(SGLangRequestError, match="integer versions"):
        expand_weight_versions({"weight_version": "default"}, 1, "server http://h:1")


def test_abort_returns_the_partial_turn(model_dir):
    d = SGLangDouble(model_dir, weight_version="0", token_delay_s=0.01)
    d.start()

    async def go():
        engine = await started(SGLangConfig(urls=[d.url]))
        try:
            task = asyncio.create_task(engine.generate([3, 3], SamplingParams(max_new_tokens=400), rid="episode-7"))
            await until(tokens_out(d, 3))
            await engine.abort("episode-7")
            out = await task
            assert out.finish_reason == "abort" and 0 < len(out.token_ids) < 400
            assert len(out.logprobs) == len(out.weight_versions) == len(out.token_ids)
            t1 = asyncio.create_task(engine.generate([3], SamplingParams(max_new_tokens=400)))
            t2 = asyncio.create_task(engine.generate([4], SamplingParams(max_new_tokens=400)))
            await until(lambda: len(d.running) == 2)
            await engine.abort_all()
            assert [o.finish_reason for o in await asyncio.gather(t1, t2)] == ["abort", "abort"]
        finally:
            await engine.close()
    try:
        run(go())
    finally:
        d.stop()


def test_concurrency_limit_per_server(model_dir):
    d = SGLangDouble(model_dir, weight_version="0", token_delay_s=0.005)
    d.start()

    async def go():
        engine = await started(SGLangConfig(urls=[d.url], max_concurrency=2))
        try:
            outs = await asyncio.gather(*(engine.generate([i + 1], SamplingParams(max_new_tokens=8)) for i in range(6)))
            assert all(len(o.token_ids) == 8 for o in outs)
            assert d.max_running == 2
        finally:
            await engine.close()
    try:
        run(go())
    finally:
        d.stop()


# ---------------------------------------------------------------------------------------------- weight push
def _assert_weights_equal(double, state):
    got = double.weights()
    assert set(got) == set(state)
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_tensor_push_order_buckets_weights_and_version(double, model_dir):
    state = learner_state(model_dir, 1)

    async def go():
        engine = await started(SGLangConfig(urls=[double.url], weight_sync="tensor", bucket_bytes=4096))
        try:
            await engine.update_weights(state, 5)
            out = await engine.generate([1, 2, 3], SamplingParams(max_new_tokens=5))
            assert out.weight_versions == [5] * 5 and await engine.weight_version() == 5
            ref = reference_logprobs(double.model, [1, 2, 3], out.token_ids, 1.0)
            assert max(abs(a - b) for a, b in zip(ref, out.logprobs)) < 1e-4
        finally:
            await engine.close()
    run(go())
    _assert_weights_equal(double, state)
    updates = [b for name, b in double.call_bodies if name == "update_weights_from_tensor"]
    assert len(updates) > 1                                       # several buckets
    assert double.calls == (["pause_generation", "flush_cache", "begin_weight_update"]
                            + ["update_weights_from_tensor"] * len(updates)
                            + ["end_weight_update", "continue_generation"])
    assert [b["flush_cache"] for b in updates] == [False] * (len(updates) - 1) + [True]
    assert [b["weight_version"] for b in updates] == [None] * (len(updates) - 1) + ["5"]
    assert all(b["serialized_named_tensors"] == "<1 payloads>" for b in updates)   # one per TP rank


def test_flush_is_retried_while_busy(double, model_dir):
    async def go():
        engine = await started(SGLangConfig(urls=[double.url], weight_sync="tensor", flush_retry_interval_s=0.01))
        try:
            double.answer_flush_busy(3)
            await engine.update_weights(learner_state(model_dir, 2), 1)
        finally:
            await engine.close()
    run(go())
    assert double.calls == ["pause_generation"] + ["flush_cache"] * 4 + [
        "begin_weight_update", "update_weights_from_tensor", "end_weight_update", "continue_generation"]


def test_failed_push_keeps_generation_paused_until_a_push_succeeds(double, model_dir):
    state = learner_state(model_dir, 3)

    async def go():
        engine = await started(SGLangConfig(urls=[double.url], weight_sync="tensor", flush_timeout_s=0.2,
                                            flush_retry_interval_s=0.02))
        try:
            double.answer_flush_busy(10_000)
            with pytest.raises(WeightSyncError, match=r"kept refusing /flush_cache(.|\n)*stays paused"):
                await engine.update_weights(state, 1)
            assert double.is_pause
            bad = dict(state, **{"not.a.weight": torch.zeros(1)})
            double.answer_flush_busy(0)
            with pytest.raises(WeightSyncError, match="unknown parameter name"):
                await engine.update_weights(bad, 1)
            assert double.is_pause and not double.session_open     # the session was closed, generation not resumed
            await engine.update_weights(state, 2)
            assert not double.is_pause
            assert (await engine.generate([1], SamplingParams(max_new_tokens=2))).weight_versions == [2, 2]
        finally:
            await engine.close()
    run(go())


def test_partial_rollout_tokens_carry_the_version_that_sampled_them(model_dir):
    d = SGLangDouble(model_dir, weight_version="0", token_delay_s=0.01)
    d.start()
    state = learner_state(model_dir, 4)

    async def go():
        engine = await started(SGLangConfig(urls=[d.url], weight_sync="tensor"))   # pause_mode retract
        try:
            task = asyncio.create_task(engine.generate([2, 3], SamplingParams(max_new_tokens=60)))
            await until(tokens_out(d, 3))
            await engine.update_weights(state, 7)
            out = await task
            assert out.finish_reason == "length" and len(out.token_ids) == 60
            k = out.weight_versions.index(7)
            assert 0 < k and out.weight_versions == [0] * k + [7] * (60 - k)
            ref = reference_logprobs(d.model, [2, 3], out.token_ids, 1.0)   # the new weights sampled the tail
            assert max(abs(a - b) for a, b in zip(ref[k:], out.logprobs[k:])) < 1e-4
        finally:
            await engine.close()
    try:
        run(go())
    finally:
        d.stop()


def test_abort_pause_mode_returns_requests_in_flight(model_dir):
    d = SGLangDouble(model_dir, weight_version="0", token_delay_s=0.01)
    d.start()

    async def go():
        engine = await started(SGLangConfig(urls=[d.url], weight_sync="tensor", pause_mode="abort"))
        try:
            task = asyncio.create_task(engine.generate([2, 3], SamplingParams(max_new_tokens=300)))
            await until(tokens_out(d, 3))
            await engine.update_weights(learner_state(model_dir, 5), 1)
            out = await task
            assert out.finish_reason == "abort" and 0 < len(out.token_ids) < 300
            assert set(out.weight_versions) == {0}
        finally:
            await engine.close()
    try:
        run(go())
    finally:
        d.stop()


def test_disk_push_writes_a_checkpoint_the_server_loads(double, model_dir, tmp_path):
    async def go():
        engine = await started(SGLangConfig(urls=[double.url], model_path=str(model_dir), weight_sync="disk",
                                            disk_dir=str(tmp_path / "pushes"), keep_checkpoints=2))
        try:
            for version in (1, 2, 3):
                state = learner_state(model_dir, 10 + version)
                await engine.update_weights(state, version)
            assert (await engine.generate([1], SamplingParams(max_new_tokens=3))).weight_versions == [3, 3, 3]
            return state
        finally:
            await engine.close()
    state = run(go())
    _assert_weights_equal(double, state)
    assert sorted(p.name for p in (tmp_path / "pushes").iterdir()) == ["weights_v2", "weights_v3"]
    assert double.calls[:4] == ["pause_generation", "flush_cache", "update_weights_from_disk", "continue_generation"]
    (_, body), = [c for c in double.call_bodies if c[0] == "update_weights_from_disk"][-1:]
    assert body["model_path"] == str(tmp_path / "pushes" / "weights_v3") and body["weight_version"] == "3"


# ---------------------------------------------------------------------------------------------- router
def test_router_carries_generation_and_control_goes_to_each_server(model_dir):
    workers = [SGLangDouble(model_dir, weight_version="0") for _ in range(2)]
    for w in workers:
        w.start()
    router = RouterDouble([w.url for w in workers])
    router.start()

    async def go():
        engine = await started(SGLangConfig(urls=[w.url for w in workers], num_engines=2, router_url=router.url,
                                            weight_sync="tensor"))
        try:
            outs = await asyncio.gather(*(engine.generate([1, 2], SamplingParams(max_new_tokens=3)) for _ in range(4)))
            assert all(o.weight_versions == [0, 0, 0] for o in outs)
            await engine.update_weights(learner_state(model_dir, 6), 9)
            out = await engine.generate([1, 2], SamplingParams(max_new_tokens=3))
            assert out.weight_versions == [9, 9, 9]
        finally:
            await engine.close()
    try:
        run(go())
        assert sum(router.forwarded.values()) == 5 and all(n >= 2 for n in router.forwarded.values())
        assert all(w.calls[-1] == "continue_generation" for w in workers)
    finally:
        router.stop()
        for w in workers:
            w.stop()


def test_colocated_memory_release_and_the_push_that_resumes_it(model_dir):
    """Colocated training: the servers give their memory back between rollouts
    (/release_memory_occupation, idle only); generating on released memory is refused; a push takes
    the weights' memory back first, loads, and only then the KV cache (slime's order)."""
    double = SGLangDouble(model_dir, weight_version="0", enable_memory_saver=True, token_delay_s=0.02)
    double.start()
    state = learner_state(model_dir, 7)

    async def go():
        engine = await started(SGLangConfig(urls=[double.url], weight_sync="tensor", memory_saver=True))
        try:
            busy = asyncio.create_task(engine.generate([1, 2], SamplingParams(max_new_tokens=40)))
            await until(tokens_out(double, 1))
            with pytest.raises(SGLangError, match="in flight"):
                await engine.release_memory()
            async with engine._http().post(double.url + "/release_memory_occupation", json={}) as resp:
                assert resp.status == 400 and "idle" in await resp.text()   # the server refuses too
            await busy
            await engine.release_memory()
            assert double.released == {"weights", "kv_cache", "cuda_graph"}
            with pytest.raises(SGLangError, match="released"):
                await engine.generate([1, 2], SamplingParams(max_new_tokens=3))
            double.calls.clear()
            await engine.update_weights(state, 3)
            assert double.released == set() and engine.released == set()
            out = await engine.generate([1, 2, 3], SamplingParams(max_new_tokens=4))
            assert out.weight_versions == [3] * 4
            await engine.release_memory(["kv_cache"])
            await engine.resume_memory()
            assert double.released == set()
        finally:
            await engine.close()
    try:
        run(go())
        _assert_weights_equal(double, state)
    finally:
        double.stop()
    push = double.calls[:double.calls.index("continue_generation") + 2]
    assert push == ["resume_memory_occupation", "pause_generation", "flush_cache", "begin_weight_update",
                    "update_weights_from_tensor", "end_weight_update", "continue_generation",
                    "resume_memory_occupation"]
    resumes = [b["tags"] for name, b in double.call_bodies if name == "resume_memory_occupation"]
    assert resumes[0] == ["weights"] and sorted(resumes[1]) == ["cuda_graph", "kv_cache"]


def test_launch_commands():
    cfg = SGLangConfig(model_path="/ckpt", tp_size=2, initial_version=4, launch_command=["sglang-x"],
                       server_args={"mem_fraction_static": 0.7, "--enable-metrics": True, "disable-cuda-graph": False,
                                    "cuda-graph-bs": [1, 2], "chunked_prefill_size": None},
                       router_command=["router-x"], router_args={"policy": "cache_aware"})
    assert server_command(cfg, 31000) == [
        "sglang-x", "--model-path", "/ckpt", "--host", "127.0.0.1", "--port", "31000", "--tp-size", "2",
        "--weight-version", "4", "--mem-fraction-static", "0.7", "--enable-metrics", "--cuda-graph-bs", "1", "2"]
    assert router_command(cfg, ["http://a:1", "http://b:2"], 32000) == [
        "router-x", "--worker-urls", "http://a:1", "http://b:2", "--host", "127.0.0.1", "--port", "32000",
        "--policy", "cache_aware"]
    assert flag_args({"x_y": 1}) == ["--x-y", "1"]
    saver = SGLangConfig(model_path="/ckpt", launch_command=["sglang-x"], memory_saver=True)
    assert "--enable-memory-saver" in server_command(saver, 31000)
    with pytest.raises(ValueError, match="memory_saver"):
        SGLangConfig(server_args={"enable_memory_saver": True})


# ---------------------------------------------------------------------------------------------- errors
def test_version_mismatch_is_a_clear_error(model_dir):
    for reported in ("0.4.10", "0.6.1", "not-a-version"):
        d = SGLangDouble(model_dir, weight_version="0", sglang_version=reported)
        d.start()
        try:
            with pytest.raises(SGLangVersionError, match=rf"{d.url} runs SGLang '{reported}'.*supports <0.6,>=0.5.21"):
                run(started(SGLangConfig(urls=[d.url])))
        finally:
            d.stop()


def test_non_integer_weight_version_is_a_clear_error(model_dir):
    d = SGLangDouble(model_dir)               # launched without --weight-version: "default"
    d.start()
    try:
        with pytest.raises(SGLangRequestError, match=rf"{d.url} reports weight version 'default'.*--weight-version"):
            run(started(SGLangConfig(urls=[d.url])))
    finally:
        d.stop()


def test_unreachable_server_is_named_after_the_timeout():
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    t0 = time.monotonic()
    with pytest.raises(SGLangUnreachableError, match=rf"{url} did not answer GET /health_generate with 200 within 1s"):
        run(started(SGLangConfig(urls=[url], startup_timeout_s=1.0, poll_interval_s=0.1)))
    assert time.monotonic() - t0 < 10


def test_dead_server_gives_a_clear_error_then_recovers_after_restart(model_dir):
    d = SGLangDouble(model_dir, weight_version="0", token_delay_s=0.01)
    d.start()

    async def go():
        engine = await started(SGLangConfig(urls=[d.url], request_timeout_s=10))
        try:
            assert len((await engine.generate([1], SamplingParams(max_new_tokens=2))).token_ids) == 2
            task = asyncio.create_task(engine.generate([1], SamplingParams(max_new_tokens=500)))
            await until(tokens_out(d, 2))
            await asyncio.to_thread(d.stop)                 # dies mid-request
            with pytest.raises(SGLangUnreachableError, match=rf"SGLang server {d.url} is unreachable"):
                await task
            with pytest.raises(SGLangUnreachableError, match=rf"SGLang server {d.url} is unreachable"):
                await engine.generate([1], SamplingParams(max_new_tokens=2))
            await asyncio.to_thread(d.start)                # restarted (by whoever supervises it)
            out = await engine.generate([1], SamplingParams(max_new_tokens=2))
            assert out.finish_reason == "length" and out.weight_versions == [0, 0]
        finally:
            await engine.close()
    try:
        run(go())
    finally:
        d.stop()


def test_config_is_typed_and_checked():
    typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SGLangConfig),
                                                {"model_path": "/m", "server_args": {"mem-fraction-static": 0.8}}))
    assert isinstance(typed, SGLangConfig) and typed.server_args == {"mem-fraction-static": 0.8}
    with pytest.raises(ValueError, match="weight_sync must be one of"):
        SGLangConfig(model_path="/m", weight_sync="nccl")
    with pytest.raises(ValueError, match=r"server_args\['port'\] is set by the engine; use SGLangConfig.ports"):
        SGLangConfig(model_path="/m", server_args={"port": 1})
    with pytest.raises(ValueError, match="disk_dir"):
        SGLangConfig(model_path="/m", weight_sync="disk")
    with pytest.raises(ValueError, match="urls lists 1 servers but num_engines is 2"):
        SGLangConfig(urls=["http://a:1"], num_engines=2)
    assert SGLangConfig().weight_sync == "distributed"          # the defaults construct (schema-friendly)
    with pytest.raises(ValueError, match="model_path is required"):
        run(SGLangEngine(SGLangConfig()).start())
