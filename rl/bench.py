"""`horizonrl-bench`: speed targets measured, one JSON object (or list) per command.

    horizonrl-bench gae          vectorised skip-observation GAE vs a Python loop (64 x 4096)
    horizonrl-bench antihack     `horizonrl-audit scan --rules-only` throughput on 10,000 calls
    horizonrl-bench sandbox      local sandbox tool-call latency, start time, sandboxes alive at once
    horizonrl-bench engine       hf engine sampling throughput (tokens/s) on the default policy shape
    horizonrl-bench learner      DeepSpeed policy training throughput (tokens/s)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def _tiny_model_dir(out: Path, hidden: int, layers: int, vocab: int) -> Path:
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.6875), num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, pad_token_id=0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(out))
    return out


def bench_engine(batch: int, prompt_len: int, new_tokens: int, hidden: int, layers: int, threads: int) -> dict:
    from rollout.engine import SamplingParams
    from rollout.hf_engine import HFGenerator

    with tempfile.TemporaryDirectory() as tmp:
        gen = HFGenerator(_tiny_model_dir(Path(tmp), hidden, layers, 2048), pad_token_id=0, seed=0, num_threads=threads)
        prompts = [list(range(5, 5 + prompt_len)) for _ in range(batch)]
        params = SamplingParams(max_new_tokens=new_tokens)
        gen.generate(prompts[:2], SamplingParams(max_new_tokens=4))  # warm-up
        t0 = time.perf_counter()
        outs = gen.generate(prompts, params)
        seconds = time.perf_counter() - t0
    tokens = sum(len(o.token_ids) for o in outs)
    return {"batch": batch, "prompt_len": prompt_len, "new_tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 1), "hidden": hidden, "layers": layers, "threads": threads}


def bench_learner(batch: int, seq_len: int, hidden: int, layers: int, steps: int, threads: int) -> dict:
    from rl.batch import SampleBatch
    from rl.config import AlgoConfig, DeepSpeedConfig
    from rl.learner import PolicyLearner, init_distributed

    torch.set_num_threads(threads)
    init_distributed(DeepSpeedConfig(master_port=29671))
    with tempfile.TemporaryDirectory() as tmp:
        learner = PolicyLearner(_tiny_model_dir(Path(tmp), hidden, layers, 2048), 1e-4, AlgoConfig(), DeepSpeedConfig(), 1.0)
        ids = torch.randint(1, 2048, (batch, seq_len))
        ones = torch.ones(batch, seq_len)
        sample = SampleBatch(ids, ones.long(), ones, -ones * 7.6, torch.ones(batch), torch.arange(batch),
                             torch.zeros(batch, dtype=torch.long), ones.sum(-1), torch.zeros(batch, dtype=torch.long))
        learner.sft_step(sample)  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            learner.sft_step(sample)
        seconds = time.perf_counter() - t0
    return {"batch": batch, "seq_len": seq_len, "steps": steps, "seconds": round(seconds, 3),
            "train_tokens_per_s": round(batch * seq_len * steps / seconds, 1), "hidden": hidden, "layers": layers,
            "threads": threads}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="horizonrl-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    g = sub.add_parser("gae")
    g.add_argument("--batch", type=int, default=64)
    g.add_argument("--seq-len", type=int, default=4096)
    g.add_argument("--threads", type=int, default=1)
    a = sub.add_parser("antihack")
    a.add_argument("--calls", type=int, default=10_000)
    sb = sub.add_parser("sandbox")
    sb.add_argument("--max-live", type=int, default=512)
    for name in ("engine", "learner"):
        p = sub.add_parser(name)
        p.add_argument("--batch", type=int, default=32)
        p.add_argument("--hidden", type=int, default=256)
        p.add_argument("--layers", type=int, default=4)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--seq-len", type=int, default=220)
        p.add_argument("--new-tokens", type=int, default=64)
        p.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    if args.what == "gae":
        from critic.bench import main as gae_main

        gae_main(["--batch", str(args.batch), "--seq-len", str(args.seq_len), "--threads", str(args.threads)])
        return
    if args.what == "antihack":
        from antihack.bench import bench_scan

        result = bench_scan(args.calls)
    elif args.what == "sandbox":
        from envs.bench import bench_sandbox

        result = bench_sandbox(max_live=args.max_live)
    elif args.what == "engine":
        result = bench_engine(args.batch, args.seq_len, args.new_tokens, args.hidden, args.layers, args.threads)
    else:
        result = bench_learner(args.batch, args.seq_len, args.hidden, args.layers, args.steps, args.threads)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
