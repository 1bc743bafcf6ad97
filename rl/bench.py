"""`horizonrl-bench`: speed targets measured, one JSON object (or list) per command.

    horizonrl-bench gae          vectorised skip-observation GAE vs a Python loop (64 x 4096)
    horizonrl-bench antihack     `horizonrl-audit scan --rules-only` throughput on 10,000 calls
    horizonrl-bench sandbox      local sandbox tool-call latency, start time, sandboxes alive at once
    horizonrl-bench engine       hf engine sampling throughput (tokens/s) on the default policy shape
    horizonrl-bench learner      DeepSpeed policy training throughput (tokens/s), padded vs packed micro-batches
    horizonrl-bench async        the same PPO steps with orchestrator=sync, then async: wall time, speedup
    horizonrl-bench gpu          on a CUDA GPU: hf engine generate tokens/s, learner PPO-step tokens/s and
                                 weight-push GB/s with a random-init Qwen2 of 0.5B-class dims (refuses
                                 without a GPU; scripts/gpu_check.sh runs it)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import json
import os
import tempfile
import time
from functools import partial
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


def bench_learner(batch: int, seq_len: int, min_seq_len: int, micro_batch_tokens: int, hidden: int, layers: int,
                  steps: int, threads: int) -> dict:
    """SFT steps on `batch` samples of lengths uniform in [min_seq_len, seq_len], first with padded
    micro-batches, then packed ones (``algo.pack_sequences``): tokens/s over the real tokens, and the
    token slots each computes (padding included)."""
    from rl.batch import SampleBatch, micro_batches
    from rl.config import AlgoConfig, DeepSpeedConfig
    from rl.learner import PolicyLearner, init_distributed

    torch.set_num_threads(threads)
    init_distributed(DeepSpeedConfig(master_port=29671))
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(min(min_seq_len, seq_len), seq_len + 1, (batch,), generator=g)
    attn = (torch.arange(seq_len)[None] < lengths[:, None]).long()
    ids = torch.randint(1, 2048, (batch, seq_len), generator=g) * attn
    act = attn.float()
    act[:, 0] = 0.0
    sample = SampleBatch(ids, attn, act, -act * 7.6, torch.ones(batch), torch.arange(batch),
                         torch.zeros(batch, dtype=torch.long), act.sum(-1), torch.zeros(batch, dtype=torch.long),
                         torch.arange(batch))
    real = int(lengths.sum())
    result = {"batch": batch, "seq_len": seq_len, "min_seq_len": min_seq_len, "micro_batch_tokens": micro_batch_tokens,
              "real_tokens": real, "steps": steps, "hidden": hidden, "layers": layers, "threads": threads}
    with tempfile.TemporaryDirectory() as tmp:
        model = _tiny_model_dir(Path(tmp), hidden, layers, 2048)
        for packed in (False, True):
            algo = AlgoConfig(micro_batch_tokens=micro_batch_tokens, pack_sequences=packed)
            learner = PolicyLearner(model, 1e-4, algo, DeepSpeedConfig(), 1.0)
            learner.sft_step(sample)  # warm-up
            t0 = time.perf_counter()
            for _ in range(steps):
                learner.sft_step(sample)
            seconds = time.perf_counter() - t0
            slots = real if packed else sum(len(m) * int(lengths[m].max()) for m in micro_batches(sample, micro_batch_tokens))
            result["packed" if packed else "padded"] = {
                "seconds": round(seconds, 3), "train_tokens_per_s": round(real * steps / seconds, 1),
                "computed_token_slots": slots, "padding_fraction": round(1 - real / slots, 4)}
    result["packed_speedup"] = round(result["padded"]["seconds"] / result["packed"]["seconds"], 3)
    return result


def _tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system, reaped children included) of `root` and all its descendants now
    (the Ray head, engine and rollout workers all descend from the bench process)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, (ppid, _) in stats.items() if ppid == parent and pid not in tree]
        tree.update(kids)
        frontier += kids
    return sum(stats[pid][1] for pid in tree if pid in stats) / os.sysconf("SC_CLK_TCK")


def with_test_latency(task, seconds: float):
    """`task` whose hidden test run takes `seconds` longer (a sleep at the top of each hidden test file).

    The built-in tests finish in milliseconds; a real repository's test suite spends seconds in
    setup, subprocesses and I/O while the CPU is idle. That wait is what the asynchronous
    orchestrator overlaps with the learner, so the bench measures it with tests that take time."""
    if seconds <= 0:
        return task
    slow = {name: f"import time\ntime.sleep({seconds!r})\n{text}" for name, text in task.hidden_tests.items()}
    return dataclasses.replace(task, hidden_tests=slow)


def bench_async(steps: int, episodes: int, buffer: int, max_staleness: int, hidden: int, layers: int,
                max_turns: int, max_new_tokens: int, demo_tasks: int, sft_steps: int, threads: int,
                test_latency_s: float, latency_dist: str) -> dict:
    """`steps` critic-PPO learner steps of `episodes` trajectories each, run with the sync source, then
    with the async one (same policy, same tasks, same real learner step, same pushes every step).

    The policy is the default architecture at the given size with a short SFT warm start on scripted
    demonstrations, so episodes make real tool calls in real sandboxes; each grading run of the
    hidden tests takes longer (:func:`with_test_latency`) by `test_latency_s` (`latency_dist="fixed"`)
    or by a per-task time drawn from an exponential distribution with that mean ("exponential"), so
    some episodes are stragglers, as in real suites. The engine and the learner
    get `threads` threads each (the learner runs in this process). Each mode gets a fresh Ray
    cluster and a fresh learner, warmed up by one untimed rollout + learner step; the timed part
    starts with an empty rollout pipeline and ends after the last learner step and weight push."""
    from antihack.guard import GuardConfig
    from envs.suite import builtin_suite
    from rl.async_rollout import AsyncConfig, AsyncRolloutSource, SyncRolloutSource, start_rollout_worker
    from rl.batch import collate, trainable
    from rl.config import (AlgoConfig, DeepSpeedConfig, EngineConfig, ModelConfig, RolloutConfig, SamplingConfig,
                           SFTConfig, TrainConfig)
    from rl.learner import CriticLearner, PolicyLearner, PPOLearner, init_distributed
    from rl.orchestrator import RolloutCluster, TaskSampler
    from rl.warm_start import build_default_policy, demo_trajectories, demonstrations, sft_warm_start
    from rollout.agent import AgentConfig
    from rollout.tokenizer import load_tokenizer
    from rollout.trajectory import Status

    import ray

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    algo = AlgoConfig(critic_warmup_steps=0)
    ds = DeepSpeedConfig()
    init_distributed(ds)
    cfg = TrainConfig(engine=EngineConfig(num_threads=threads), agent=AgentConfig(max_turns=max_turns),
                      sampling=SamplingConfig(max_new_tokens=max_new_tokens), algo=algo, antihack=GuardConfig(),
                      rollout=RolloutConfig(num_workers=2, max_concurrent_per_worker=max(buffer, episodes),
                                            episodes_per_step=episodes))
    if latency_dist not in ("fixed", "exponential"):
        raise ValueError(f"latency_dist must be 'fixed' or 'exponential', got {latency_dist!r}")
    rng = random.Random(0)

    def latency() -> float:
        if latency_dist == "fixed" or test_latency_s <= 0:
            return test_latency_s
        return round(rng.expovariate(1.0 / test_latency_s), 3)
    train_tasks = [with_test_latency(t, latency()) for t in builtin_suite(0) if t.split == "train"]
    with tempfile.TemporaryDirectory() as tmp:
        demos = demonstrations(train_tasks[:demo_tasks], cfg.env, threads=2)
        model = ModelConfig(hidden_size=hidden, intermediate_size=int(hidden * 2.6875), num_layers=layers)
        base = build_default_policy(model, demos, Path(tmp) / "base", 0)
        tokenizer = load_tokenizer(base)
        t0 = time.perf_counter()
        policy = sft_warm_start(base, demo_trajectories(demos, tokenizer, cfg.agent, cfg.env, max_new_tokens),
                                tokenizer, SFTConfig(steps=sft_steps, batch_size=16, lr=2e-3), algo, ds,
                                Path(tmp) / "sft", 0)
        sft_s = time.perf_counter() - t0

        def run(mode: str) -> dict:
            cluster = RolloutCluster(str(policy), tokenizer, cfg)
            learner = PPOLearner(PolicyLearner(policy, algo.policy_lr, algo, ds, 1.0), CriticLearner(policy, algo, ds),
                                 algo)
            sampler = TaskSampler(train_tasks, 0)
            start_worker = partial(start_rollout_worker, cluster.engine, str(policy), cfg)
            warm = SyncRolloutSource(cluster, TaskSampler(train_tasks, 1), start_worker, id_prefix="warm")
            learner.train_step(collate(trainable(warm.next_batch(4, 0).trajectories), tokenizer.pad_token_id))
            cluster.push_weights(learner.policy.state_dict(), 0)
            source = (SyncRolloutSource(cluster, sampler, start_worker) if mode == "sync" else
                      AsyncRolloutSource(cluster, sampler, AsyncConfig(buffer_size=buffer, max_staleness=max_staleness),
                                         start_worker))
            learner_s, push_s, waits, trajectories, metrics, staleness = 0.0, 0.0, [], [], {}, []
            cpu0, t0 = _tree_cpu_s(os.getpid()), time.perf_counter()
            for step in range(steps):
                batch = source.next_batch(episodes, learner_version=step)
                t1 = time.perf_counter()
                learner.train_step(collate(trainable(batch.trajectories), tokenizer.pad_token_id))
                t2 = time.perf_counter()
                if source.should_push(step + 1):
                    source.push_weights(learner.policy.state_dict(), step + 1)
                learner_s += t2 - t1
                push_s += time.perf_counter() - t2
                waits.append(batch.metrics["orchestrator/wait_s"])
                trajectories += batch.trajectories
                metrics = batch.metrics
                staleness.append(metrics["orchestrator/staleness_mean"])
            seconds, cpu_s = time.perf_counter() - t0, _tree_cpu_s(os.getpid()) - cpu0
            source.close()
            cluster.shutdown()
            n = len(trajectories)
            return {"seconds": seconds, "cpu_s": cpu_s, "rollout_wait_s": sum(waits), "learner_s": learner_s,
                    "push_s": push_s, "wait_per_step": [round(w, 2) for w in waits],
                    "dropped_stale": metrics["orchestrator/dropped_stale_total"] if mode == "async" else 0.0,
                    "staleness_mean": sum(staleness) / len(staleness),
                    "turns_mean": sum(t.num_turns for t in trajectories) / n,
                    "tool_calls_mean": sum(t.num_turns - t.parse_errors for t in trajectories) / n,
                    "action_tokens_mean": sum(t.num_action_tokens for t in trajectories) / n,
                    "submitted": sum(t.status == Status.SUBMITTED for t in trajectories) / n,
                    "env_errors": sum(t.status == Status.ENV_ERROR for t in trajectories) / n}

        load_before = os.getloadavg()[0]
        sync = run("sync")
        ray.shutdown()
        asyn = run("async")
        ray.shutdown()
    return {"steps": steps, "episodes_per_step": episodes, "sync_s": round(sync["seconds"], 2),
            "async_s": round(asyn["seconds"], 2), "speedup": round(sync["seconds"] / asyn["seconds"], 3),
            "dropped_stale": int(asyn["dropped_stale"]), "async_staleness_mean": round(asyn["staleness_mean"], 3),
            "sync_rollout_s": round(sync["rollout_wait_s"], 2), "sync_learner_s": round(sync["learner_s"], 2),
            "sync_push_s": round(sync["push_s"], 2), "async_rollout_wait_s": round(asyn["rollout_wait_s"], 2),
            "async_learner_s": round(asyn["learner_s"], 2), "async_push_s": round(asyn["push_s"], 2),
            "async_wait_per_step": asyn["wait_per_step"], "sync_cpu_s": round(sync["cpu_s"], 1),
            "async_cpu_s": round(asyn["cpu_s"], 1),
            "buffer_size": buffer, "max_staleness": max_staleness, "hidden": hidden, "layers": layers,
            "max_turns": max_turns, "max_new_tokens": max_new_tokens, "sft_steps": sft_steps,
            "test_latency_s": test_latency_s, "latency_dist": latency_dist, "sft_s": round(sft_s, 1),
            "engine_threads": threads, "learner_threads": threads, "cpus": os.cpu_count(),
            "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2),
            "episodes": {mode: {k: round(v, 3) for k, v in r.items() if k in (
                "turns_mean", "tool_calls_mean", "action_tokens_mean", "submitted", "env_errors")}
                for mode, r in (("sync", sync), ("async", asyn))}}


# Qwen2.5-0.5B's dimensions (its config.json): 494M parameters, 136M of them in the tied embedding.
QWEN2_05B_DIMS = {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                  "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                  "rope_theta": 1000000.0, "tie_word_embeddings": True}


class NoGPUError(RuntimeError):
    """`horizonrl-bench gpu` was asked for on a machine where torch sees no CUDA device."""


def require_cuda() -> torch.device:
    """The first CUDA device, or :class:`NoGPUError` naming what torch reports."""
    if not torch.cuda.is_available():
        raise NoGPUError(f"horizonrl-bench gpu needs a CUDA GPU, and torch {torch.__version__} sees none "
                         f"(torch.cuda.is_available() is False; built with CUDA {torch.version.cuda}). "
                         "Run it on a GPU machine (scripts/gpu_check.sh); the CPU benches are "
                         "`horizonrl-bench engine` and `horizonrl-bench learner`.")
    return torch.device("cuda", torch.cuda.current_device())


def _gb(nbytes: int) -> float:
    return nbytes / 1e9


def state_nbytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _synced_time(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return result, time.perf_counter() - t0


def bench_gpu(batches: list[int], prompt_len: int, new_tokens: int, train_batch: int, train_seq_len: int,
              steps: int, zero_stage: int, bf16: bool, engine_dtype: str, layers: int, actor_requests: int) -> dict:
    """The GPU path, measured with a random-init Qwen2 of Qwen2.5-0.5B's dims (`layers` overrides the depth).

    1. engine: :class:`rollout.hf_engine.HFGenerator` on the GPU (the class the `hf` Ray actor
       serves; driven directly, no Ray), one batched KV-cache generate per batch size, random prompt
       ids, no stop tokens, so every row samples `new_tokens` tokens; tokens/s = new tokens / wall time.
       Then :class:`rollout.hf_engine.HFEngineActor` (the Ray actor's class, called in this process)
       with `actor_requests` concurrent requests gathered by its dynamic batching.
    2. learner: :class:`rl.learner.PolicyLearner` (DeepSpeed, NCCL, ZeRO `zero_stage`, bf16 or fp32),
       `steps` DIS policy steps (``ppo_step``) on `train_batch` x `train_seq_len` random tokens (the
       last 3/4 of each row are action tokens, behaviour log-probs are the learner's own, advantages
       N(0, 1)); train tokens/s = tokens forward + backward per second. Then the whole critic-PPO step,
       ``PPOLearner.train_step`` with a :class:`rl.learner.CriticLearner` (values, GAE, ``critic_updates``
       critic steps, the policy step), rewards 0/1.
    3. weight push, as the `hf` engine receives it: ``PolicyLearner.state_dict()`` (gathered to the CPU)
       then ``HFGenerator.load_state`` (copied onto the GPU); and the disk sync's two halves
       (:func:`rollout.weight_sync.save_checkpoint`, then safetensors read + ``load_state``).
       GB/s = bytes of the state dict / wall time (best of `repeats`, after one untimed push).
    """
    device = require_cuda()  # before the heavy imports: a machine without a GPU is told at once
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rl.batch import SampleBatch
    from rl.config import AlgoConfig, DeepSpeedConfig
    from rl.learner import CriticLearner, PolicyLearner, PPOLearner, init_distributed
    from rollout.engine import SamplingParams
    from rollout.hf_engine import HFEngineActor, HFGenerator
    from rollout.weight_sync import save_checkpoint

    props = torch.cuda.get_device_properties(device)
    dims = QWEN2_05B_DIMS | {"num_hidden_layers": layers}
    vocab = dims["vocab_size"]
    result: dict = {"device": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                    "torch": torch.__version__, "cuda": torch.version.cuda, "model": "qwen2 random init",
                    "dims": dims}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        torch.manual_seed(0)
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_config(Qwen2Config(**dims, pad_token_id=0), dtype=torch.float32)
        result["params"] = sum(p.numel() for p in model.parameters())
        model.save_pretrained(str(model_dir))
        del model
        result["build_model_s"] = round(time.perf_counter() - t0, 1)

        # 1. engine generation
        gen = HFGenerator(model_dir, pad_token_id=0, seed=0, num_threads=4, device=str(device), dtype=engine_dtype)
        rng = torch.Generator().manual_seed(1)
        gen.generate([[1, 2, 3]] * 2, SamplingParams(max_new_tokens=8))  # warm-up (kernels, allocator)
        generate = []
        for b in batches:
            prompts = torch.randint(1, vocab, (b, prompt_len), generator=rng).tolist()
            torch.cuda.reset_peak_memory_stats(device)
            outs, seconds = _synced_time(lambda: gen.generate(prompts, SamplingParams(max_new_tokens=new_tokens)))
            tokens = sum(len(o.token_ids) for o in outs)
            generate.append({"batch": b, "prompt_len": prompt_len, "new_tokens": tokens, "seconds": round(seconds, 3),
                             "tokens_per_s": round(tokens / seconds, 1),
                             "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)})
        # the same model behind HFEngineActor's dynamic batching (the class the Ray actor serves,
        # driven in this process): `actor_requests` concurrent single-prompt requests
        actor = HFEngineActor(str(model_dir), 0, 0, 4, max_batch=actor_requests, batch_wait_s=0.005,
                              device=str(device), dtype=engine_dtype)
        actor_prompts = torch.randint(1, vocab, (actor_requests, prompt_len), generator=rng).tolist()

        async def serve() -> tuple[list, float]:
            await asyncio.gather(*(actor.generate(p, SamplingParams(max_new_tokens=8)) for p in actor_prompts[:2]))
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs = await asyncio.gather(*(actor.generate(p, SamplingParams(max_new_tokens=new_tokens))
                                          for p in actor_prompts))
            return outs, time.perf_counter() - t0
        outs, seconds = asyncio.run(serve())
        tokens = sum(len(o.token_ids) for o in outs)
        result["engine"] = {"dtype": engine_dtype, "generate": generate,
                            "actor": {"concurrent_requests": actor_requests, "prompt_len": prompt_len,
                                      "new_tokens": tokens, "seconds": round(seconds, 3),
                                      "tokens_per_s": round(tokens / seconds, 1)}}
        del actor

        # 2. learner PPO (DIS) steps
        ds = DeepSpeedConfig(zero_stage=zero_stage, bf16=bf16)
        init_distributed(ds)
        algo = AlgoConfig(micro_batch_tokens=train_batch * train_seq_len, critic_warmup_steps=0)
        learner = PolicyLearner(model_dir, 1e-6, algo, ds, temperature=1.0)
        ids = torch.randint(1, vocab, (train_batch, train_seq_len), generator=rng).to(device)
        ones = torch.ones(train_batch, train_seq_len, device=device)
        action = ones.clone()
        action[:, : train_seq_len // 4] = 0
        batch = SampleBatch(ids, ones.long(), action, torch.zeros_like(action), torch.ones(train_batch, device=device),
                            torch.arange(train_batch, device=device),
                            torch.zeros(train_batch, dtype=torch.long, device=device), action.sum(-1),
                            torch.zeros(train_batch, dtype=torch.long, device=device),
                            torch.arange(train_batch, device=device))
        batch.behavior_logprobs = learner.logprobs(batch)  # on-policy: the DIS ratio is 1, nothing masked
        advantages = torch.randn(train_batch, train_seq_len, generator=rng).to(device) * action
        torch.cuda.reset_peak_memory_stats(device)
        learner.ppo_step(batch, advantages)  # warm-up
        metrics, seconds = _synced_time(lambda: [learner.ppo_step(batch, advantages) for _ in range(steps)][-1])
        tokens = train_batch * train_seq_len * steps
        result["learner"] = {"zero_stage": zero_stage, "bf16": bf16, "batch": train_batch, "seq_len": train_seq_len,
                             "steps": steps, "seconds": round(seconds, 3), "train_tokens_per_s": round(tokens / seconds, 1),
                             "action_tokens_per_s": round(float(action.sum()) * steps / seconds, 1),
                             "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
                             "policy_masked_fraction": round(metrics["policy/masked_fraction"], 4),
                             "policy_grad_norm": round(metrics["policy/grad_norm"], 4)}

        # the whole critic-PPO step (PPOLearner.train_step): values -> GAE -> critic steps -> policy step
        torch.cuda.empty_cache()
        ppo = PPOLearner(learner, CriticLearner(model_dir, algo, ds), algo)
        batch.rewards = torch.randint(0, 2, (train_batch,), generator=rng).float().to(device)
        torch.cuda.reset_peak_memory_stats(device)
        ppo.train_step(batch)  # warm-up
        metrics, seconds = _synced_time(lambda: [ppo.train_step(batch) for _ in range(steps)][-1])
        result["ppo_step"] = {"critic_updates": algo.critic_updates, "steps": steps, "seconds": round(seconds, 3),
                              "tokens_per_s": round(tokens / seconds, 1),
                              "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
                              "critic_loss": round(metrics["critic/loss"], 4)}

        # 3. weight push learner -> engine
        pushes = []
        for version in range(1, 4):  # the first is untimed
            state, gather_s = _synced_time(learner.state_dict)
            _, load_s = _synced_time(lambda: gen.load_state(state, version))
            pushes.append((gather_s, load_s))
        nbytes = state_nbytes(state)
        gather_s = min(p[0] for p in pushes[1:])
        load_s = min(p[1] for p in pushes[1:])
        total_s = min(p[0] + p[1] for p in pushes[1:])
        disk = []
        for version in range(4, 6):
            out = Path(tmp) / "push"
            _, save_s = _synced_time(lambda: save_checkpoint(state, model_dir, out))
            files = sorted(out.glob("*.safetensors"))
            _, read_s = _synced_time(lambda: gen.load_state(
                {k: v for f in files for k, v in load_file(str(f)).items()}, version))
            disk.append((save_s, read_s))
        save_s, read_s = min(d[0] for d in disk), min(d[1] for d in disk)
        if gen.version != 5:
            raise RuntimeError(f"the engine reports weight version {gen.version} after the pushes, expected 5")
        result["weight_push"] = {
            "state_gb": round(_gb(nbytes), 3), "state_dtype": str(next(iter(state.values())).dtype).replace("torch.", ""),
            "learner_state_dict_s": round(gather_s, 3), "learner_state_dict_gb_s": round(_gb(nbytes) / gather_s, 2),
            "engine_load_state_s": round(load_s, 3), "engine_load_state_gb_s": round(_gb(nbytes) / load_s, 2),
            "push_s": round(total_s, 3), "push_gb_s": round(_gb(nbytes) / total_s, 2),
            "disk_save_s": round(save_s, 3), "disk_save_gb_s": round(_gb(nbytes) / save_s, 2),
            "disk_load_s": round(read_s, 3), "disk_load_gb_s": round(_gb(nbytes) / read_s, 2)}
    return result


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
    ab = sub.add_parser("async")
    ab.add_argument("--steps", type=int, default=16)
    ab.add_argument("--episodes", type=int, default=16)
    ab.add_argument("--buffer", type=int, default=32)
    ab.add_argument("--max-staleness", type=int, default=4)
    ab.add_argument("--hidden", type=int, default=128)
    ab.add_argument("--layers", type=int, default=2)
    ab.add_argument("--max-turns", type=int, default=4)
    ab.add_argument("--max-new-tokens", type=int, default=64)
    ab.add_argument("--demo-tasks", type=int, default=48)
    ab.add_argument("--sft-steps", type=int, default=120)
    ab.add_argument("--threads", type=int, default=1)
    ab.add_argument("--test-latency-s", type=float, default=1.0,
                    help="mean extra seconds a run of a task's hidden tests takes (exponential over tasks): "
                         "real test suites are not instant, and their run times spread")
    ab.add_argument("--latency-dist", choices=("exponential", "fixed"), default="exponential",
                    help="per-task test latency: exponential with the mean above, or the same for every task")
    gp = sub.add_parser("gpu", help="CUDA GPU: engine tokens/s, learner tokens/s, weight-push GB/s")
    gp.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="engine batch sizes")
    gp.add_argument("--prompt-len", type=int, default=256)
    gp.add_argument("--new-tokens", type=int, default=256)
    gp.add_argument("--train-batch", type=int, default=8)
    gp.add_argument("--train-seq-len", type=int, default=1024)
    gp.add_argument("--steps", type=int, default=5)
    gp.add_argument("--zero-stage", type=int, default=0, choices=(0, 1, 2, 3))
    gp.add_argument("--bf16", action="store_true", help="DeepSpeed bf16 (default: fp32 learner)")
    gp.add_argument("--engine-dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    gp.add_argument("--layers", type=int, default=QWEN2_05B_DIMS["num_hidden_layers"])
    gp.add_argument("--actor-requests", type=int, default=64, help="concurrent requests to the engine actor")
    for name in ("engine", "learner"):
        p = sub.add_parser(name)
        p.add_argument("--batch", type=int, default=32)
        p.add_argument("--hidden", type=int, default=256)
        p.add_argument("--layers", type=int, default=4)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--seq-len", type=int, default=220)
        p.add_argument("--new-tokens", type=int, default=64)
        p.add_argument("--steps", type=int, default=3)
        if name == "learner":
            p.add_argument("--min-seq-len", type=int, default=220, help="< --seq-len: lengths vary (padding)")
            p.add_argument("--micro-batch-tokens", type=int, default=8192)
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
    elif args.what == "async":
        result = bench_async(args.steps, args.episodes, args.buffer, args.max_staleness, args.hidden, args.layers,
                             args.max_turns, args.max_new_tokens, args.demo_tasks, args.sft_steps, args.threads,
                             args.test_latency_s, args.latency_dist)
    elif args.what == "gpu":
        try:
            result = bench_gpu(args.batch, args.prompt_len, args.new_tokens, args.train_batch, args.train_seq_len,
                               args.steps, args.zero_stage, args.bf16, args.engine_dtype, args.layers,
                               args.actor_requests)
        except NoGPUError as exc:
            parser.exit(2, f"horizonrl-bench: error: {exc}\n")
    elif args.what == "engine":
        result = bench_engine(args.batch, args.seq_len, args.new_tokens, args.hidden, args.layers, args.threads)
    else:
        result = bench_learner(args.batch, args.seq_len, args.min_seq_len, args.micro_batch_tokens, args.hidden,
                               args.layers, args.steps, args.threads)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
