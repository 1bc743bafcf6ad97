"""The DeepSpeed learner on a tiny model: PPO steps are finite, the critic fits returns, the
policy moves toward positive-advantage actions, and micro-batching does not change the step."""

import math

import pytest
import torch

from rl.batch import collate, micro_batches, mini_batch_rows, pack, packed_micro_batches, trainable, unpack
from rl.config import AlgoConfig, DeepSpeedConfig
from rl.learner import (CriticLearner, PolicyLearner, PPOLearner, compute_advantages, init_distributed,
                        policy_decay_steps, policy_mini_batches, token_logprobs,
                        warmup_cosine_lr_factor)
from rollout.trajectory import Segment, Status, Trajectory
from tiny_models import save_tiny_qwen2

VOCAB = 48


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    init_distributed(DeepSpeedConfig(master_port=29617))
    return save_tiny_qwen2(tmp_path_factory.mktemp("policy"), VOCAB)


def make_trajectories(n: int, seed: int) -> list[Trajectory]:
    """Prompt (mask 0), action (mask 1), observation (mask 0), action (mask 1); reward 1 iff the
    first action token is even."""
    g = torch.Generator().manual_seed(seed)
    trajs = []
    for i in range(n):
        seg = Segment(rollout_id=f"r{i}", index=0)
        seg.append(torch.randint(1, VOCAB, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g).tolist(), sampled=False)
        first = torch.randint(1, VOCAB, (3,), generator=g).tolist()
        seg.append(first, sampled=True, logprobs=[-math.log(VOCAB)] * 3, versions=[0] * 3)
        seg.append([5, 6], sampled=False)
        seg.append([7, 8], sampled=True, logprobs=[-math.log(VOCAB)] * 2, versions=[0] * 2)
        reward = float(first[0] % 2 == 0)
        trajs.append(Trajectory(rollout_id=f"r{i}", task_id="t", segments=[seg], reward=reward, passed=bool(reward)))
    return trajs


def test_env_errors_are_not_trained_on():
    trajs = make_trajectories(3, 0)
    trajs[1].status = Status.ENV_ERROR
    assert [t.rollout_id for t in trainable(trajs)] == ["r0", "r2"]


def test_micro_batches_respect_the_token_budget():
    batch = collate(make_trajectories(10, 1), pad_token_id=0)
    groups = micro_batches(batch, token_budget=40)
    assert sorted(i for g in groups for i in g) == list(range(10))
    lengths = batch.attention_mask.sum(-1)
    for g in groups:
        assert len(g) == 1 or len(g) * int(lengths[g].max()) <= 40


