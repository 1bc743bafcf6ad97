"""`horizonrl-train`: warm-start a coding agent, then train it with critic PPO.

    horizonrl-train                      # the CPU demo (experiment=cpu_demo)
    horizonrl-train experiment=quick     # a small run for tests
    horizonrl-train model.path=/ckpt     # any local Hugging Face checkpoint
    horizonrl-train resume=runs/<run>/checkpoints   # continue a run exactly where it stopped
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from envs.suite import load_suite
from rl.async_rollout import rollout_source
from rl.batch import collate, trainable
from rl.checkpoint import POLICY_HF, reference_of, resolve_checkpoint
from rl.config import register_configs, to_train_config
from rl.learner import init_distributed
from rl.learner_group import build_learner
from rl.observe import RunLogger, describe, run_summary
from rl.orchestrator import RolloutCluster, TaskSampler, evaluate_heldout, rollout_metrics
from rl.warm_start import build_default_policy, demo_trajectories, sft_demonstrations, sft_warm_start, split_for_warm_start
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
    warm_tasks, rl_tasks = split_for_warm_start(train_tasks, cfg.sft.task_fraction, cfg.seed)
    log.phase(f"suite: {len(warm_tasks)} warm-start / {len(rl_tasks)} RL train tasks, {len(heldout)} held-out")

    # 1. The policy: a checkpoint to resume, a local model, or the default built from config + SFT warm start.
    resume = resolve_checkpoint(Path(cfg.resume)) if cfg.resume else None
    demos = sft_demonstrations(warm_tasks, cfg.env, cfg.sft, cfg.seed) if resume is None and (cfg.sft.enabled or not cfg.model.path) else []
    policy_path = (resume / POLICY_HF if resume is not None else Path(cfg.model.path) if cfg.model.path
                   else build_default_policy(cfg.model, demos, run_dir / "base", cfg.seed))
    tokenizer = load_tokenizer(policy_path)
    if cfg.sft.enabled and resume is None:
        log.phase(f"SFT warm start: {cfg.sft.steps} steps on {len(demos)} scripted demonstrations")
        sft_data = demo_trajectories(demos, tokenizer, cfg.agent, cfg.env, cfg.sampling.max_new_tokens)  # compacted as RL's
        policy_path = sft_warm_start(policy_path, sft_data, tokenizer, cfg.sft, cfg.algo, cfg.deepspeed,
                                     run_dir / "sft", cfg.seed, on_step=lambda s, m: log.log_warm_start(s, cfg.sft.steps, m))

    # 2. Engines and rollout workers (Ray), the held-out pass rate before RL.
    cluster = RolloutCluster(str(policy_path), tokenizer, cfg, str(run_dir / "audit.sqlite"), run_dir.name)
    eval_tasks = heldout[: cfg.eval.max_tasks or None]
    before = evaluate_heldout(cluster, eval_tasks, cfg.eval, "before")
    log.phase(f"held-out pass rate before RL: {describe(before)}")

    # 3. Critic PPO: rollout -> train -> push weights, every step; a checkpoint every `checkpoint.every`.
    learner = build_learner(policy_path, cfg, reference_of(resume), cluster.placement)  # in-process, or DP Ray actors
    sampler, start, ema, checkpoint = TaskSampler(rl_tasks, cfg.seed), 0, before.pass_rate, resume
    if resume is not None:
        state = learner.load_checkpoint(resume, sampler)
        start, log.history, ema = state.step, state.metrics_history, state.extra["ema"]
        log.phase(f"resumed from {resume} at step {start}")
    source, started = rollout_source(cfg, cluster, sampler, str(policy_path), learner), time.time()
    for step in range(start, cfg.steps):
        t0 = time.time()
        batch = source.next_batch(cfg.rollout.episodes_per_step, learner_version=step)  # sync: run now; async: buffered
        metrics = learner.train_step(collate(trainable(batch.trajectories), tokenizer.pad_token_id))
        rm = rollout_metrics(batch.trajectories)
        ema = 0.8 * ema + 0.2 * rm["rollout/pass_rate"]
        log.log(step, metrics | rm | batch.metrics | {"rollout/pass_rate_ema": ema, "perf/step_s": time.time() - t0,
                                                      "weights/version": step + 1})
        if step + 1 == cfg.steps or (cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0):
            checkpoint = learner.save_checkpoint(run_dir / "checkpoints", step + 1, sampler, version=step + 1,
                                                 metrics_history=log.history, extra={"ema": ema},
                                                 keep=cfg.checkpoint.keep, tokenizer=tokenizer)
        if source.should_push(step + 1):   # after the checkpoint: colocated, the push ends the learner's turn
            source.push_weights(learner.state_dict(), version=step + 1)
    source.close()

    # 4. The held-out pass rate after RL, the summary; the run directory is the last line printed.
    after = evaluate_heldout(cluster, eval_tasks, cfg.eval, "after")
    log.phase(f"held-out pass rate after RL: {describe(after)}")
    log.plot(run_dir / "pass_rate.png", before.pass_rate, after.pass_rate, after.decoding)
    log.finish(run_summary(cfg, before, after, log, checkpoint, rl_wall_time_s=time.time() - started))
    learner.shutdown()
    cluster.shutdown()
    print(run_dir.resolve())


if __name__ == "__main__":
    main()
