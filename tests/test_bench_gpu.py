"""`horizonrl-bench gpu` and `scripts/gpu_check.sh` refuse cleanly where there is no GPU; the pieces
the GPU bench drives (the hf engine's device and dtype, the state-size count) work on the CPU."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from rl.bench import QWEN2_05B_DIMS, NoGPUError, main, require_cuda, state_nbytes
from rollout.engine import SamplingParams
from rollout.hf_engine import HFGenerator, load_causal_lm
from tiny_models import save_tiny_qwen2

ROOT = Path(__file__).resolve().parents[1]
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the refusal does not apply")


@no_gpu
def test_bench_gpu_refuses_without_a_gpu(capsys):
    with pytest.raises(NoGPUError, match="needs a CUDA GPU"):
        require_cuda()
    with pytest.raises(SystemExit) as exit_info:
        main(["gpu", "--layers", "1"])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""                      # no JSON object: nothing was measured
    assert "needs a CUDA GPU" in err and "torch.cuda.is_available() is False" in err


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="nvidia-smi is present")
def test_gpu_check_script_refuses_without_a_gpu():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "no NVIDIA GPU" in proc.stderr and proc.stdout == ""


def test_bench_dims_are_qwen2_05b():
    model = AutoModelForCausalLM.from_config(Qwen2Config(**(QWEN2_05B_DIMS | {"num_hidden_layers": 1})),
                                             dtype=torch.bfloat16)
    per_layer = sum(p.numel() for p in model.model.layers[0].parameters())
    # 24 layers + the tied embedding (+ final norm) = Qwen2.5-0.5B's 494,032,768 parameters
    assert 24 * per_layer + 151936 * 896 + 896 == 494_032_768
    assert state_nbytes(model.state_dict()) == 2 * sum(t.numel() for t in model.state_dict().values())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_qwen2(tmp_path_factory.mktemp("tiny_model"), 64, max_positions=256)


def test_engine_dtype_and_device(model_dir):
    gen = HFGenerator(model_dir, pad_token_id=0, seed=0, num_threads=1, device="cpu", dtype="bfloat16")
    assert next(gen.model.parameters()).dtype == torch.bfloat16 and gen.device == torch.device("cpu")
    outs = gen.generate([[5, 6, 7], [9] * 5], SamplingParams(max_new_tokens=6))
    assert [len(o.token_ids) for o in outs] == [6, 6]
    assert all(lp <= 0.0 for o in outs for lp in o.logprobs)
    # a fp32 learner's state dict loads into a bf16 engine (cast on copy)
    fp32 = load_causal_lm(model_dir).state_dict()
    gen.load_state(fp32, 3)
    assert gen.version == 3
    with pytest.raises(ValueError, match="engine dtype must be one of"):
        load_causal_lm(model_dir, "int8")
