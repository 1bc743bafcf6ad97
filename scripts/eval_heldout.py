"""The held-out pass rate of existing checkpoints, measured as `horizonrl-train` measures it.

    python scripts/eval_heldout.py runs/<run>/sft runs/<run>/checkpoints/step_00000018/policy_hf
    python scripts/eval_heldout.py <ckpt> -- eval.greedy=false eval.samples_per_task=2   # T = 1, 2 per task

Each checkpoint is served by the run's engine and rollout workers (Ray, bubblewrap sandboxes) and
evaluated with `rl.orchestrator.evaluate_heldout` under the composed training config (the default
preset plus the overrides after ``--``): one JSON line per checkpoint with its pass rate, decoding,
episodes and per-family pass rates (and the sampled figure beside a greedy one, if configured).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from envs.suite import load_suite
from rl.config import register_configs, to_train_config
from rl.orchestrator import RolloutCluster, evaluate_heldout
from rollout.tokenizer import load_tokenizer

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="local Hugging Face checkpoint directories")
    args, overrides = parser.parse_args(argv[:split]), argv[split + 1:]
    register_configs()
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        cfg = to_train_config(compose(config_name="config", overrides=overrides))
    tasks = load_suite(cfg.suite, "heldout")[: cfg.eval.max_tasks or None]
    for path in args.checkpoints:
        if not Path(path).is_dir():
            raise SystemExit(f"no checkpoint directory at {path}")
        cluster = RolloutCluster(path, load_tokenizer(path), cfg)
        try:
            result = evaluate_heldout(cluster, tasks, cfg.eval, "eval")
        finally:
            cluster.shutdown()
        line = {"checkpoint": path, "pass_rate": result.pass_rate, "decoding": result.decoding,
                "episodes": result.episodes, "per_family": result.per_family}
        if result.sampled is not None:
            line["sampled_pass_rate"], line["sampled_episodes"] = result.sampled.pass_rate, result.sampled.episodes
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
