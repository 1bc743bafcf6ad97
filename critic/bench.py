"""Benchmark: vectorised skip-observation GAE against the Python-loop reference.

A random batch mimics agent traces: a prompt, then alternating action spans and observation spans
of random lengths, right padding; random values on action tokens; sparse rewards (a few per-token
penalties plus an outcome reward on the last action token). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import Tensor

from critic.gae import gae, gae_reference_loop


def random_agent_batch(batch: int, seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """(rewards, values, action_mask), float32 ``[batch, seq_len]``, with observation gaps."""
    action_mask = torch.zeros(batch, seq_len)
    for b in range(batch):
        end = int(torch.randint(seq_len // 2, seq_len + 1, (1,), generator=generator))
        t = int(torch.randint(8, 64, (1,), generator=generator))  # prompt
        while t < end:
            span = int(torch.randint(1, 200, (1,), generator=generator))
            action_mask[b, t:min(t + span, end)] = 1.0
            t += span + int(torch.randint(1, 300, (1,), generator=generator))  # observation
    values = torch.rand(batch, seq_len, generator=generator) * action_mask
    penalties = (torch.rand(batch, seq_len, generator=generator) < 0.002).float() * -0.1
    rewards = penalties * action_mask
    last = seq_len - 1 - action_mask.flip(1).argmax(1)
    outcome = (torch.rand(batch, generator=generator) < 0.5).float()
    rewards[torch.arange(batch), last] += outcome * action_mask.any(1).float()
    return rewards, values, action_mask


def _time_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_gae(batch: int = 64, seq_len: int = 4096, seed: int = 0, lam: float = 0.95, gamma: float = 1.0,
              repeats: int = 20, loop_repeats: int = 3) -> dict:
    """Time :func:`critic.gae.gae` vs :func:`critic.gae.gae_reference_loop` on one random batch.

    Times are medians (``repeats`` calls of the vectorised version, ``loop_repeats`` of the loop);
    ``max_abs_diff`` is over advantages and returns.
    """
    generator = torch.Generator().manual_seed(seed)
    rewards, values, action_mask = random_agent_batch(batch, seq_len, generator)
    lam_rows = torch.full((batch,), lam)
    gae(rewards, values, action_mask, gamma, lam_rows)  # warm-up
    vectorised_ms = _time_ms(lambda: gae(rewards, values, action_mask, gamma, lam_rows), repeats)
    loop_ms = _time_ms(lambda: gae_reference_loop(rewards, values, action_mask, gamma, lam_rows), loop_repeats)
    ref_adv, ref_ret = gae_reference_loop(rewards, values, action_mask, gamma, lam_rows)
    adv, ret = gae(rewards, values, action_mask, gamma, lam_rows)
    diff = max(float((adv - ref_adv).abs().max()), float((ret - ref_ret).abs().max()))
    return {"batch": batch, "seq_len": seq_len, "lam": lam, "gamma": gamma, "threads": torch.get_num_threads(),
            "action_tokens": int(action_mask.sum()), "vectorised_ms": round(vectorised_ms, 3),
            "python_loop_ms": round(loop_ms, 3), "speedup": round(loop_ms / vectorised_ms, 1),
            "max_abs_diff": diff}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="benchmark vectorised GAE against a Python loop")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--lam", type=float, nargs="+", default=[0.95, 1.0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = [bench_gae(args.batch, args.seq_len, args.seed, lam, args.gamma) for lam in args.lam]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
