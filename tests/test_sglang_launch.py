"""Launched servers: the engine starts ``python -m rollout.sglang_double`` (the SGLang 0.5.23 test
double, taking SGLang's launch flags) as it would start ``python -m sglang.launch_server``.

* a wrong flag: the process exits at once and the error carries its exit code and stderr tail;
* the distributed weight push: this process is rank 0 of a gloo group the server joins, each
  bucket's manifest goes over HTTP while its tensors are broadcast; afterwards the server's
  weights equal the learner's bit for bit and new tokens carry the version;
* a push the server refuses (an unknown weight name) fails clearly and the next one (in a fresh
  group) succeeds;
* the server dies (SIGKILL): a clear error naming the URL and the exit code; ``restart_server``
  brings it back (at its launch version) and the next push rebuilds the group.
"""

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from rollout.engine import SamplingParams
from rollout.sglang_double import tensor_digest
from rollout.sglang_engine import (
    SGLangConfig,
    SGLangEngine,
    SGLangLaunchError,
    SGLangUnreachableError,
    WeightSyncError,
)

REPO = Path(__file__).resolve().parents[1]
DOUBLE = [sys.executable, "-m", "rollout.sglang_double"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_launch_model")
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(path))
    return path


@pytest.fixture(autouse=True)
def importable_double(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))   # the launched process runs `-m rollout.sglang_double`


def run(coro, timeout=150):   # normally ~10 s; generous for a loaded 2-core machine
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_wrong_flag_reports_exit_code_and_stderr_tail(model_dir, tmp_path):
    cfg = SGLangConfig(model_path=str(model_dir), launch_command=DOUBLE, server_args={"bogus-flag": 3},
                       log_dir=str(tmp_path), startup_timeout_s=60, poll_interval_s=0.1)
    engine = SGLangEngine(cfg)
    with pytest.raises(SGLangLaunchError, match=r"server 0 \(http://127\.0\.0\.1:\d+\) exited with code 2 while "
                                                r"starting(.|\n)*--bogus-flag 3(.|\n)*unrecognized arguments: --bogus-flag 3"):
        run(engine.start())


async def _get(url):
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.json()


def _learner_state(model_dir, seed):
    state = AutoModelForCausalLM.from_pretrained(str(model_dir)).state_dict()
    torch.manual_seed(seed)
    state = {k: torch.randn_like(v) for k, v in state.items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state


def test_distributed_push_then_death_and_restart(model_dir, tmp_path):
    cfg = SGLangConfig(model_path=str(model_dir), launch_command=DOUBLE, server_args={"random-seed": 3},
                       weight_sync="distributed", group_backend="gloo", group_name="horizonrl_test_dist",
                       bucket_bytes=16 * 1024, log_dir=str(tmp_path), startup_timeout_s=60, poll_interval_s=0.1,
                       group_timeout_s=30, control_timeout_s=30, request_timeout_s=30)

    async def go():
        engine = SGLangEngine(cfg)
        await engine.start()
        try:
            url = engine.server_urls[0]
            params = SamplingParams(max_new_tokens=4)
            assert (await engine.generate([1, 2], params)).weight_versions == [0] * 4

            state = _learner_state(model_dir, 1)
            await engine.update_weights(state, 1)
            digest = await _get(url + "/_double/weights_digest")
            assert digest == {k: tensor_digest(v) for k, v in state.items()}
            calls = await _get(url + "/_double/calls")
            n = calls.count("update_weights_from_distributed")
            assert n > 1 and calls == ["init_weights_update_group", "pause_generation", "flush_cache",
                                       "begin_weight_update"] + ["update_weights_from_distributed"] * n + [
                                       "end_weight_update", "continue_generation"]
            assert (await engine.generate([1, 2], params)).weight_versions == [1] * 4

            bad = dict(_learner_state(model_dir, 5), **{"not.a.weight": torch.ones(3)})
            with pytest.raises(WeightSyncError, match="unknown parameter name"):   # received, then refused
                await engine.update_weights(bad, 9)
            await engine.update_weights(state, 1)                                  # a fresh group, same weights
            assert (await engine.generate([1, 2], params)).weight_versions == [1] * 4

            proc = engine.servers[0].process.popen
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            with pytest.raises(SGLangUnreachableError, match=rf"SGLang server {url} is unreachable(.|\n)*"
                                                             r"exited with code -9"):
                await engine.generate([1, 2], params)

            await engine.restart_server(0)
            assert engine.server_urls == [url]
            assert (await engine.generate([1, 2], params)).weight_versions == [0] * 4   # launch weights again
            assert await engine.weight_version() == 0
            state = _learner_state(model_dir, 2)
            await engine.update_weights(state, 2)                                      # group rebuilt
            assert await _get(url + "/_double/weights_digest") == {k: tensor_digest(v) for k, v in state.items()}
            assert (await engine.generate([1, 2], params)).weight_versions == [2] * 4
        finally:
            await engine.close()
        assert proc.poll() is not None and engine.servers[0].process.exit_code() is not None

    run(go())