def test_packed_micro_batches_fill_the_budget_with_real_tokens():
    batch = collate(make_trajectories(10, 1), pad_token_id=0)
    lengths = batch.attention_mask.sum(-1)
    groups = packed_micro_batches(batch, token_budget=40)
    assert sorted(i for g in groups for i in g) == list(range(10))
    assert all(len(g) == 1 or int(lengths[g].sum()) <= 40 for g in groups)
    assert len(groups) <= len(micro_batches(batch, token_budget=40))
    assert len(packed_micro_batches(batch, token_budget=int(lengths.sum()))) == 1
    mb = batch.rows(groups[0])
    inputs = pack(mb)
    assert inputs["input_ids"].shape == (1, int(lengths[groups[0]].sum()))
    starts = (inputs["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert starts == [0] + lengths[groups[0]].cumsum(0)[:-1].tolist()   # positions restart at every sample
    assert torch.equal(unpack(mb, inputs["input_ids"][..., None])[..., 0], mb.input_ids * mb.attention_mask)


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_packed_sequences_give_the_padded_step(model_dir, zero_stage):
    """Packing changes where tokens sit, not what the model computes: the same log-probs, values,
    losses and updated weights as the padded micro-batches (a missing per-sample attention mask
    would let samples attend to each other and change all of them)."""
    batch = collate(make_trajectories(12, 13), pad_token_id=0)
    results = {}
    for packed in (False, True):
        algo = AlgoConfig(critic_warmup_steps=0, policy_lr=1e-2, critic_lr=1e-2, micro_batch_tokens=48,
                          pack_sequences=packed, kl_coef=0.1)
        ds = DeepSpeedConfig(zero_stage=zero_stage)
        learner = PPOLearner(PolicyLearner(model_dir, algo.policy_lr, algo, ds, temperature=1.0),
                             CriticLearner(model_dir, algo, ds), algo)
        start = learner.policy.logprobs(batch)
        batch.behavior_logprobs = start * batch.action_mask
        metrics = learner.train_step(batch)
        results[packed] = (start, metrics, learner.policy.logprobs(batch), learner.critic.values(batch))
    (lp0, m0, after0, v0), (lp1, m1, after1, v1) = results[False], results[True]
    mask = batch.action_mask.bool()
    assert torch.allclose(lp0[mask], lp1[mask], atol=1e-5)
    assert abs(m0["policy/loss"] - m1["policy/loss"]) < 1e-5 and abs(m0["critic/loss"] - m1["critic/loss"]) < 1e-5
    assert torch.allclose(after0[mask], after1[mask], atol=1e-4) and not torch.allclose(after0[mask], lp0[mask])
    assert torch.allclose(v0[mask], v1[mask], atol=1e-4)


@pytest.mark.parametrize("zero_stage", [1, 3])
def test_offloading_between_phases_changes_nothing_the_learner_computes(model_dir, zero_stage):
    """Colocated training moves the learner's states off the device between its turns: two steps with
    an offload before each give the weights of two plain steps (the second step onloads by itself)."""
    batch = collate(make_trajectories(8, 17), pad_token_id=0)
    algo = AlgoConfig(critic_warmup_steps=0, policy_lr=1e-2, critic_lr=1e-2, micro_batch_tokens=64)
    ds = DeepSpeedConfig(zero_stage=zero_stage)
    after = {}
    for offload in (False, True):
        learner = PPOLearner(PolicyLearner(model_dir, algo.policy_lr, algo, ds, temperature=1.0),
                             CriticLearner(model_dir, algo, ds), algo)
        batch.behavior_logprobs = learner.policy.logprobs(batch) * batch.action_mask
        for _ in range(2):
            if offload:
                learner.offload()
                assert learner.offloaded
            learner.train_step(batch)
            assert not learner.offloaded
        after[offload] = learner.policy.state_dict()
    assert all(torch.allclose(after[False][k], after[True][k]) for k in after[False])
    with pytest.raises(ValueError, match="zero_stage >= 1"):
        PolicyLearner(model_dir, 1e-3, algo, DeepSpeedConfig(zero_stage=0), temperature=1.0).offload()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
@pytest.mark.parametrize("zero_stage", [1, 3])
def test_offloading_gives_the_gpu_memory_back_and_the_next_step_brings_it_again(model_dir, zero_stage):
    """Colocated turn-taking on a GPU: after a step, `offload()` frees at least the fp32 parameters of
    policy and critic (ZeRO-1: parameters, gradients and Adam moments; ZeRO-3 with torch AdamW:
    parameters and gradient buffers), and the next `train_step` takes them back onto the GPU."""
    algo = AlgoConfig(critic_warmup_steps=0, micro_batch_tokens=64)
    ds = DeepSpeedConfig(zero_stage=zero_stage)
    learner = PPOLearner(PolicyLearner(model_dir, 1e-3, algo, ds, temperature=1.0), CriticLearner(model_dir, algo, ds), algo)
    batch = collate(make_trajectories(8, 17), pad_token_id=0)
    learner.train_step(batch)                                   # optimiser states exist from here on
    param_bytes = 4 * sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel()
                          for m in (learner.policy.engine, learner.critic.engine) for p in m.module.parameters())
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    learner.offload()
    torch.cuda.synchronize()
    freed = held - torch.cuda.memory_allocated()
    assert freed >= (3 if zero_stage == 1 else 1) * param_bytes, (held, freed, param_bytes)
    metrics = learner.train_step(batch)
    assert not learner.offloaded and all(math.isfinite(v) for v in metrics.values())
    assert torch.cuda.memory_allocated() >= held - param_bytes // 2


def test_advantages_zero_outside_actions_and_returns_equal_reward(model_dir):
    batch = collate(make_trajectories(6, 2), pad_token_id=0)
    values = torch.randn_like(batch.action_mask) * batch.action_mask
    adv = compute_advantages(batch, values, AlgoConfig(whiten_advantages=False))
    assert torch.all(adv.advantages[batch.action_mask == 0] == 0)
    # gamma = lambda_critic = 1 with an outcome reward: the critic target is R on every action token
    expected = batch.rewards[:, None].expand_as(batch.action_mask) * batch.action_mask
    assert torch.allclose(adv.returns, expected, atol=1e-6)


def test_warmup_cosine_lr_factor_by_hand():
    # warm-up W=3: (s+1)/4; decay to m=0.1 by D=7: 0.1 + 0.9 * (1 + cos(pi * (s-3)/4)) / 2
    f = [warmup_cosine_lr_factor(s, 3, 7, 0.1) for s in range(9)]
    expected = [0.25, 0.5, 0.75, 1.0, 0.1 + 0.45 * (1 + math.cos(math.pi / 4)), 0.55,
                0.1 + 0.45 * (1 + math.cos(3 * math.pi / 4)), 0.1, 0.1]
    assert f == pytest.approx(expected, abs=1e-12)
    # no decay steps: constant after the warm-up, whatever the ratio
    assert [warmup_cosine_lr_factor(s, 2, 0, 0.1) for s in range(5)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])


