"""Rollout sources with real Ray, the real hf engine (a tiny random policy), real rollout workers and
real sandboxes: staleness drops, partial rollout across weight pushes, a worker killed from
outside mid-episode, and both sources returning what was asked."""

import dataclasses
import math
import time
from functools import partial

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from antihack.guard import GuardConfig
from envs.suite import builtin_suite
from rl.async_rollout import (AsyncConfig, AsyncRolloutSource, SyncRolloutSource, _Issuer, staleness,
                              start_rollout_worker)
from rl.config import EngineConfig, EvalConfig, RolloutConfig, SamplingConfig, TrainConfig
from rl.orchestrator import RolloutCluster, TaskSampler, evaluate_heldout
from rollout.agent import AgentConfig
from rollout.tokenizer import load_tokenizer
from rollout.trajectory import Segment, Status, Trajectory
from tiny_models import save_tiny_agent_policy

TASKS = [t for t in builtin_suite(0) if t.split == "train"][:40]


def test_rollout_ids_go_on_counting_after_a_resume():
    """A resumed run's issuer starts at the restored sampler position: no rollout id is issued twice
    over the run and its resume, and the tasks are those of an uninterrupted run."""
    sampler = TaskSampler(TASKS, seed=2)
    first = _Issuer(sampler, "train").new(25)                  # crosses an epoch (40 tasks) on the next call
    resumed = TaskSampler(TASKS, seed=2)
    resumed.load_state(sampler.state())
    issuer = _Issuer(resumed, "train")
    later = issuer.new(30)
    assert [e.rollout_id for e in first + later] == [f"train-{k}" for k in range(55)]
    assert issuer.issued == 30
    assert [e.task.task_id for e in later] == [t.task_id for t in sampler.next_batch(30)]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return save_tiny_agent_policy(tmp_path_factory.mktemp("policy"), TASKS)


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def train_config(max_turns: int) -> TrainConfig:
    return TrainConfig(seed=0, engine=EngineConfig(num_threads=1, max_batch=64, batch_wait_s=0.005),
                       agent=AgentConfig(max_turns=max_turns, max_context_tokens=1024),
                       sampling=SamplingConfig(max_new_tokens=8),
                       rollout=RolloutConfig(num_workers=2, max_concurrent_per_worker=8, episodes_per_step=4),
                       antihack=GuardConfig(enabled=False))


@pytest.fixture
def make_cluster(policy_dir, ray_session):
    clusters = []

    def make(max_turns: int = 3):
        cfg = train_config(max_turns)
        cluster = RolloutCluster(str(policy_dir), load_tokenizer(policy_dir), cfg)
        clusters.append(cluster)
        return cluster, partial(start_rollout_worker, cluster.engine, str(policy_dir), cfg)
    yield make
    for cluster in clusters:
        cluster.shutdown()


def zero_state(policy_dir):
    model = AutoModelForCausalLM.from_pretrained(str(policy_dir))
    return {k: torch.zeros_like(v) for k, v in model.state_dict().items()}


def sampled(seg: Segment):
    return [(i, v, lp) for i, (m, v, lp) in enumerate(zip(seg.loss_mask, seg.weight_versions, seg.behavior_logprobs))
            if m]


def test_staleness_is_learner_version_minus_oldest_sampled_token():
    seg = Segment("r", 0)
    seg.append([1, 2], sampled=False)
    assert staleness(Trajectory("r", "t", [seg]), 9) is None      # nothing sampled: never stale
    seg.append([3, 4], sampled=True, logprobs=[-1.0, -1.0], versions=[5, 7])
    assert staleness(Trajectory("r", "t", [seg]), 9) == 4


