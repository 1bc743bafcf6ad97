"""Placement plans (pure) for colocated and disaggregated runs, the typed cluster config, and the
placement group on a local Ray with logical GPUs: an actor lands on its bundle, a plan larger than
the cluster fails with a clear error."""

import pytest
import ray

from rl.config import ClusterConfig
from rl.placement import PlacementError, create_placement_group, init_ray, on_bundle, plan_placement, reserve_placement


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


def test_a_run_reserves_its_plan_and_each_role_gets_its_bundles_gpus(tmp_path):
    """What the driver does on GPUs (logical ones here): reserve the plan, give the sglang launcher
    each engine's GPU ids, put learner ranks on the learner's bundles."""
    from rl.config import TrainConfig
    from rl.orchestrator import engine_gpus
    from rollout.sglang_engine import SGLangConfig

    assert not ray.is_initialized()
    ray.init(num_cpus=4, num_gpus=4, include_dashboard=False, configure_logging=False)
    try:
        cfg = TrainConfig(cluster=ClusterConfig(placement="disaggregated", learner_gpus=2))
        assert engine_gpus(cfg) == (1, 0)                              # the hf engine on the CPU: no GPU
        cfg.engine.type, cfg.sglang = "sglang", SGLangConfig(num_engines=2, tp_size=1)
        assert engine_gpus(cfg) == (2, 1)
        placement = reserve_placement(cfg.cluster, *engine_gpus(cfg))
        ids = placement.engine_gpu_ids()
        learner = [placement.bundle_gpu(b)[1] for b in placement.plan.learner]
        assert len(ids) == 2 and all(len(e) == 1 for e in ids)
        assert sorted([*learner, *(g for e in ids for g in e)]) == [0, 1, 2, 3]   # every role its own GPU
        cfg.sglang = SGLangConfig(num_engines=2, urls=["http://a:1", "http://b:2"])
        assert engine_gpus(cfg) == (2, 0)                              # servers someone else runs: none reserved
        placement.release()
        assert reserve_placement(ClusterConfig(), 1, 0) is None        # all on the CPU: no placement group
    finally:
        ray.shutdown()