def test_sft_steps_follow_the_cosine_schedule_to_the_floor(model_dir):
    algo = AlgoConfig(micro_batch_tokens=64)
    learner = PolicyLearner(model_dir, 1e-2, algo, DeepSpeedConfig(zero_stage=1), temperature=1.0,
                            warmup_steps=1, decay_steps=5, min_lr_ratio=0.2)
    batch = collate(make_trajectories(4, 1), pad_token_id=0)
    lrs = [learner.sft_step(batch)["sft/lr"] for _ in range(7)]
    # sft/lr is the rate the next step will use: after step s it is f(s + 1)
    assert lrs == pytest.approx([1e-2 * warmup_cosine_lr_factor(s + 1, 1, 5, 0.2) for s in range(7)])
    assert lrs[-1] == pytest.approx(2e-3) and max(lrs) == pytest.approx(1e-2)


def test_policy_decay_steps_count_every_optimiser_step_of_the_run():
    assert policy_decay_steps(AlgoConfig(policy_lr_decay="cosine", policy_updates=2, policy_mini_batches=4), 10) == 80
    assert policy_decay_steps(AlgoConfig(policy_updates=2, policy_mini_batches=4), 10) == 0   # constant
    # OPD: off-policy and replayed optimiser steps extend the schedule; a constant rate stays constant
    assert policy_decay_steps(AlgoConfig(policy_lr_decay="cosine"), 10, extra_steps=7) == 17
    assert policy_decay_steps(AlgoConfig(), 10, extra_steps=7) == 0


def test_ppo_steps_learn_and_stay_finite(model_dir):
    algo = AlgoConfig(critic_warmup_steps=1, policy_lr=3e-3, critic_lr=3e-3, micro_batch_tokens=64)
    ds = DeepSpeedConfig(zero_stage=1)
    learner = PPOLearner(PolicyLearner(model_dir, algo.policy_lr, algo, ds, temperature=1.0),
                         CriticLearner(model_dir, algo, ds), algo)
    batch = collate(make_trajectories(24, 3), pad_token_id=0)
    with torch.no_grad():
        logits = learner.policy.engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        batch.behavior_logprobs = token_logprobs(logits, batch.input_ids, 1.0) * batch.action_mask
    first = learner.train_step(batch)
    assert "policy/loss" not in first  # critic warm-up: no policy step yet
    losses = []
    for _ in range(6):
        metrics = learner.train_step(batch)
        losses.append(metrics["critic/loss"])
        assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert losses[-1] < losses[0]
    # the first action token of rewarded rollouts became more likely
    with torch.no_grad():
        logits = learner.policy.engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        new = token_logprobs(logits, batch.input_ids, 1.0)
    first_action = batch.action_mask.argmax(-1)
    rows = torch.arange(len(first_action))
    delta = (new - batch.behavior_logprobs)[rows, first_action]
    rewarded = batch.rewards > 0
    assert delta[rewarded].mean() > delta[~rewarded].mean()


