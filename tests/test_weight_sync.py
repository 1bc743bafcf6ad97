"""Weight-sync building blocks: buckets (every tensor once, size bound, oversize alone, order kept),
manifests in SGLang's form, the tensor-mode payload encoding, and the disk checkpoint."""

import base64
import io
import json
import pickle

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from rollout.sglang_double import safe_unpickle
from rollout.weight_sync import (
    Manifest,
    dtype_from_name,
    dtype_name,
    make_buckets,
    save_checkpoint,
    serialize_named_tensors,
    shared_tensor_duplicates,
    tensor_nbytes,
)


def _state(sizes, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.randn(n, generator=g).to(dtype) for i, n in enumerate(sizes)}


@pytest.mark.parametrize("bucket_bytes", [1, 16, 40, 64, 100, 10_000])
def test_every_tensor_in_exactly_one_bucket_within_the_size(bucket_bytes):
    state = _state([3, 10, 1, 7, 25, 2, 2, 2, 9])   # float32: 12, 40, 4, 28, 100, 8, 8, 8, 36 bytes
    buckets = make_buckets(state, bucket_bytes)
    names = [n for b in buckets for n in b.names]
    assert names == list(state)                      # each exactly once, in the state's order
    for b in buckets:
        assert b.nbytes == sum(tensor_nbytes(t) for t in b.tensors)
        assert b.nbytes <= bucket_bytes or len(b.names) == 1   # only a lone tensor may exceed the size
    for prev, nxt in zip(buckets, buckets[1:]):      # greedy: the next tensor did not fit
        assert prev.nbytes + tensor_nbytes(nxt.tensors[0]) > bucket_bytes
    for b in buckets:
        for name, t in zip(b.names, b.tensors):
            assert torch.equal(t, state[name])


def test_oversize_tensor_travels_alone():
    state = _state([2, 100, 2])
    buckets = make_buckets(state, 64)
    assert [b.names for b in buckets] == [["layer0.weight"], ["layer1.weight"], ["layer2.weight"]]
    assert buckets[1].nbytes == 400 > 64


def test_manifest_matches_tensors_in_sglang_form():
    state = {"a": torch.zeros(2, 3, dtype=torch.bfloat16), "b": torch.zeros(4, dtype=torch.float16),
             "c": torch.zeros((), dtype=torch.float32), "d": torch.zeros(1, 2, 3, dtype=torch.int64)}
    (bucket,) = make_buckets(state, 1 << 20)
    m = bucket.manifest
    assert m == Manifest(names=["a", "b", "c", "d"], dtypes=["bfloat16", "float16", "float32", "int64"],
                         shapes=[[2, 3], [4], [], [1, 2, 3]])
    req = m.as_request()
    assert json.loads(json.dumps(req)) == req        # JSON-ready, as /update_weights_from_distributed takes it
    for name, dt, shape in zip(req["names"], req["dtypes"], req["shapes"]):
        assert getattr(torch, dt) == state[name].dtype and list(state[name].shape) == shape
        assert dtype_from_name(dt) == state[name].dtype and dtype_name(state[name].dtype) == dt


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="bucket_bytes"):
        make_buckets(_state([1]), 0)
    with pytest.raises(TypeError, match="'x' is a list"):
        make_buckets({"x": [1, 2]}, 10)
    with pytest.raises(ValueError, match="'nonsense' is not a torch dtype"):
        dtype_from_name("nonsense")


def test_buckets_are_contiguous_detached_views():
    w = torch.randn(4, 6, requires_grad=True)
    (bucket,) = make_buckets({"w": w.t()}, 1 << 20)
    assert bucket.tensors[0].is_contiguous() and not bucket.tensors[0].requires_grad
    assert torch.equal(bucket.tensors[0], w.t().detach())


def test_tensor_payload_is_base64_forkingpickler_of_named_tensors():
    state = _state([5, 3], dtype=torch.bfloat16)
    payload = serialize_named_tensors(state.items())
    raw = base64.b64decode(payload, validate=True)
    assert raw[0] == 0x80 and raw[1] <= pickle.HIGHEST_PROTOCOL   # SGLang's _looks_like_pickle_payload
    named = safe_unpickle(raw)                      # SGLang's allow-list accepts it (same process: fd sharing)
    assert [n for n, _ in named] == list(state)
    for (n, t) in named:
        assert t.dtype == torch.bfloat16 and torch.equal(t, state[n])
    with pytest.raises(RuntimeError, match="Blocked unsafe global"):
        safe_unpickle(pickle.dumps(io.BytesIO))


@pytest.fixture()
def tied_model_dir(tmp_path):
    cfg = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(tmp_path / "base"))
    (tmp_path / "base" / "tokenizer_config.json").write_text("{}")
    return tmp_path / "base"


def test_checkpoint_saves_shared_tensors_once_and_loads_back(tied_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(str(tied_model_dir))
    state = {k: v + 0.5 if k != "lm_head.weight" else v for k, v in model.state_dict().items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]          # tied: one storage, two names
    assert shared_tensor_duplicates(state) == ["lm_head.weight"]
    out = save_checkpoint(state, tied_model_dir, tmp_path / "push" / "v3")
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()
    from safetensors.torch import load_file
    saved = {}
    for f in out.glob("*.safetensors"):
        saved.update(load_file(str(f)))
    assert "lm_head.weight" not in saved and set(saved) == set(state) - {"lm_head.weight"}
    reloaded = AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
    assert all(torch.equal(reloaded[k], state[k]) for k in state)


def test_checkpoint_needs_a_base_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        save_checkpoint({"w": torch.zeros(1)}, tmp_path / "missing", tmp_path / "out")