def test_sync_and_async_return_the_requested_count_and_env_errors_once(make_cluster):
    broken = dataclasses.replace(TASKS[0], task_id="broken-0", setup_command=("false",))
    cluster, start_worker = make_cluster()
    sync = SyncRolloutSource(cluster, TaskSampler([broken] + TASKS[1:4], seed=0), start_worker, id_prefix="s")
    batch = sync.next_batch(5, learner_version=0)
    assert [t.rollout_id for t in batch.trajectories] == [f"s-{k}" for k in range(5)]
    assert sum(t.status == Status.ENV_ERROR for t in batch.trajectories) == sum(
        t.task_id == "broken-0" for t in batch.trajectories) >= 1
    assert batch.metrics["orchestrator/requeued"] == 0 and batch.metrics["orchestrator/staleness_max"] == 0

    source = AsyncRolloutSource(cluster, TaskSampler([broken] + TASKS[1:4], seed=0), AsyncConfig(buffer_size=6),
                                start_worker, id_prefix="a")
    got = []
    for n in (3, 4):
        batch = source.next_batch(n, learner_version=0)
        assert len(batch.trajectories) == n
        assert batch.metrics["orchestrator/in_flight"] == 6   # refilled before returning
        got += batch.trajectories
    ids = [t.rollout_id for t in got]
    assert len(set(ids)) == 7 and all(i.startswith("a-") for i in ids)
    assert any(t.status == Status.ENV_ERROR for t in got)    # returned as it is, not retried
    assert source.pool.requeued == 0
    source.close()
    assert source.in_flight == 0


def test_workers_take_new_work_after_close_with_episodes_queued_on_them(make_cluster):
    """Held-out evaluation comes right after close(). With more episodes in flight than a worker
    has slots, some wait on the worker's semaphore when the source closes; cancelling them used to
    leave the workers stuck and the evaluation hung."""
    cluster, start_worker = make_cluster(max_turns=6)
    source = AsyncRolloutSource(cluster, TaskSampler(TASKS, seed=0), AsyncConfig(buffer_size=24), start_worker)
    source.next_batch(2, learner_version=0)
    assert len(source.pool) > 2 * 8                       # more than the 2 workers' 8 slots each
    source.close()
    refs = [w.run_episodes.remote([(TASKS[5], f"after-close-{k}")], cluster.sampling)
            for k, w in enumerate(cluster.workers)]
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=120)
    assert len(done) == len(refs)
    assert [ray.get(r)[0].rollout_id for r in refs] == ["after-close-0", "after-close-1"]


def test_stale_trajectories_are_dropped_and_counted(make_cluster, policy_dir):
    cluster, start_worker = make_cluster()
    source = AsyncRolloutSource(cluster, TaskSampler(TASKS, seed=0), AsyncConfig(buffer_size=6, max_staleness=4),
                                start_worker)
    first = source.next_batch(2, learner_version=0)
    assert first.metrics["orchestrator/dropped_stale"] == 0
    before_push = source.issuer.issued                      # episodes started with weights of version 0
    time.sleep(1.0)                                         # let the buffered ones sample tokens at version 0
    model = AutoModelForCausalLM.from_pretrained(str(policy_dir))
    cluster.push_weights({k: v.clone() for k, v in model.state_dict().items()}, version=10)  # applied on return
    batch = source.next_batch(4, learner_version=10)
    dropped = batch.metrics["orchestrator/dropped_stale"]
    assert 1 <= dropped <= before_push - 2
    assert batch.metrics["orchestrator/dropped_stale_total"] == dropped
    for traj in batch.trajectories:                         # what is kept is within the bound
        assert staleness(traj, 10) <= 4
    assert batch.metrics["orchestrator/staleness_max"] <= 4
    # every id issued is returned, dropped or still in flight: nothing vanished
    assert 2 + 4 + dropped + source.in_flight == source.issuer.issued
    # the bound is inclusive: 4 versions behind is kept
    batch = source.next_batch(1, learner_version=14)
    assert staleness(batch.trajectories[0], 14) <= 4
    source.close()


def test_partial_rollout_keeps_earlier_tokens_and_their_versions(make_cluster, policy_dir):
    """Even versions carry the initial weights, odd versions all-zero weights (uniform log-probs):
    every sampled token's behaviour log-prob must match the weights of the version it is tagged
    with, and an episode spanning a push keeps its earlier tokens."""
    cluster, start_worker = make_cluster(max_turns=6)
    model = AutoModelForCausalLM.from_pretrained(str(policy_dir)).eval()
    states = [{k: v.clone() for k, v in model.state_dict().items()}, zero_state(policy_dir)]
    uniform = -math.log(model.config.vocab_size)
    source = AsyncRolloutSource(cluster, TaskSampler(TASKS, seed=1), AsyncConfig(buffer_size=4, max_staleness=100),
                                start_worker)
    version, trajectories = 0, []
    while len(trajectories) < 16 and not any(len({v for *_, v, _ in sampled_all(t)}) > 1 for t in trajectories):
        trajectories += source.next_batch(1, learner_version=version).trajectories
        version += 1
        source.push_weights(states[version % 2], version)   # never waits for the episodes in flight
    source.close()
    spanning = [t for t in trajectories if len({v for *_, v, _ in sampled_all(t)}) > 1]
    assert spanning, "no episode spanned a weight push"
    for traj in trajectories:
        seg = traj.segments[0]
        versions = [v for _, v, _ in sampled(seg)]
        assert versions == sorted(versions)                  # earlier tokens keep their older versions
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([seg.tokens])).logits[0].float(), -1)
        for i, v, lp in sampled(seg):
            expected = uniform if v % 2 else logp[i - 1, seg.tokens[i]].item()
            assert abs(lp - expected) < 1e-3, (traj.rollout_id, i, v, lp, expected)


