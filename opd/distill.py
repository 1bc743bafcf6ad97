"""`horizonrl-distill`: merge expert checkpoints into one student with online policy distillation.

    horizonrl-distill                        # the demo (experiment=opd_demo): trains the experts it lacks, merges
    horizonrl-distill opd.student_init=<expert name> steps=50 orchestrator=sync

The student samples on-policy (agent loop, sandboxes, compaction as in RL); each finished episode
goes to the expert that owns its domain, which scores the exact token ids (prefill only) while the
other episodes still generate; the learner steps on Â_t = sg[log π_T − log π_θ]. With ``opd.offpolicy_samples_per_task`` > 0 an
off-policy phase comes first (`opd.offpolicy`: the student learns the experts' top-k on the experts'
own episodes, then is evaluated on held-out tasks before going on-policy). The run directory
(with `student/`, a `save_pretrained` checkpoint, and `summary.json`) is the last line printed.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from envs.suite import load_suite
from opd.config import DistillConfig, register_configs, rollout_config, to_distill_config
from opd.evaluation import EngineWorkers, evaluate_domains
from opd.experts import ensure_models
from opd.learner import OPDLearner
from opd.offpolicy import (expert_episodes, offpolicy_batches, offpolicy_samples, offpolicy_step_count,
                           replay_batches)
from opd.report import distill_summary, domain_line, plot_distill
from opd.source import DomainMixture, ScoredRolloutSource
from opd.teacher import Router, TeacherPool, check_checkpoint, check_compatible
from rl.async_rollout import start_rollout_worker
from rl.learner import PolicyLearner, init_distributed, policy_decay_steps
from rl.observe import RunLogger
from rl.orchestrator import RolloutCluster, rollout_metrics
from rollout.tokenizer import load_tokenizer

register_configs()


def student_init_path(cfg: DistillConfig) -> Path:
    if cfg.opd.student_init == "base":
        return Path(cfg.opd.base.checkpoint)
    return Path(next(e.checkpoint for e in cfg.opd.experts if e.name == cfg.opd.student_init))


def domain_tasks(cfg: DistillConfig, split: str) -> dict:
    if cfg.suite.families:
        raise ValueError("suite.families is not used by horizonrl-distill: the domains' families choose the tasks")
    tasks = load_suite(cfg.suite, split)
    return {d.name: [t for t in tasks if t.family in d.families] for d in cfg.opd.domains}


@hydra.main(config_path="../configs", config_name="distill", version_base=None)
def main(raw: DictConfig) -> None:
    cfg = to_distill_config(raw)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    log = RunLogger(run_dir, cfg.logging, OmegaConf.to_container(raw), run_dir.name, cfg.steps)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.learner_threads)

    # 1. The models: train the experts it lacks (or reuse them); refuse unusable or incompatible checkpoints.
    ensure_models(cfg.opd, log.phase)
    student_init = student_init_path(cfg)
    check_checkpoint(student_init, f"student init ({cfg.opd.student_init})")
    for expert in cfg.opd.experts:
        check_checkpoint(Path(expert.checkpoint), f"expert {expert.name!r}")
        check_compatible(student_init, Path(expert.checkpoint), expert.name)
    tokenizer = load_tokenizer(student_init)
    train, heldout = domain_tasks(cfg, "train"), domain_tasks(cfg, "heldout")
    heldout = {d: tasks[: cfg.opd.eval_max_tasks or None] for d, tasks in heldout.items()}
    log.phase("domains: " + ", ".join(f"{d}: {len(train[d])} train / {len(heldout[d])} held-out tasks" for d in train))

    # 2. Student engine + rollout workers, one teacher engine per expert; held-out pass rates before.
    tcfg = rollout_config(cfg)
    init_distributed(cfg.deepspeed)
    cluster = RolloutCluster(str(student_init), tokenizer, tcfg, str(run_dir / "audit.sqlite"), run_dir.name)
    router = Router(cfg.opd.domains, cfg.opd.experts)
    teachers = TeacherPool(cfg.opd.experts, router, tokenizer.pad_token_id, cfg.sampling.temperature, cfg.seed,
                           cfg.opd.teacher_threads, cfg.engine.max_batch, cfg.engine.batch_wait_s,
                           cfg.opd.forward_kl_top_k if cfg.opd.forward_kl_coef or cfg.opd.offpolicy_samples_per_task else 0,
                           cfg.opd.teacher_engine, cfg.opd.teacher_sglang)
    samples = cfg.opd.eval_samples_per_task
    before = evaluate_domains(cluster, heldout, samples, "before", teachers)
    expert_scores = {}
    for expert in cfg.opd.experts:
        workers = EngineWorkers(teachers.engine(expert.name), expert.checkpoint, tcfg, cluster.sampling)
        expert_scores[expert.domain] = evaluate_domains(workers, {expert.domain: heldout[expert.domain]}, samples,
                                                        f"expert-{expert.name}", None)[expert.domain]
        workers.shutdown()
    for d in sorted(heldout):
        log.phase(domain_line(d, "before", before[d], expert_scores[d]))

    # 3. Distillation: [off-policy phase], then generate + score (overlapped) -> OPD policy step -> push weights.
    per_task = offpolicy_samples(cfg.opd.domains, cfg.opd.offpolicy_samples_per_task)   # {} = no off-policy phase
    batch_size = cfg.rollout.episodes_per_step
    extra = (offpolicy_step_count(train, per_task, cfg.opd.offpolicy_epochs, batch_size)
             + cfg.steps * cfg.opd.offpolicy_replay if per_task else 0)   # a decaying learning rate spans both phases and replay
    decay = policy_decay_steps(cfg.algo, cfg.steps, extra_steps=extra)
    learner = OPDLearner(PolicyLearner(student_init, cfg.algo.policy_lr, cfg.algo, cfg.deepspeed,
                                       cfg.sampling.temperature, decay_steps=decay,
                                       min_lr_ratio=cfg.algo.policy_min_lr_ratio), cfg.opd, tokenizer.pad_token_id)
    started, offpolicy, replay = time.time(), None, None   # replay: with opd.offpolicy_replay (needs the phase)
    if per_task:   # 3a. Off-policy first: the experts' top-k on their own episodes.
        log.phase("off-policy phase: episodes per training task: " + ", ".join(f"{d} {k}" for d, k in per_task.items()))
        episodes = expert_episodes(teachers, cfg.opd.experts, train, per_task, tcfg, cluster.sampling)
        batches = offpolicy_batches(episodes, batch_size, cfg.opd.offpolicy_epochs, cfg.seed)
        log.phase(f"off-policy phase: {len(episodes)} expert episodes, {len(batches)} steps")
        for i, batch in enumerate(batches):
            log.log_warm_start(i, len(batches), learner.offpolicy_step(batch), phase="offpolicy")
        cluster.push_weights(learner.policy.state_dict(), version=0)
        offpolicy = evaluate_domains(cluster, heldout, samples, "offpolicy", teachers)
        for d in sorted(heldout):
            log.phase(domain_line(d, "after off-policy", offpolicy[d], expert_scores[d], before[d]))
        replay = replay_batches(episodes, batch_size, cfg.seed)
    mixture = DomainMixture(train, {d.name: d.weight for d in cfg.opd.domains}, cfg.seed)
    source = ScoredRolloutSource(cluster, mixture, teachers, cfg.orchestrator, cfg.async_rollout,
                                 lambda: start_rollout_worker(cluster.engine, str(student_init), tcfg,
                                                              str(run_dir / "audit.sqlite"), run_dir.name))
    for step in range(cfg.steps):
        t0 = time.time()
        scored, orchestrator = source.next_batch(cfg.rollout.episodes_per_step, learner_version=step)
        metrics = learner.train_step(scored)
        for _ in range(cfg.opd.offpolicy_replay):
            metrics |= learner.offpolicy_step(next(replay), prefix="replay")
        cluster.push_weights(learner.policy.state_dict(), version=step + 1)
        log.log(step, metrics | rollout_metrics([s.trajectory for s in scored]) | orchestrator
                | {"perf/step_s": time.time() - t0, "weights/version": step + 1})
        log.phase(f"step {step + 1}: reverse KL " + ", ".join(
            f"{k.split('/')[-1]} {v:.3f}" for k, v in metrics.items() if k.startswith("opd/reverse_kl/")))
        if cfg.opd.save_every and (step + 1) % cfg.opd.save_every == 0:
            learner.policy.save_pretrained(run_dir / "student", tokenizer)
    source.close()

    # 4. The merged student, held-out pass rates after; summary.json; the run directory is the last line.
    learner.policy.save_pretrained(run_dir / "student", tokenizer)
    after = evaluate_domains(cluster, heldout, samples, "after", teachers)
    for d in sorted(heldout):
        log.phase(domain_line(d, "after", after[d], expert_scores[d], before[d]))
    log.finish(distill_summary(cfg, before, after, expert_scores, log, run_dir / "student", time.time() - started,
                               offpolicy))
    plot_distill(run_dir)
    teachers.shutdown()
    cluster.shutdown()
    print(run_dir.resolve())


if __name__ == "__main__":
    main()
