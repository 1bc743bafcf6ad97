"""The hf engine: KV-cache sampling with left padding returns the model's own log-probs;
stop tokens end a sequence; weight updates change outputs and versions; batching in Ray."""

import asyncio

import pytest
import ray
import torch

from rollout.engine import SamplingParams
from rollout.hf_engine import HFEngineActor, HFGenerator, filter_logits, load_causal_lm
from tiny_models import save_tiny_qwen2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_qwen2(tmp_path_factory.mktemp("tiny_model"), 64, max_positions=256)


def full_forward_logprobs(model, prompt, tokens, temperature=1.0):
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0] / temperature, -1)
    return [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(tokens)]


def test_batched_kv_cache_logprobs_match_full_forward(model_dir):
    gen = HFGenerator(model_dir, pad_token_id=0, seed=1, num_threads=1)
    prompts = [[5, 6, 7], list(range(3, 30)), [9] * 11]
    params = SamplingParams(temperature=0.7, max_new_tokens=12)
    outs = gen.generate(prompts, params)
    for prompt, out in zip(prompts, outs):
        assert len(out.token_ids) == len(out.logprobs) == len(out.weight_versions) == 12
        assert out.finish_reason == "length"
        ref = full_forward_logprobs(gen.model, prompt, out.token_ids, temperature=0.7)
        assert max(abs(a - b) for a, b in zip(ref, out.logprobs)) < 1e-4


def test_stop_token_ends_the_sequence(model_dir):
    gen = HFGenerator(model_dir, pad_token_id=0, seed=2, num_threads=1)
    stop = tuple(range(1, 64, 2))  # half the vocabulary stops: every sequence stops quickly
    outs = gen.generate([[4, 4, 4]] * 8, SamplingParams(max_new_tokens=50, stop_token_ids=stop))
    for out in outs:
        assert out.finish_reason == "stop" and out.token_ids[-1] in stop
        assert all(t not in stop for t in out.token_ids[:-1])


def test_top_k_filter_keeps_k_tokens():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    kept = torch.isfinite(filter_logits(logits, 1.0, top_k=2, top_p=1.0))
    assert kept.tolist() == [[False, False, True, True]]
    kept = torch.isfinite(filter_logits(logits, 1.0, top_k=0, top_p=0.5))
    assert kept.tolist() == [[False, False, False, True]]


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_causal_lm(tmp_path / "nope")


def test_engine_actor_batches_and_updates_weights(model_dir):
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        engine = ray.remote(HFEngineActor).options(max_concurrency=100).remote(str(model_dir), 0, 0, 1, 16, 0.01)
        params = SamplingParams(max_new_tokens=4)
        outs = ray.get([engine.generate.remote([3, 4, 5], params) for _ in range(10)])
        assert all(o.weight_versions == [0] * 4 for o in outs)
        model = load_causal_lm(model_dir)
        state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
        ray.get(engine.update_weights.remote(state, 7))
        out = ray.get(engine.generate.remote([3, 4, 5], params))
        assert out.weight_versions == [7] * 4
        assert ray.get(engine.weight_version.remote()) == 7
        # all-zero weights give uniform log-probs: proof that the pushed weights are the ones used
        assert all(abs(lp + torch.log(torch.tensor(64.0)).item()) < 1e-4 for lp in out.logprobs)
        bad = {"nonexistent.weight": torch.zeros(1)}
        with pytest.raises(ray.exceptions.RayTaskError, match="does not match"):
            ray.get(engine.update_weights.remote(bad, 8))
        # colocated training: released between rollouts, refused to generate, back with the next push
        ray.get(engine.release_memory.remote())
        with pytest.raises(ray.exceptions.RayTaskError, match="released"):
            ray.get(engine.generate.remote([3, 4, 5], params))
        ray.get(engine.update_weights.remote(model.state_dict(), 9))
        assert ray.get(engine.generate.remote([3, 4, 5], params)).weight_versions == [9] * 4
    finally:
        ray.shutdown()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
def test_release_memory_gives_the_gpu_back_and_resume_restores_the_model(model_dir):
    gen = HFGenerator(model_dir, pad_token_id=0, seed=3, num_threads=1, device="cuda")
    params = SamplingParams(temperature=1e-4, max_new_tokens=6)
    before = gen.generate([[3, 4, 5]], params)[0].token_ids
    held = torch.cuda.memory_allocated()
    gen.release_memory()
    assert torch.cuda.memory_allocated() < held
    gen.resume_memory()
    assert gen.generate([[3, 4, 5]], params)[0].token_ids == before
