"""Placement plans (pure) for colocated and disaggregated runs, the typed cluster config, and the
placement group on a local Ray with logical GPUs: an actor lands on its bundle, a plan larger than
the cluster fails with a clear error."""

import pytest
import ray

from rl.config import ClusterConfig
from rl.placement import PlacementError, create_placement_group, init_ray, on_bundle, plan_placement


def test_colocated_roles_share_one_pool():
    plan = plan_placement(ClusterConfig(placement="colocated", learner_gpus=8), num_engines=4, gpus_per_engine=2)
    assert plan.num_gpus == 8 and plan.colocated
    assert plan.learner == plan.critic == tuple(range(8))
    assert plan.engines == ((0, 1), (2, 3), (4, 5), (6, 7))


def test_disaggregated_roles_take_separate_gpus():
    plan = plan_placement(ClusterConfig(placement="disaggregated", learner_gpus=2, critic_gpus=2),
                          num_engines=2, gpus_per_engine=2)
    assert plan.num_gpus == 8 and not plan.colocated
    assert plan.learner == (0, 1) and plan.critic == (2, 3) and plan.engines == ((4, 5), (6, 7))
    shared = plan_placement(ClusterConfig(placement="disaggregated", learner_gpus=4), num_engines=4, gpus_per_engine=1)
    assert shared.critic == shared.learner == (0, 1, 2, 3) and shared.engines == ((4,), (5,), (6,), (7,))
    assert all(b == {"GPU": 1.0, "CPU": 1.0} for b in shared.bundles)


def test_cluster_config_is_checked():
    with pytest.raises(ValueError, match="colocated or disaggregated"):
        ClusterConfig(placement="spread")
    with pytest.raises(ValueError, match="critic_gpus is for placement=disaggregated"):
        ClusterConfig(placement="colocated", critic_gpus=2)
    with pytest.raises(ValueError, match="learner_gpus"):
        ClusterConfig(learner_gpus=-1)


def test_placement_group_on_local_ray_with_logical_gpus():
    assert not ray.is_initialized()
    ray.init(num_cpus=4, num_gpus=4, include_dashboard=False, configure_logging=False)
    try:
        init_ray(ClusterConfig(address="ray://nowhere:1"), 2)  # already initialised: joins nothing new
        plan = plan_placement(ClusterConfig(placement="disaggregated", learner_gpus=1), num_engines=3, gpus_per_engine=1)
        pg = create_placement_group(plan, timeout_s=60)

        @ray.remote
        class Probe:
            def gpus(self):
                return ray.get_gpu_ids()

        engine = Probe.options(**on_bundle(pg, plan.engines[2][0])).remote()
        assert len(ray.get(engine.gpus.remote())) == 1
        # colocated roles share a bundle's GPU by fractions
        a, b = (Probe.options(**on_bundle(pg, 0, gpu_fraction=0.5)).remote() for _ in range(2))
        assert ray.get(a.gpus.remote()) == ray.get(b.gpus.remote())
        too_big = plan_placement(ClusterConfig(placement="disaggregated", learner_gpus=4), num_engines=2,
                                 gpus_per_engine=1)
        with pytest.raises(PlacementError, match="cannot hold 6 GPU bundles.*it has 4 GPUs"):
            create_placement_group(too_big, timeout_s=2)
    finally:
        ray.shutdown()
