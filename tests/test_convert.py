"""`horizonrl-convert`: a checkpoint's DeepSpeed state -> transformers checkpoints of the policy and the
critic, equal to the learner's weights (ZeRO 0 and 3); a bad path is a clear error naming it."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

from envs.suite import builtin_suite
from rl.batch import collate
from rl.checkpoint import save_checkpoint
from rl.config import AlgoConfig, DeepSpeedConfig
from rl.convert import main
from rl.learner import CriticLearner, PolicyLearner, PPOLearner, init_distributed
from rl.orchestrator import TaskSampler
from test_learner import make_trajectories
from tiny_models import save_tiny_qwen2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    init_distributed(DeepSpeedConfig(master_port=29637))
    return save_tiny_qwen2(tmp_path_factory.mktemp("policy"), 48)


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_policy_and_critic_convert_to_the_learners_weights(model_dir, tmp_path, zero_stage, capsys):
    algo = AlgoConfig(critic_warmup_steps=0, policy_lr=1e-2, critic_lr=1e-2)
    ds = DeepSpeedConfig(zero_stage=zero_stage)
    learner = PPOLearner(PolicyLearner(model_dir, algo.policy_lr, algo, ds, 1.0), CriticLearner(model_dir, algo, ds), algo)
    batch = collate(make_trajectories(8, 0), 0)
    learner.train_step(batch)
    ckpt = save_checkpoint(tmp_path / "ckpt", 1, learner, TaskSampler(builtin_suite(0)[:4], 0), version=1,
                           metrics_history=[], extra={})

    assert main([str(tmp_path / "ckpt"), str(tmp_path / "policy")]) == 0        # the root: its latest checkpoint
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "policy")   # the last line
    policy = AutoModelForCausalLM.from_pretrained(str(tmp_path / "policy")).state_dict()
    expected = learner.policy.state_dict()
    assert policy.keys() == expected.keys()
    assert all(torch.allclose(policy[k], expected[k]) for k in expected)

    assert main([str(ckpt), str(tmp_path / "critic"), "--part", "critic"]) == 0
    critic = AutoModelForTokenClassification.from_pretrained(str(tmp_path / "critic"), num_labels=1)
    with torch.no_grad():
        values = critic(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[..., 0]
        values = torch.nn.functional.pad(values[:, :-1], (1, 0)) * batch.action_mask
    assert float(values.abs().max()) > 0                                        # the trained head, not a fresh zero one
    assert torch.allclose(values, learner.critic.values(batch), atol=1e-5)


def test_a_missing_checkpoint_names_the_path(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 1
    assert str(tmp_path / "nowhere") in capsys.readouterr().err