def test_a_new_value_head_starts_at_zero_and_a_trained_one_is_kept(model_dir, tmp_path):
    algo, ds = AlgoConfig(critic_lr=3e-3, micro_batch_tokens=64), DeepSpeedConfig(zero_stage=0)
    batch = collate(make_trajectories(4, 5), pad_token_id=0)
    critic = CriticLearner(model_dir, algo, ds)  # from a causal LM: the head is new
    assert torch.count_nonzero(critic.values(batch)) == 0
    critic.step(batch, torch.zeros_like(batch.action_mask), batch.action_mask)  # fit towards 1
    trained = critic.values(batch)
    assert torch.count_nonzero(trained) > 0
    critic.engine.module.save_pretrained(str(tmp_path))
    reloaded = CriticLearner(tmp_path, algo, ds)  # a critic checkpoint: its head is kept
    assert torch.allclose(reloaded.values(batch), trained)


def test_ppo_clip_epochs_stop_pushing_once_the_ratio_leaves_the_clip_range(model_dir):
    """policy_loss = ppo_clip with several epochs per batch: π_old is the policy before the first
    epoch (ratio 1, nothing clipped), later epochs clip; the rewarded first tokens gain, and the
    ratios of positive-advantage tokens stay near the clip bound instead of running away."""
    algo = AlgoConfig(critic_warmup_steps=0, policy_lr=3e-2, micro_batch_tokens=64, policy_loss="ppo_clip",
                      clip_low=0.2, clip_high=0.2, policy_updates=6, whiten_advantages=True)
    ds = DeepSpeedConfig(zero_stage=0)
    policy = PolicyLearner(model_dir, algo.policy_lr, algo, ds, temperature=1.0)
    batch = collate(make_trajectories(24, 7), pad_token_id=0)
    old = policy.logprobs(batch)
    batch.behavior_logprobs = old * batch.action_mask
    adv = compute_advantages(batch, torch.zeros_like(batch.action_mask), algo).advantages
    epochs = [policy.ppo_step(batch, adv, old) for _ in range(algo.policy_updates)]
    assert epochs[0]["policy/clipfrac"] == 0.0 and abs(epochs[0]["policy/ratio_mean"] - 1.0) < 1e-5
    assert epochs[-1]["policy/clipfrac"] > 0.0
    new = policy.logprobs(batch)
    ratio = torch.exp(new - old)[batch.action_mask.bool() & (adv > 0)]
    assert ratio.mean() > 1.0
    assert ratio.median() < 1.0 + 3 * algo.clip_high   # the clip held most of them back
    with pytest.raises(ValueError, match="pi_old"):
        policy.ppo_step(batch, adv)


def test_kl_penalty_keeps_the_policy_near_its_reference_and_resume_keeps_the_reference(model_dir, tmp_path):
    """The same PPO steps with and without `kl_coef`: with it the policy ends closer to the policy
    it started from. A checkpoint records that reference, so a resumed run keeps it."""
    from rl.checkpoint import reference_of, save_checkpoint
    from rl.orchestrator import TaskSampler
    from envs.suite import builtin_suite
    batch = collate(make_trajectories(24, 11), pad_token_id=0)
    ds = DeepSpeedConfig(zero_stage=0)
    drift = {}
    for coef in (0.0, 5.0):
        algo = AlgoConfig(critic_warmup_steps=0, policy_lr=1e-2, micro_batch_tokens=64, kl_coef=coef)
        policy = PolicyLearner(model_dir, algo.policy_lr, algo, ds, temperature=1.0)
        start = policy.logprobs(batch)
        batch.behavior_logprobs = start * batch.action_mask
        adv = compute_advantages(batch, torch.zeros_like(batch.action_mask), algo).advantages
        for _ in range(8):
            metrics = policy.ppo_step(batch, adv)
        logr = (policy.logprobs(batch) - start)[batch.action_mask.bool()]
        drift[coef] = float((torch.exp(-logr) - 1 + logr).mean())   # k3 estimate of KL(pi || pi_start)
        if coef:
            assert metrics["policy/kl_ref"] > 0.0 and policy.reference.path == model_dir
    assert drift[5.0] < 0.5 * drift[0.0]
    learner = PPOLearner(policy, CriticLearner(model_dir, algo, ds), algo)
    sampler = TaskSampler([t for t in builtin_suite(0) if t.split == "train"][:4], seed=0)
    ckpt = save_checkpoint(tmp_path / "ckpts", 1, learner, sampler, version=1, metrics_history=[], extra={})
    assert reference_of(ckpt) == model_dir and reference_of(tmp_path / "ckpts") == model_dir
    assert reference_of(None) is None


