"""Where a student's reverse KL to an expert sits, token by token (an OPD diagnostic).

    python scripts/opd_kl_probe.py <student dir> <expert dir> <family,family> [--episodes 4] [--temperature 0.7]

Runs the student on train tasks of the given families with the agent loop and the local sandbox,
scores its action tokens with the expert (prefill, same temperature) and prints, per episode, the
mean per-token `log pi_student - log pi_expert`, its largest tokens with their context and the share
of the summed KL in the top 5.
"""

from __future__ import annotations

import argparse
import asyncio

import torch

from envs.suite import builtin_suite
from rollout.agent import AgentConfig, run_episode
from rollout.chat import stop_token_ids
from rollout.engine import SamplingParams
from rollout.hf_engine import HFEngineActor, HFGenerator
from rollout.tokenizer import load_tokenizer
from rollout.worker import EnvConfig, make_env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("student")
    p.add_argument("expert")
    p.add_argument("families", help="comma-separated task families of the built-in suite")
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(2)
    tok = load_tokenizer(args.student)
    families = set(args.families.split(","))
    tasks = [t for t in builtin_suite(0) if t.split == "train" and t.task_id.split("-")[0] in families]
    if not tasks:
        raise SystemExit(f"no train tasks in families {sorted(families)}")
    tasks = tasks[: args.episodes]
    sampling = SamplingParams(temperature=args.temperature, max_new_tokens=96, stop_token_ids=stop_token_ids(tok))

    async def rollouts():
        engine = HFEngineActor(args.student, tok.pad_token_id, 1, 2, 64, 0.005)
        return await asyncio.gather(*[
            run_episode(engine, tok, lambda task: make_env(task, EnvConfig()), t, f"probe{i}", sampling,
                        AgentConfig(max_turns=4)) for i, t in enumerate(tasks)])

    expert = HFGenerator(args.expert, tok.pad_token_id, 0, 2)
    for traj in asyncio.run(rollouts()):
        for seg in traj.segments:
            scores = expert.score([seg.tokens], args.temperature)[0]
            rows = [(i, seg.behavior_logprobs[i] - scores[i]) for i in range(len(seg.tokens)) if seg.loss_mask[i]]
            if not rows:
                continue
            total = sum(d for _, d in rows)
            print(f"{traj.task_id} passed={traj.passed} action tokens={len(rows)} mean reverse KL={total / len(rows):.3f}")
            top = sorted(rows, key=lambda r: -r[1])
            for i, d in top[: args.top]:
                context = tok.decode(seg.tokens[max(0, i - 12):i])[-60:]
                print(f"  {d:6.2f} nats  p_student={torch.tensor(seg.behavior_logprobs[i]).exp():.3f}  "
                      f"token={tok.decode([seg.tokens[i]])!r}  after ...{context!r}")
            print(f"  share of the summed KL in the top 5 tokens: {sum(d for _, d in top[:5]) / total:.2f}")


if __name__ == "__main__":
    main()