def sampled_all(traj: Trajectory):
    return [(s.index, i, v, lp) for s in traj.segments for i, v, lp in sampled(s)]


def test_killed_worker_is_replaced_and_its_episodes_come_back_once(make_cluster):
    cluster, start_worker = make_cluster(max_turns=6)
    source = AsyncRolloutSource(cluster, TaskSampler(TASKS, seed=2), AsyncConfig(buffer_size=6, max_staleness=100),
                                start_worker)
    source.start()
    time.sleep(0.5)                                          # the episodes are under way
    victim = cluster.workers[0]
    on_victim = [run.episode.rollout_id for run in source.pool.running.values() if run.slot == 0]
    assert on_victim
    ray.kill(victim)                                         # from outside, mid-episode
    returned = []
    for _ in range(3):
        batch = source.next_batch(4, learner_version=0)
        returned += [t.rollout_id for t in batch.trajectories]
    assert source.pool.worker_restarts == 1
    assert 1 <= source.pool.requeued <= len(on_victim)
    assert len(returned) == len(set(returned)) == 12        # nothing returned twice
    assert set(on_victim) <= set(returned) | set(source.running_ids())  # nothing lost
    in_flight = set(source.running_ids()) | {t.rollout_id for t in source.finished}
    assert set(returned) | in_flight == {f"train-{k}" for k in range(source.issuer.issued)}
    assert not set(returned) & in_flight
    assert cluster.workers[0] is not victim and ray.get(cluster.workers[0].ping.remote())
    source.close()


def test_greedy_heldout_evaluation_decodes_the_argmax_and_reports_the_sampled_figure_beside_it(make_cluster,
                                                                                                policy_dir):
    """eval.greedy: every action token is the policy's most likely one (checked against a full forward
    pass), behaviour log-probs are those of a point mass, two evaluations agree token for token; the
    sampled episodes beside it use the training settings."""
    cluster, _ = make_cluster(max_turns=2)
    settings = EvalConfig(greedy=True, samples_per_task=1, sampled_samples_per_task=2)
    first, again = (evaluate_heldout(cluster, TASKS[:6], settings, tag) for tag in ("a", "b"))
    assert first.decoding == "greedy" and first.episodes == 6
    assert first.sampled.decoding == "sampled" and first.sampled.episodes == 12
    assert [s.tokens for t in first.trajectories for s in t.segments] == \
        [s.tokens for t in again.trajectories for s in t.segments]
    model = AutoModelForCausalLM.from_pretrained(str(policy_dir)).eval()
    checked = 0
    for traj in first.trajectories:
        for seg in traj.segments:
            with torch.no_grad():
                logits = model(torch.tensor([seg.tokens])).logits[0]
            for i in range(1, len(seg.tokens)):
                if seg.loss_mask[i]:
                    assert logits[i - 1, seg.tokens[i]] >= logits[i - 1].max() - 1e-4
                    assert seg.behavior_logprobs[i] == 0.0
                    checked += 1
    assert checked >= 6 * 8
    sampled_logprobs = [lp for t in first.sampled.trajectories for s in t.segments
                        for m, lp in zip(s.loss_mask, s.behavior_logprobs) if m]
    assert min(sampled_logprobs) < -0.5     # T = 1 on a random model: far from a point mass
    plain = evaluate_heldout(cluster, TASKS[:3], EvalConfig(samples_per_task=2), "c")
    assert plain.decoding == "sampled" and plain.episodes == 6 and plain.sampled is None