def test_mini_batches_are_interleaved_optimiser_steps_of_the_whole_batchs_advantages(model_dir):
    """algo.policy_mini_batches = 2: train_step takes one policy step on rows 0, 2, 4, ... and then one on
    rows 1, 3, 5, ..., with the advantages computed once over the whole batch (so whitening and GAE
    see every sample); the same two ppo_step calls by hand give the same weights."""
    assert mini_batch_rows(torch.arange(5), 2) == [[0, 2, 4], [1, 3]]
    # a data-parallel shard (samples 1, 2, 5, 6 of the collated batch) keeps the global assignment
    assert mini_batch_rows(torch.tensor([1, 2, 5, 6]), 4) == [[], [0, 2], [1, 3], []]
    with pytest.raises(ValueError, match="algo.policy_mini_batches=4 .* got 3"):
        policy_mini_batches(collate(make_trajectories(3, 17), pad_token_id=0), 4)
    algo = AlgoConfig(critic_warmup_steps=0, policy_lr=1e-2, micro_batch_tokens=64, policy_mini_batches=2)
    ds = DeepSpeedConfig(zero_stage=0)
    batch = collate(make_trajectories(12, 17), pad_token_id=0)
    auto = PPOLearner(PolicyLearner(model_dir, algo.policy_lr, algo, ds, 1.0), CriticLearner(model_dir, algo, ds), algo)
    values = auto.critic.values(batch)
    adv = compute_advantages(batch, values, algo).advantages
    auto.train_step(batch)
    by_hand = PolicyLearner(model_dir, algo.policy_lr, algo, ds, 1.0)
    for rows in ([0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]):
        by_hand.ppo_step(batch.rows(rows), adv[rows])
    one_step = PolicyLearner(model_dir, algo.policy_lr, algo, ds, 1.0)
    one_step.ppo_step(batch, adv)
    after, want, single = auto.policy.logprobs(batch), by_hand.logprobs(batch), one_step.logprobs(batch)
    assert torch.allclose(after, want, atol=1e-5)
    assert not torch.allclose(after, single, atol=1e-4)     # two optimiser steps, not one


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
@pytest.mark.parametrize("policy_loss", ["dis", "ppo_clip"])
def test_train_step_on_a_gpu_takes_the_drivers_cpu_batch(model_dir, policy_loss):
    """The train driver collates on the CPU; the learner moves the batch (and the KL reference) to its GPU."""
    algo = AlgoConfig(critic_warmup_steps=0, kl_coef=0.1, policy_loss=policy_loss, policy_updates=2,
                      micro_batch_tokens=64)
    learner = PPOLearner(PolicyLearner(model_dir, 1e-3, algo, DeepSpeedConfig(), 1.0),
                         CriticLearner(model_dir, algo, DeepSpeedConfig()), algo)
    assert learner.policy.engine.device.type == "cuda"
    batch = collate(make_trajectories(16, 13), pad_token_id=0)
    metrics = [learner.train_step(batch) for _ in range(2)][-1]
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["policy/kl_ref"] >= 0.0
    assert learner.policy.sft_step(batch)["sft/nll"] > 0.0
