"""`horizonrl-train`: warm-start a coding agent, then train it with critic PPO.

    horizonrl-train                      # the CPU demo (experiment=cpu_demo)
    horizonrl-train experiment=quick     # a small run for tests
    horizonrl-train model.path=/ckpt     # any local Hugging Face checkpoint

The whole run is one visible loop; the machinery lives in the packages.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from envs.suite import load_suite
from rl.batch import collate, trainable
from rl.config import register_configs, to_train_config
from rl.learner import CriticLearner, PolicyLearner, PPOLearner, init_distributed
from rl.observe import RunLogger
from rl.orchestrator import RolloutCluster, TaskSampler, evaluate, rollout_metrics
from rl.warm_start import build_default_policy, demonstrations, sft_warm_start
from rollout.tokenizer import load_tokenizer

register_configs()


@hydra.main(config_path="../configs", config_name="config", version_base=None)
def main(raw: DictConfig) -> None:
    cfg = to_train_config(raw)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    log = RunLogger(run_dir, cfg.logging, OmegaConf.to_container(raw), run_dir.name, cfg.steps)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.learner_threads)
    init_distributed(cfg.deepspeed)
    train_tasks, heldout = load_suite(cfg.suite, "train"), load_suite(cfg.suite, "heldout")
    log.phase(f"suite: {len(train_tasks)} train tasks, {len(heldout)} held-out tasks")

    # 1. The policy: a local checkpoint, or the default built from config + an SFT warm start.
    demos = demonstrations(train_tasks, cfg.env)
    base = Path(cfg.model.path) if cfg.model.path else build_default_policy(cfg.model, demos, run_dir / "base", cfg.seed)
    tokenizer = load_tokenizer(base)
    policy_path = base
    if cfg.sft.enabled:
        log.phase(f"SFT warm start: {cfg.sft.steps} steps on {len(demos)} scripted demonstrations")
        policy_path = sft_warm_start(base, demos, tokenizer, cfg.sft, cfg.algo, cfg.deepspeed, run_dir / "sft",
                                     cfg.seed, on_step=lambda s, m: log.log_warm_start(s, cfg.sft.steps, m))

    # 2. Engines and rollout workers (Ray), the held-out pass rate before RL.
    cluster = RolloutCluster(str(policy_path), tokenizer, cfg, str(run_dir / "audit.sqlite"), run_dir.name)
    eval_tasks = heldout[: cfg.eval.max_tasks or None]
    before = evaluate(cluster, eval_tasks, cfg.eval.samples_per_task, "before")
    log.phase(f"held-out pass rate before RL: {before.pass_rate:.3f} ({before.episodes} episodes)")

    # 3. Critic PPO: rollout -> train -> push weights, every step.
    learner = PPOLearner(PolicyLearner(policy_path, cfg.algo.policy_lr, cfg.algo, cfg.deepspeed, cfg.sampling.temperature),
                         CriticLearner(policy_path, cfg.algo, cfg.deepspeed), cfg.algo)
    sampler = TaskSampler(train_tasks, cfg.seed)
    ema, started = before.pass_rate, time.time()
    for step in range(cfg.steps):
        t0 = time.time()
        tasks = sampler.next_batch(cfg.rollout.episodes_per_step)
        trajectories = cluster.rollout(tasks, [f"train-{step}-{i}" for i in range(len(tasks))])
        t_rollout = time.time() - t0
        metrics = learner.train_step(collate(trainable(trajectories), tokenizer.pad_token_id))
        cluster.push_weights(learner.policy.state_dict(), version=step + 1)
        rm = rollout_metrics(trajectories)
        ema = 0.8 * ema + 0.2 * rm["rollout/pass_rate"]
        step_s = time.time() - t0
        log.log(step, metrics | rm | {"rollout/pass_rate_ema": ema, "perf/step_s": step_s, "perf/rollout_s": t_rollout,
                                      "perf/tokens_per_s": rm["rollout/action_tokens"] * len(tasks) / t_rollout,
                                      "weights/version": step + 1})

    # 4. The held-out pass rate after RL, the checkpoint, the summary.
    after = evaluate(cluster, eval_tasks, cfg.eval.samples_per_task, "after")
    log.phase(f"held-out pass rate after RL: {after.pass_rate:.3f} ({after.episodes} episodes)")
    checkpoint_dir = run_dir / "checkpoints" / f"step_{cfg.steps}"
    learner.policy.save_pretrained(checkpoint_dir, tokenizer)
    log.plot(run_dir / "pass_rate.png", before.pass_rate, after.pass_rate)
    log.finish({
        "experiment": cfg.experiment, "steps": cfg.steps,
        "heldout_pass_rate_before_rl": before.pass_rate, "heldout_pass_rate_after_rl": after.pass_rate,
        "heldout_gain_points": 100 * (after.pass_rate - before.pass_rate),
        "heldout_per_family_before": before.per_family, "heldout_per_family_after": after.per_family,
        "heldout_episodes": after.episodes, "rl_wall_time_s": time.time() - started,
        "wall_time_s": time.time() - log.started, "wandb_dir": log.wandb_dir,
        "checkpoint_dir": str(checkpoint_dir), "plot": str(run_dir / "pass_rate.png"),
        "final_metrics": log.history[-1] if log.history else {},
    })
    cluster.shutdown()
    print(run_dir.resolve())


if __name__ == "__main__":
    main()
