"""The data-parallel learner: two DeepSpeed ranks in Ray actors (gloo on the CPU) make the same update
as the in-process learner on the whole batch, for ZeRO 0 and 3; shards keep rollouts whole; checkpoints
written by the group resume in it; bad settings fail with a clear error."""

import math

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from envs.suite import builtin_suite
from rl.batch import collate
from rl.convert import convert
from rl.config import AlgoConfig, ClusterConfig, DeepSpeedConfig, TrainConfig
from rl.learner import init_distributed, token_logprobs
from rl.learner_group import LearnerGroup, LearnerSpec, LocalLearner, build_learner, merge_metrics, shard_by_rollout
from rl.orchestrator import TaskSampler
from rollout.trajectory import Segment, Trajectory
from tiny_models import save_tiny_qwen2

VOCAB = 48
TASKS = builtin_suite(0)[:20]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    init_distributed(DeepSpeedConfig(master_port=29627))
    return save_tiny_qwen2(tmp_path_factory.mktemp("policy"), VOCAB)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def trajectories(n: int, seed: int) -> list[Trajectory]:
    """Rollouts of one or two segments (prompt, actions, an observation), rewards 0/1, lengths varied."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        segs = []
        for s in range(1 + i % 2):
            seg = Segment(rollout_id=f"r{i}", index=s)
            seg.append(torch.randint(1, VOCAB, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist(),
                       sampled=False)
            k = int(torch.randint(2, 7, (1,), generator=g))
            seg.append(torch.randint(1, VOCAB, (k,), generator=g).tolist(), sampled=True,
                       logprobs=[-math.log(VOCAB)] * k, versions=[0] * k)
            seg.append([5, 6], sampled=False)
            seg.append([7, 8], sampled=True, logprobs=[-math.log(VOCAB)] * 2, versions=[0] * 2)
            segs.append(seg)
        reward = float(i % 3 == 0)
        out.append(Trajectory(rollout_id=f"r{i}", task_id="t", segments=segs, reward=reward, passed=bool(reward)))
    return out


def spec(model_dir, zero_stage: int, offload: bool = False, mini_batches: int = 1) -> LearnerSpec:
    algo = AlgoConfig(critic_warmup_steps=0, policy_lr=1e-2, critic_lr=1e-2, micro_batch_tokens=48, weight_decay=0.0,
                      policy_mini_batches=mini_batches)
    ds = DeepSpeedConfig(zero_stage=zero_stage, offload_optimizer=offload, offload_params=offload)
    return LearnerSpec(str(model_dir), None, algo, ds, 1.0, 1, 0)


def batch_for(model_dir):
    batch = collate(trajectories(12, 1), pad_token_id=0)
    policy = AutoModelForCausalLM.from_pretrained(str(model_dir))
    with torch.no_grad():   # behaviour log-probs a little off the current policy: DIS ratios are not all 1
        logits = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        batch.behavior_logprobs = (token_logprobs(logits, batch.input_ids, 1.0) - 0.05) * batch.action_mask
    return batch


def test_shards_keep_rollouts_whole_and_balance_tokens():
    batch = collate(trajectories(9, 2), pad_token_id=0)
    shards = shard_by_rollout(batch, 2)
    seen = [set(s.rollout_index.tolist()) for s in shards]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(9))
    for shard, rollouts in zip(shards, seen):
        for r in rollouts:   # every segment of a rollout lands with it
            assert int((shard.rollout_index == r).sum()) == int((batch.rollout_index == r).sum())
    tokens = [float(s.action_mask.sum()) for s in shards]
    assert sum(tokens) == float(batch.action_mask.sum())
    assert abs(tokens[0] - tokens[1]) <= max(float(batch.action_mask[batch.rollout_index == r].sum()) for r in range(9))
    with pytest.raises(ValueError, match="cannot feed 3 learner ranks"):
        shard_by_rollout(collate(trajectories(2, 3), pad_token_id=0), 3)


def test_metrics_merge_sums_shares_and_averages_the_rest():
    merged = merge_metrics([{"policy/loss": 0.25, "critic/explained_variance": 0.2, "train/samples": 3.0},
                            {"policy/loss": 0.5, "critic/explained_variance": 0.4, "train/samples": 5.0}])
    assert merged == pytest.approx({"policy/loss": 0.75, "critic/explained_variance": 0.3, "train/samples": 8.0})


@pytest.mark.parametrize("zero_stage,offload", [(0, False), (3, False), (3, True)])
def test_two_ranks_make_the_single_rank_update(model_dir, local_ray, zero_stage, offload, tmp_path):
    batch = batch_for(model_dir)
    local = LocalLearner(spec(model_dir, zero_stage))
    group = LearnerGroup(spec(model_dir, zero_stage, offload), world_size=2)
    try:
        before = local.state_dict()
        m_local, m_group = local.train_step(batch), group.train_step(batch)
        after_local, after_group = local.state_dict(), group.state_dict()
        moved = max(float((after_local[k] - before[k]).abs().max()) for k in before)
        assert moved > 1e-3                                 # the step changed the weights
        for k in after_local:
            assert torch.allclose(after_group[k], after_local[k], atol=1e-5, rtol=1e-4), k
        for key in ("policy/loss", "policy/entropy", "critic/loss", "train/action_tokens", "train/samples"):
            assert m_group[key] == pytest.approx(m_local[key], rel=1e-4, abs=1e-6), key
        assert m_group["policy/grad_norm"] == pytest.approx(m_local["policy/grad_norm"], rel=1e-3)

        # a checkpoint the group writes, loaded by a fresh group, continues with the same weights and data position
        sampler = TaskSampler(TASKS, 0)
        sampler.next_batch(7)
        root = group.save_checkpoint(tmp_path / "ckpt", 1, sampler, version=1, metrics_history=[{"step": 0}],
                                     extra={"ema": 0.5}, keep=2).parent
        fresh_sampler = TaskSampler(TASKS, 0)
        # the ranks' DeepSpeed state alone makes the same transformers checkpoint (ZeRO-3: merged partitions)
        converted = AutoModelForCausalLM.from_pretrained(str(convert(root, tmp_path / "hf"))).state_dict()
        assert all(torch.allclose(converted[k], after_group[k]) for k in after_group)
        group.shutdown()
        group = LearnerGroup(spec(model_dir, zero_stage, offload), world_size=2)
        state = group.load_checkpoint(root, fresh_sampler)
        assert state.step == 1 and state.extra == {"ema": 0.5} and group.steps_done == 1
        assert fresh_sampler.state() == sampler.state()
        resumed = group.state_dict()
        assert all(torch.equal(resumed[k], after_group[k]) for k in after_group)
    finally:
        group.shutdown()


def test_two_ranks_step_on_the_single_ranks_mini_batches_even_with_a_shard_short_of_them(model_dir, local_ray):
    """algo.policy_mini_batches = 10 over 18 samples: mini-batch i is samples i, i + 10 of the collated
    batch whichever rank holds them, so each rank's shard (9 samples) lacks one of them and takes part
    in that optimiser step with zero gradient; the 10 steps give the single rank's weights."""
    batch = batch_for(model_dir)
    assert batch.input_ids.shape[0] == 18
    assert min(s.input_ids.shape[0] for s in shard_by_rollout(batch, 2)) < 10
    local = LocalLearner(spec(model_dir, 0, mini_batches=10))
    group = LearnerGroup(spec(model_dir, 0, mini_batches=10), world_size=2)
    try:
        before = local.state_dict()
        m_local, m_group = local.train_step(batch), group.train_step(batch)
        after_local, after_group = local.state_dict(), group.state_dict()
        assert max(float((after_local[k] - before[k]).abs().max()) for k in before) > 1e-3
        for k in after_local:   # a key bias has no gradient but float noise, which ten Adam steps scale up to ~2e-5
            atol = 1e-4 if k.endswith("k_proj.bias") else 1e-5
            assert torch.allclose(after_group[k], after_local[k], atol=atol, rtol=1e-4), k
        for key in ("policy/loss", "policy/entropy", "train/samples"):
            assert m_group[key] == pytest.approx(m_local[key], rel=1e-4, abs=1e-6), key
    finally:
        group.shutdown()


def test_build_learner_picks_the_mode_and_refuses_what_it_cannot_do(model_dir):
    assert ClusterConfig().dp_ranks == 0 and ClusterConfig(learner_gpus=4).dp_ranks == 4
    with pytest.raises(ValueError, match="learner_ranks = 2 must equal cluster.learner_gpus = 4"):
        ClusterConfig(learner_gpus=4, learner_ranks=2)
    cfg = TrainConfig(cluster=ClusterConfig(placement="disaggregated", learner_ranks=2, critic_gpus=1))
    with pytest.raises(ValueError, match="critic_gpus > 0"):
        build_learner(model_dir, cfg, None)
