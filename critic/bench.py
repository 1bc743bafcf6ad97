"""Benchmark: vectorised skip-observation GAE against the Python-loop reference.

A random batch mimics agent traces: a prompt, then alternating action spans and observation spans
of random lengths, right padding; random values on action tokens; sparse rewards (a few per-token
penalties plus an outcome reward on the last action token). Prints JSON.

Both sides are timed in the same process, on the same batch, as medians of several calls; the
reference is :func:`critic.gae.gae_reference_loop`, the plain token-by-token recursion.

Heap state. glibc's malloc hands big blocks out with ``mmap`` and gives a freed heap top back to
the OS until it has seen a large block freed; then it raises its mmap threshold to that size and
its trim threshold to twice that (its "dynamic thresholds"). A training process frees large tensors
all the time, so the learner runs GAE on a warm heap. A benchmark process that has only ever held a
few MiB has not got there, and each call of a function that allocates ~8 MiB of temporaries and
outputs pays first-touch page faults on all of it (~2 µs per 4 KiB page in this sandbox: ~4 ms a
call, three times the arithmetic). :func:`warm_heap` frees one 16 MiB block first, which moves glibc to the
state a training process is in; both sides are then timed in that state (``vectorised_ms``,
``python_loop_ms``, ``speedup``, with ``page_faults_per_call`` measured). For the record,
``vectorised_cold_heap_ms`` times the vectorised call right after ``malloc_trim(0)``, i.e. with
every page of its memory touched for the first time (glibc only; null elsewhere).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
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


def warm_heap() -> None:
    """Allocate and free one 16 MiB block: glibc raises its mmap/trim thresholds as in a training process."""
    block = torch.empty(16 << 20, dtype=torch.uint8)
    block.fill_(0)
    del block


def _malloc_trim():
    """``malloc_trim(0)`` of glibc (returns all free heap memory to the OS), or None elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def _minor_faults() -> int | None:
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _time_ms(fn, repeats: int, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench_gae(batch: int = 64, seq_len: int = 4096, seed: int = 0, lam: float = 0.95, gamma: float = 1.0,
              repeats: int = 50, loop_repeats: int = 5) -> dict:
    """Time :func:`critic.gae.gae` vs :func:`critic.gae.gae_reference_loop` on one random batch.

    Times are medians (``repeats`` calls of the vectorised version, ``loop_repeats`` of the loop),
    on a warm heap (:func:`warm_heap`); ``max_abs_diff`` is over advantages and returns.
    """
    generator = torch.Generator().manual_seed(seed)
    rewards, values, action_mask = random_agent_batch(batch, seq_len, generator)
    lam_rows = torch.full((batch,), lam)
    warm_heap()
    ref_adv, ref_ret = gae_reference_loop(rewards, values, action_mask, gamma, lam_rows)
    adv, ret = gae(rewards, values, action_mask, gamma, lam_rows)  # also the warm-up
    diff = max(float((adv - ref_adv).abs().max()), float((ret - ref_ret).abs().max()))
    del adv, ret, ref_adv, ref_ret

    def vectorised():
        gae(rewards, values, action_mask, gamma, lam_rows)

    _time_ms(vectorised, 5)  # more warm-up: the heap's free lists settle after a few calls
    faults = _minor_faults()
    vectorised_ms = _time_ms(vectorised, repeats)
    faults = None if faults is None else (_minor_faults() - faults) / repeats
    loop_ms = _time_ms(lambda: gae_reference_loop(rewards, values, action_mask, gamma, lam_rows), loop_repeats)
    trim = _malloc_trim()
    cold_ms = None if trim is None else _time_ms(vectorised, max(repeats // 5, 3), before=lambda: trim(0))
    return {"batch": batch, "seq_len": seq_len, "lam": lam, "gamma": gamma, "threads": torch.get_num_threads(),
            "action_tokens": int(action_mask.sum()), "vectorised_ms": round(vectorised_ms, 3),
            "python_loop_ms": round(loop_ms, 3), "speedup": round(loop_ms / vectorised_ms, 1),
            "max_abs_diff": diff,
            "page_faults_per_call": faults,
            "vectorised_cold_heap_ms": None if cold_ms is None else round(cold_ms, 3)}


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
