"""Ray rollout workers: each runs many episodes concurrently (asyncio) against a shared engine."""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from antihack.context import TaskContext
from antihack.guard import EpisodeGuard, Guard, GuardConfig
from envs.docker_sandbox import DEFAULT_DOCKER_URL, DEFAULT_IMAGE, DockerConfig, cleanup_stale
from envs.env import CodingEnv
from envs.leak import is_leaky, leak_free_grade
from envs.pool import PoolConfig, SandboxPool
from envs.sandbox import BACKENDS, SandboxFactory, SandboxLimits, SandboxPathError, make_sandbox
from envs.tasks import EVAL_ARTIFACTS_DIR, Task
from envs.tools import ToolCall
from rollout.agent import AgentConfig, run_episode
from rollout.chat import ParseError, parse_tool_call
from rollout.engine import GenerateOutput, SamplingParams
from rollout.tokenizer import load_tokenizer
from rollout.trajectory import Status, Trajectory


@dataclass
class DockerEnvConfig:
    """The ``docker`` backend (``env=docker``): the engine, the image, and each worker's pool."""

    image: str = DEFAULT_IMAGE          # build it with `horizonrl-env docker-image`
    base_url: str = DEFAULT_DOCKER_URL  # the engine's API, on this host
    label: str = "horizonrl-rollout"    # containers of dead workers with this label are removed at worker start
    cpus: float = 1.0                   # CPU quota per container
    max_live: int = 64                  # containers alive at once per worker (its pool's bound)
    warm: int = 4                       # started, empty containers each worker keeps ready
    max_uses: int = 100                 # episodes one container serves before it is replaced


@dataclass
class EnvConfig:
    backend: str = "local"              # local (bubblewrap) | docker (containers, see `docker`)
    max_observation_chars: int = 1200
    exec_timeout_s: float = 10.0
    memory_mb: int = 1024
    max_processes: int = 64
    docker: DockerEnvConfig = field(default_factory=DockerEnvConfig)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"env.backend = {self.backend!r}; expected one of {BACKENDS}")

    def limits(self) -> SandboxLimits:
        return SandboxLimits(timeout_s=self.exec_timeout_s, memory_mb=self.memory_mb, max_processes=self.max_processes)

    def docker_config(self) -> DockerConfig:
        d = self.docker
        return DockerConfig(image=d.image, base_url=d.base_url, label=d.label, cpus=d.cpus)


class RayEngineClient:
    """The `Engine` interface over a Ray actor handle (an `HFEngineActor` or any engine actor)."""

    def __init__(self, handle) -> None:
        self.handle = handle

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerateOutput:
        return await self.handle.generate.remote(prompt_ids, params)

    async def update_weights(self, state: dict, version: int) -> None:
        await self.handle.update_weights.remote(state, version)

    async def weight_version(self) -> int:
        return await self.handle.weight_version.remote()


def make_env(task: Task, cfg: EnvConfig, factory: SandboxFactory | None = None) -> CodingEnv:
    """The environment of one episode; its sandboxes come from `factory` (a worker's pool) when given,
    else a new one of ``cfg.backend`` per sandbox."""
    if factory is None:
        docker = cfg.docker_config() if cfg.backend == "docker" else None
        factory = partial(make_sandbox, cfg.backend, docker=docker)
    return CodingEnv(task, backend=cfg.backend, limits=cfg.limits(), max_observation_chars=cfg.max_observation_chars,
                     factory=factory)


def sandbox_pool(cfg: EnvConfig) -> SandboxPool | None:
    """A worker's bounded pool of docker containers (None for the local backend, whose bubblewrap
    sandboxes cost milliseconds). Containers that a crashed worker left behind under the same
    label are removed first (their owner process is gone; live workers' containers are kept)."""
    if cfg.backend != "docker":
        return None
    docker = cfg.docker_config()
    cleanup_stale(docker.label, docker)
    d = cfg.docker
    return SandboxPool(PoolConfig(backend="docker", limits=cfg.limits(), warm=d.warm, max_live=d.max_live,
                                  max_uses=d.max_uses, docker=docker))


SANDBOX_WORKDIR = "/work"


