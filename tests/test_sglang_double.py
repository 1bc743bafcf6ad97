"""The test double answers in SGLang 0.5.23's shapes (so the client tests mean something): the
/generate body and meta_info, contract and validation errors, the weight-update session rule,
flush refusals while requests run, version spans, and `sglang serve`'s error on an unknown flag."""

import threading
import time

import pytest
import requests
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from rollout.sglang_double import SGLangDouble, compute_weight_version_spans, parse_args


@pytest.fixture(scope="module")
def double(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_double_model")
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(path))
    d = SGLangDouble(path, weight_version="3")
    d.start()
    yield d
    d.stop()


def post(d, path, body=None):
    return requests.post(d.url + path, json=body if body is not None else {}, timeout=10)


def test_generate_body_has_sglang_shape(double):
    r = post(double, "/generate", {"rid": "a1", "input_ids": [1, 2, 3], "return_logprob": True,
                                   "sampling_params": {"max_new_tokens": 4, "top_k": -1, "no_stop_trim": True}})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"output_ids", "meta_info"}           # no tokenizer: as with --skip-tokenizer-init
    meta = body["meta_info"]
    assert {"id", "finish_reason", "prompt_tokens", "weight_version", "num_retractions", "completion_tokens",
            "cached_tokens", "weight_versions", "output_token_logprobs", "input_token_logprobs"} <= set(meta)
    assert meta["id"] == "a1" and meta["prompt_tokens"] == 3 and meta["completion_tokens"] == 4
    assert meta["finish_reason"] == {"type": "length", "length": 4}
    assert [p[1] for p in meta["output_token_logprobs"]] == body["output_ids"]
    assert all(isinstance(p[0], float) and p[0] <= 0 and p[2] is None for p in meta["output_token_logprobs"])
    assert meta["weight_version"] == "3" and meta["weight_versions"] == [{"version": "3", "start": 0, "end": 4}]
    no_lp = post(double, "/generate", {"input_ids": [1], "sampling_params": {"max_new_tokens": 1}}).json()
    assert "output_token_logprobs" not in no_lp["meta_info"]


def test_generate_rejects_what_sglang_rejects(double):
    r = post(double, "/generate", {"input_ids": [1], "sampling_params": {"max_tokens": 3}})
    assert r.status_code == 400 and "unknown field" in r.json()["error"]          # api contract: a string
    r = post(double, "/generate", {"input_ids": [1], "sampling_params": {"top_k": 0}})
    assert r.status_code == 400 and r.json()["error"]["message"] == "top_k must be -1 (disable) or at least 1, got 0."


def test_updates_need_a_session_and_report_like_sglang(double):
    r = post(double, "/update_weights_from_distributed", {"names": ["x"], "dtypes": ["float32"], "shapes": [[1]]})
    assert r.status_code == 400 and r.json() == {"success": False, "message": "update_weights_from_distributed must "
                                                 "run between begin_weight_update() and end_weight_update()"}
    assert post(double, "/end_weight_update").json()["success"] is False
    assert post(double, "/init_weights_update_group", {"master_address": "x"}).status_code == 422
    assert requests.get(double.url + "/server_info", timeout=10).json()["version"] == "0.5.23"
    assert requests.get(double.url + "/get_server_info", timeout=10).json()["version"] == "0.5.23"


def test_flush_refused_while_requests_run_unless_retracted(double):
    double.token_delay_s = 0.01
    try:
        t = threading.Thread(target=post, args=(double, "/generate", {"input_ids": [1],
                                                                       "sampling_params": {"max_new_tokens": 200}}))
        t.start()
        deadline = time.monotonic() + 10
        while not double.running and time.monotonic() < deadline:
            time.sleep(0.005)
        r = post(double, "/flush_cache")
        assert r.status_code == 400 and r.text == "Flush cache failed.\n"
        assert post(double, "/pause_generation", {"mode": "retract"}).json()["status"] == "ok"
        assert post(double, "/flush_cache").status_code == 200
        post(double, "/continue_generation")
        post(double, "/abort_request", {"abort_all": True})
        t.join(timeout=10)
        assert not t.is_alive()
    finally:
        double.token_delay_s = 0.0


def test_version_spans_port():
    assert compute_weight_version_spans([("0", 3)], "1", 5) == [{"version": "0", "start": 0, "end": 3},
                                                                {"version": "1", "start": 3, "end": 5}]
    assert compute_weight_version_spans([("0", 3)], "1", 3) == [{"version": "0", "start": 0, "end": 3}]
    assert compute_weight_version_spans([], "1", 0) == [{"version": "1", "start": 0, "end": 0}]
    assert compute_weight_version_spans([("0", 2), ("1", 2)], "2", 4) == [{"version": "0", "start": 0, "end": 2},
                                                                          {"version": "2", "start": 2, "end": 4}]


def test_unknown_flag_fails_like_sglang_serve(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--model-path", "/m", "--no-such-flag"])
    assert exc.value.code == 2
    assert "sglang serve: error: unrecognized arguments: --no-such-flag" in capsys.readouterr().err
