"""The per-token arrays of a segment stay aligned; masks and versions follow the contract."""

import pytest

from rollout.trajectory import Segment, Trajectory


def test_append_keeps_arrays_aligned():
    seg = Segment(rollout_id="r", index=0)
    seg.append([1, 2, 3], sampled=False)
    seg.append([4, 5], sampled=True, logprobs=[-0.1, -0.2], versions=[3, 4])
    seg.append([6], sampled=False)
    assert seg.tokens == [1, 2, 3, 4, 5, 6]
    assert seg.loss_mask == [0, 0, 0, 1, 1, 0]
    assert seg.behavior_logprobs == [0.0, 0.0, 0.0, -0.1, -0.2, 0.0]
    assert seg.weight_versions == [-1, -1, -1, 3, 4, -1]
    assert seg.num_action_tokens == 2
    assert seg.oldest_version() == 3


def test_sampled_tokens_need_logprobs_and_versions():
    seg = Segment(rollout_id="r", index=0)
    with pytest.raises(ValueError, match="one log-prob and one version"):
        seg.append([1, 2], sampled=True, logprobs=[-0.1], versions=[0, 0])
    with pytest.raises(ValueError):
        seg.append([1], sampled=True)
    assert seg.tokens == []


def test_trajectory_oldest_version_spans_segments():
    a, b = Segment("r", 0), Segment("r", 1)
    a.append([1], sampled=True, logprobs=[0.0], versions=[5])
    b.append([2], sampled=True, logprobs=[0.0], versions=[2])
    traj = Trajectory(rollout_id="r", task_id="t", segments=[a, b])
    assert traj.oldest_version() == 2
    assert traj.num_action_tokens == 2
