"""Where a run's pieces live on a Ray cluster: joining the cluster, and GPU placement groups for
the learner, the critic and the engines (the slime layout).

* ``cluster.address`` empty starts a local Ray (the one-machine default); ``auto``, ``host:6379`` or
  ``ray://host:10001`` joins a running cluster with the same code and configs.
* A :class:`PlacementPlan` is one placement group of single-GPU bundles ``{"GPU": 1, "CPU": 1}``
  and which bundles each role takes:

  ``colocated``      learner, critic and engines share one pool of ``max(L, E·tp)`` GPUs; the
                     learner (and the critic, on the same bundles) takes bundles ``0..L-1``, engine
                     ``e`` takes ``e·tp .. e·tp+tp-1``. The roles take turns on a GPU (generate, then
                     train with the engines' memory released), so actors on a shared bundle ask for a
                     fraction of its GPU.
  ``disaggregated``  separate GPUs: learner ``0..L-1``, critic the next ``C`` (or the learner's when
                     ``critic_gpus`` is 0), then the engines; generation and training overlap.

  The plan is a pure function of the config (tested without Ray); :func:`create_placement_group`
  reserves it and fails with the cluster's GPU count when the cluster cannot hold it.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rl.config import ClusterConfig


class PlacementError(RuntimeError):
    """The cluster cannot hold the planned placement group."""


@dataclass(frozen=True)
class PlacementPlan:
    bundles: tuple[dict[str, float], ...]   # one per GPU
    learner: tuple[int, ...]                # bundle indices of each role
    critic: tuple[int, ...]
    engines: tuple[tuple[int, ...], ...]    # per engine, its tp_size bundles
    colocated: bool

    @property
    def num_gpus(self) -> int:
        return len(self.bundles)


def plan_placement(cluster: ClusterConfig, num_engines: int, gpus_per_engine: int) -> PlacementPlan:
    """The bundles and their roles for `num_engines` engines of `gpus_per_engine` GPUs each (see the
    module docstring). A learner with 0 GPUs (on the CPU) takes no bundle."""
    if num_engines < 1 or gpus_per_engine < 0:
        raise ValueError(f"placement needs num_engines >= 1 and gpus_per_engine >= 0 "
                         f"(got {num_engines}, {gpus_per_engine})")
    learn = cluster.learner_gpus
    engine_gpus = num_engines * gpus_per_engine
    if cluster.placement == "colocated":
        learner = tuple(range(learn))
        critic = learner
        engines = tuple(tuple(range(e * gpus_per_engine, (e + 1) * gpus_per_engine)) for e in range(num_engines))
        total = max(learn, engine_gpus)
    else:
        learner = tuple(range(learn))
        critic = tuple(range(learn, learn + cluster.critic_gpus)) if cluster.critic_gpus else learner
        first = learn + cluster.critic_gpus
        engines = tuple(tuple(range(first + e * gpus_per_engine, first + (e + 1) * gpus_per_engine))
                        for e in range(num_engines))
        total = first + engine_gpus
    bundles = tuple({"GPU": 1.0, "CPU": 1.0} for _ in range(total))
    return PlacementPlan(bundles, learner, critic, engines, cluster.placement == "colocated")


def init_ray(cluster: ClusterConfig, local_num_cpus: int) -> None:
    """Join the cluster at ``cluster.address``, or start a local Ray with `local_num_cpus` CPUs."""
    if ray.is_initialized():
        return
    if cluster.address:
        try:
            ray.init(address=cluster.address, include_dashboard=False, configure_logging=False, log_to_driver=True)
        except ConnectionError as exc:
            raise ConnectionError(f"cannot join the Ray cluster at cluster.address={cluster.address!r}: {exc}") from exc
    else:
        ray.init(include_dashboard=False, configure_logging=False, log_to_driver=True, num_cpus=local_num_cpus)


def create_placement_group(plan: PlacementPlan, timeout_s: float) -> PlacementGroup:
    """Reserve the plan's bundles (packed onto as few nodes as possible); a cluster that cannot hold
    them within `timeout_s` gets the reservation removed and a :class:`PlacementError`."""
    if not plan.bundles:
        raise ValueError("the placement plan has no GPU bundles (every role runs on the CPU)")
    pg = placement_group(list(plan.bundles), strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        have = ray.cluster_resources()
        raise PlacementError(
            f"the cluster cannot hold {plan.num_gpus} GPU bundles ({'colocated' if plan.colocated else 'disaggregated'}: "
            f"learner {len(plan.learner)}, critic {len(plan.critic)}, engines {[len(e) for e in plan.engines]}) within "
            f"{timeout_s:.0f} s; it has {have.get('GPU', 0):g} GPUs and {have.get('CPU', 0):g} CPUs in all")
    return pg


@dataclass(frozen=True)
class Placement:
    """A reserved plan: the placement group and which bundles each role takes."""

    plan: PlacementPlan
    pg: PlacementGroup

    @property
    def gpu_fraction(self) -> float:
        """Of its bundle's GPU, what one actor asks for: half where learner and engine share it."""
        return 0.5 if self.plan.colocated else 1.0

    def learner_options(self, rank: int) -> dict:
        return on_bundle(self.pg, self.plan.learner[rank], self.gpu_fraction)

    def engine_options(self, engine: int) -> dict:
        return on_bundle(self.pg, self.plan.engines[engine][0], self.gpu_fraction)

    def release(self) -> None:
        remove_placement_group(self.pg)

    def _probe(self, bundle_index: int) -> tuple[str, list]:
        """(node address, GPU ids) as a probe task placed on the bundle sees them."""
        return ray.get(ray.remote(_where_am_i).options(**on_bundle(self.pg, bundle_index, 0.01)).remote())

    def bundle_node(self, bundle_index: int) -> str:
        """The address of the node holding a bundle (the learner's rank 0: its process group's master)."""
        return self._probe(bundle_index)[0]

    def bundle_gpu(self, bundle_index: int) -> tuple[str, int]:
        """(node address, physical GPU id) of a bundle."""
        node, gpus = self._probe(bundle_index)
        return node, int(gpus[0])

    def engine_gpu_ids(self) -> list[list[int]]:
        """Per engine, the physical GPU ids of its bundles, for servers that one process launches on
        one node (SGLang: ``CUDA_VISIBLE_DEVICES`` per server). Bundles on several nodes are refused."""
        where = [[self.bundle_gpu(b) for b in engine] for engine in self.plan.engines]
        nodes = {node for engine in where for node, _ in engine}
        if len(nodes) > 1:
            raise PlacementError(f"the engines' GPU bundles landed on {len(nodes)} nodes ({sorted(nodes)}); the "
                                 f"sglang engine launches its servers on one node: use at most one node's GPUs for "
                                 f"engines, or start the servers yourself and give sglang.urls")
        return [[gpu for _, gpu in engine] for engine in where]


def _where_am_i() -> tuple[str, list]:
    return ray.util.get_node_ip_address(), ray.get_gpu_ids()


def reserve_placement(cluster: ClusterConfig, num_engines: int, gpus_per_engine: int) -> Placement | None:
    """Reserve the run's GPU bundles (None when every role runs on the CPU). Ray must be running."""
    plan = plan_placement(cluster, num_engines, gpus_per_engine)
    if not plan.bundles:
        return None
    return Placement(plan, create_placement_group(plan, cluster.ready_timeout_s))


def on_bundle(pg: PlacementGroup, bundle_index: int, gpu_fraction: float = 1.0) -> dict:
    """Ray actor options that place an actor on one bundle of `pg`, taking `gpu_fraction` of its GPU
    (below 1 where roles share the GPU, colocated)."""
    if not 0.0 < gpu_fraction <= 1.0:
        raise ValueError(f"gpu_fraction must be in (0, 1], got {gpu_fraction}")
    return {"num_gpus": gpu_fraction, "num_cpus": 0,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=pg,
                                                                    placement_group_bundle_index=bundle_index)}