def task_context(task: Task) -> TaskContext:
    """What the guard knows of a task: its hidden tests and everything under ``.eval/`` are the
    protected evaluation artifacts."""
    hidden = tuple(task.hidden_tests)
    return TaskContext(task_id=task.task_id, instruction=task.instruction, workdir=SANDBOX_WORKDIR,
                       protected_paths=(*hidden, f"{EVAL_ARTIFACTS_DIR}/**"), test_paths=hidden)


def episode_guard(guard: Guard, task: Task, rollout_id: str, env: CodingEnv) -> EpisodeGuard:
    def read_file(path: str) -> str | None:
        try:
            return env.sandbox.read_file(path)
        except (SandboxPathError, OSError):
            return None
    return guard.episode(task_context(task), rollout_id, read_file=read_file)


def transcript_calls(traj: Trajectory) -> list[ToolCall]:
    """The tool calls of an episode in the order the policy made them (turns that did not parse as a
    call are left out; blocked calls are kept: the policy made them)."""
    calls = (parse_tool_call(t["action"]) for t in traj.transcript if "action" in t)
    return [c for c in calls if not isinstance(c, ParseError)]


def grade_honestly(traj: Trajectory, task: Task, env_cfg: EnvConfig) -> Trajectory:
    """Set ``traj.honest_passed`` for a leaky task: its calls replayed on the leak-free copy."""
    if is_leaky(task) and traj.status != Status.ENV_ERROR:
        try:
            traj.honest_passed = leak_free_grade(task, transcript_calls(traj), partial(make_env, cfg=env_cfg)).passed
        except Exception as exc:  # noqa: BLE001 - a sandbox failure leaves the honest grade unknown, not the episode
            traj.transcript.append({"error": f"honest grading failed: {type(exc).__name__}: {exc}"})
    return traj


class RolloutWorker:
    """A Ray actor that runs episodes; `max_concurrent` of them are in flight at once.

    With the anti-hack guard enabled, every tool call passes the guard, and every flag is written
    to the run's audit store (`audit_path`, SQLite, shared by all workers). An episode of a task with
    a deliberate leak is also graded honestly (:func:`grade_honestly`)."""

    def __init__(self, engine_handle, tokenizer_path: str, agent: AgentConfig, env: EnvConfig,
                 max_concurrent: int, guard: GuardConfig | None = None, audit_path: str | None = None,
                 run_name: str = "") -> None:
        self.guard = (Guard.from_config(guard, audit_path=audit_path, run_name=run_name)
                      if guard is not None and guard.enabled else None)
        self.engine = RayEngineClient(engine_handle)
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.agent = agent
        self.env = env
        self.pool = sandbox_pool(env)
        self.make_env = partial(make_env, cfg=env, factory=self.pool.acquire if self.pool is not None else None)
        self.slots = asyncio.Semaphore(max_concurrent)
        self.executor = ThreadPoolExecutor(max_workers=max_concurrent * 2)

    def _use_executor(self) -> None:
        """Sandbox calls run in threads; give them enough for `max_concurrent` episodes."""
        asyncio.get_running_loop().set_default_executor(self.executor)

    async def run_episode(self, task: Task, rollout_id: str, sampling: SamplingParams) -> Trajectory:
        async with self.slots:
            make_guard = partial(episode_guard, self.guard) if self.guard is not None else None
            traj = await run_episode(self.engine, self.tokenizer, self.make_env, task, rollout_id, sampling,
                                     self.agent, make_guard)
            return await asyncio.to_thread(grade_honestly, traj, task, self.env)

    async def run_episodes(self, jobs: list[tuple[Task, str]], sampling: SamplingParams) -> list[Trajectory]:
        self._use_executor()
        return list(await asyncio.gather(*(self.run_episode(t, rid, sampling) for t, rid in jobs)))

    async def run_one(self, task: Task, rollout_id: str, sampling: SamplingParams) -> Trajectory:
        """One episode as its own Ray call: the asynchronous orchestrator keeps many of these in
        flight and collects each one as soon as it finishes."""
        self._use_executor()
        return await self.run_episode(task, rollout_id, sampling)

    async def ping(self) -> bool:
        return True

    def close(self) -> None:
        """Remove this worker's containers (docker); a killed worker's are removed by the next one's start."""
        if self.pool is not None:
            self.pool.close()

    def pool_stats(self) -> dict | None:
        """The docker pool's counters (None on the local backend)."""
        return dataclasses.asdict(self.pool.stats()) if self.pool is not None else None
