"""The ``sglang`` engine: SGLang servers (optionally behind ``sglang_router``) driven over HTTP.

:class:`SGLangEngine` implements the :class:`rollout.engine.Engine` interface. It either launches
one ``python -m sglang.launch_server`` process per engine (GPU ids per engine, every SGLang flag
passable from :attr:`SGLangConfig.server_args`) or connects to servers that already run
(:attr:`SGLangConfig.urls`), and optionally puts ``python -m sglang_router.launch_router`` in front.

Written against SGLang **0.5.23** (``python/sglang/srt/entrypoints/http_server.py``,
``python/sglang/srt/managers/io_struct.py``, ``python/sglang/srt/managers/tokenizer_manager.py``,
``python/sglang/srt/utils/weight_versions.py``); servers must report a version in
:data:`SUPPORTED_SGLANG` (0.5.21 introduced the two things this client relies on: per-token
``meta_info.weight_versions`` spans and the ``/begin_weight_update`` session that distributed and
tensor updates must run in).

Generation (``POST /generate``): ``input_ids`` in, ``return_logprob=true``, a client-chosen
``rid`` (so :meth:`SGLangEngine.abort` can stop it); sampling params map as: ``top_k`` 0 (ours:
no filter) -> -1 (SGLang: no filter), ``no_stop_trim`` and ``skip_special_tokens=false`` always,
``ignore_eos`` from the config (True: only ``stop_token_ids`` end a turn, as in the ``hf``
engine). Out: ``output_ids``, ``meta_info.output_token_logprobs`` (``[logprob, token_id, text]``,
checked against ``output_ids``), ``meta_info.finish_reason.type`` (``stop`` / ``length`` /
``abort``: an aborted request returns the tokens it had) and the weight version of every token,
expanded from ``meta_info.weight_versions`` spans (``meta_info.weight_version`` for all tokens if
absent). SGLang's log-probs are ``log_softmax(logits / T)`` of the sampled token, before top-k /
top-p renormalisation (``python/sglang/srt/layers/sampler.py``); with top-k / top-p on they are
not the filtered distribution's (the ``hf`` engine returns the filtered one). At most
``max_concurrency`` requests per server are in flight (an asyncio semaphore per server, or one of
``max_concurrency * num_engines`` in front of the router); without a router each request goes
to the server with the fewest in flight.

Colocated training (``memory_saver``: servers launched with ``--enable-memory-saver``):
:meth:`SGLangEngine.release_memory` sends ``/release_memory_occupation {tags}`` (``weights``,
``kv_cache``, ``cuda_graph``; only with no request in flight) after a rollout, and a push on
released servers first ``/resume_memory_occupation {"tags": ["weights"]}``, loads, and resumes the
rest only after ``/continue_generation``; generating while released is refused.

Weight push (:meth:`SGLangEngine.update_weights`), on every server:
``/pause_generation {mode}`` -> ``/flush_cache`` (retried while it answers non-200, i.e. busy,
until ``flush_timeout_s``) -> [``/begin_weight_update``] -> one call per bucket (see
:mod:`rollout.weight_sync`; the last bucket carries ``flush_cache=true`` and ``weight_version``)
-> [``/end_weight_update``] -> ``/continue_generation``. In ``distributed`` mode the first push
(and the first after a restart or a failed push) first builds the group with
``/init_weights_update_group`` (named ``<group_name>_<n>``, this process rank 0). With ``pause_mode="retract"`` (default)
requests in flight are retracted and resume under the new weights after the push (partial
rollout: their tokens carry the version that sampled each); with ``"abort"`` they return at once
with ``finish_reason="abort"`` and the tokens so far. If a push fails the servers stay paused
(continuing would sample from a mix of old and new weights under the old version number);
:class:`WeightSyncError` says so, and the next successful push resumes them.

Errors at start are specific: a server process that exits (a wrong flag, say) raises
:class:`SGLangLaunchError` with its exit code and stderr tail; a server that does not answer
``/health_generate`` in time raises :class:`SGLangUnreachableError` naming the URL; a version
outside :data:`SUPPORTED_SGLANG` raises :class:`SGLangVersionError`. A server that dies later makes
requests fail with :class:`SGLangUnreachableError` (naming the URL, and for a launched server its
exit code and stderr tail); :meth:`SGLangEngine.restart_server` relaunches it (the restarted
server has the launch checkpoint again: its tokens carry the launch version until the next push).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Sequence, TypeVar

import aiohttp
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from rollout.engine import GenerateOutput, SamplingParams
from rollout.weight_sync import (
    broadcast_bucket,
    destroy_weight_update_group,
    init_weight_update_group,
    make_buckets,
    save_checkpoint,
    serialize_named_tensors,
)

SUPPORTED_SGLANG = SpecifierSet(">=0.5.21,<0.6")
WEIGHT_SYNC_MODES = ("distributed", "tensor", "disk")
PAUSE_MODES = ("retract", "abort")
# flags the engine sets itself from typed config fields
RESERVED_SERVER_FLAGS = {"model-path": "model_path", "model": "model_path", "host": "host", "port": "ports",
                         "tp-size": "tp_size", "tensor-parallel-size": "tp_size", "weight-version": "initial_version",
                         "enable-memory-saver": "memory_saver"}
MEMORY_TAGS = ("weights", "kv_cache", "cuda_graph")   # python/sglang/srt/constants.py: GPU_MEMORY_ALL_TYPES
RESERVED_ROUTER_FLAGS = {"worker-urls": "urls", "host": "host", "port": "router_port"}

T = TypeVar("T")


class SGLangError(RuntimeError):
    """Base class of the sglang engine's errors."""


class SGLangLaunchError(SGLangError):
    """A server or router process exited while starting."""


class SGLangUnreachableError(SGLangError):
    """A server did not answer (not started in time, died, or timed out)."""


class SGLangVersionError(SGLangError):
    """A server runs an SGLang version outside :data:`SUPPORTED_SGLANG`."""


class SGLangRequestError(SGLangError):
    """A server answered a request with an error status or a malformed body."""


class WeightSyncError(SGLangError):
    """A weight push failed; the servers stay paused until a push succeeds."""


@dataclass
class SGLangConfig:
    """Everything the sglang engine needs; Hydra/OmegaConf-compatible types only (the defaults
    construct, so it can sit in a run's config schema while the ``hf`` engine is in use)."""

    model_path: str = ""                   # the checkpoint the servers start from (disk sync copies its config)
    num_engines: int = 1
    tp_size: int = 1                       # GPUs per server (--tp-size); ranks per server in the weight group
    host: str = "127.0.0.1"                # where launched servers listen and clients reach them
    ports: List[int] = field(default_factory=list)        # one per engine; empty = free ports
    urls: List[str] = field(default_factory=list)         # servers already running: connect, launch nothing
    server_args: Dict[str, Any] = field(default_factory=dict)  # any SGLang flag: {"mem-fraction-static": 0.8}
    launch_command: List[str] = field(default_factory=lambda: [sys.executable, "-m", "sglang.launch_server"])
    router: bool = False                   # launch sglang_router in front of the servers
    router_url: str = ""                   # a router already running (with `urls`)
    router_port: int = 0                   # 0 = a free port
    router_args: Dict[str, Any] = field(default_factory=dict)
    router_command: List[str] = field(
        default_factory=lambda: [sys.executable, "-m", "sglang_router.launch_router"])
    memory_saver: bool = False             # --enable-memory-saver: release_memory/resume_memory free GPU memory
    #                                        (colocated training: cluster.offload_between_phases sets it)
    max_concurrency: int = 256             # /generate requests in flight per server
    ignore_eos: bool = True                # True: only SamplingParams.stop_token_ids end a turn
    initial_version: int = 0               # --weight-version of launched servers
    weight_sync: str = "distributed"       # distributed | tensor | disk
    pause_mode: str = "retract"            # retract | abort (what happens to requests in flight during a push)
    bucket_bytes: int = 512 * 1024 * 1024
    master_address: str = "127.0.0.1"      # distributed: this process hosts the group's rendezvous here
    master_port: int = 0                   # 0 = a free port
    group_name: str = "horizonrl_weights"   # prefix: each (re)built group is <group_name>_<n>
    group_backend: str = "nccl"            # nccl on GPUs; gloo on CPU
    group_timeout_s: float = 600.0
    disk_dir: str = ""                     # disk: where pushed checkpoints are written (shared with the servers)
    keep_checkpoints: int = 2              # disk: pushed checkpoints kept on disk
    log_dir: str = ""                      # launched processes' stdout/stderr; empty = a new temp dir
    startup_timeout_s: float = 900.0
    request_timeout_s: float = 3600.0      # one /generate call
    control_timeout_s: float = 600.0       # one control call (pause, a bucket, ...)
    flush_timeout_s: float = 120.0
    flush_retry_interval_s: float = 0.5
    poll_interval_s: float = 0.5           # health polling while starting

    def __post_init__(self) -> None:
        if self.weight_sync not in WEIGHT_SYNC_MODES:
            raise ValueError(f"sglang weight_sync must be one of {WEIGHT_SYNC_MODES} (got {self.weight_sync!r})")
        if self.pause_mode not in PAUSE_MODES:
            raise ValueError(f"sglang pause_mode must be one of {PAUSE_MODES} (got {self.pause_mode!r})")
        for name in ("num_engines", "tp_size", "max_concurrency", "bucket_bytes", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"sglang {name} must be >= 1 (got {getattr(self, name)})")
        if self.urls and len(self.urls) != self.num_engines:
            raise ValueError(f"sglang urls lists {len(self.urls)} servers but num_engines is {self.num_engines}")
        if self.ports and len(self.ports) != self.num_engines:
            raise ValueError(f"sglang ports lists {len(self.ports)} ports but num_engines is {self.num_engines}")
        if self.router_url and not self.urls:
            raise ValueError("sglang router_url names a running router; give the urls of its servers too")
        if self.router and self.router_url:
            raise ValueError("sglang: set router (launch one) or router_url (use a running one), not both")
        if self.weight_sync == "disk" and not (self.disk_dir and self.model_path):
            raise ValueError("sglang weight_sync='disk' needs disk_dir (shared with the servers) and model_path "
                             "(the base checkpoint whose config the pushed checkpoints copy)")
        _check_reserved(self.server_args, RESERVED_SERVER_FLAGS, "server_args")
        _check_reserved(self.router_args, RESERVED_ROUTER_FLAGS, "router_args")


def _check_reserved(args: Mapping[str, Any], reserved: Mapping[str, str], where: str) -> None:
    for key in args:
        flag = _flag_name(key)
        if flag in reserved:
            raise ValueError(f"sglang {where}[{key!r}] is set by the engine; use SGLangConfig.{reserved[flag]}")


def _flag_name(key: str) -> str:
    return key.lstrip("-").replace("_", "-")


def flag_args(args: Mapping[str, Any]) -> list[str]:
    """``{"mem_fraction_static": 0.8, "enable-metrics": True, "x": [1, 2]}`` -> ``--mem-fraction-static 0.8
    --enable-metrics --x 1 2``. True is a bare flag; False and None leave the flag out."""
    argv: list[str] = []
    for key, value in args.items():
        flag = "--" + _flag_name(key)
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def server_command(cfg: SGLangConfig, port: int) -> list[str]:
    return [*cfg.launch_command, "--model-path", cfg.model_path, "--host", cfg.host, "--port", str(port),
            "--tp-size", str(cfg.tp_size), "--weight-version", str(cfg.initial_version),
            *(["--enable-memory-saver"] if cfg.memory_saver else []), *flag_args(cfg.server_args)]


def router_command(cfg: SGLangConfig, worker_urls: Sequence[str], port: int) -> list[str]:
    return [*cfg.router_command, "--worker-urls", *worker_urls, "--host", cfg.host, "--port", str(port),
            *flag_args(cfg.router_args)]


def sampling_payload(params: SamplingParams, ignore_eos: bool, stop: Sequence[str] = ()) -> dict:
    """Our :class:`SamplingParams` as SGLang's ``sampling_params`` (python/sglang/api/v1/api_types.py)."""
    return {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,
        "max_new_tokens": params.max_new_tokens,
        "stop_token_ids": list(params.stop_token_ids),
        "stop": list(stop),
        "ignore_eos": ignore_eos,
        "no_stop_trim": True,
        "skip_special_tokens": False,
    }


def expand_weight_versions(meta: Mapping[str, Any], num_tokens: int, where: str) -> list[int]:
    """Per-token versions from ``meta_info.weight_versions`` spans (or ``weight_version`` for all)."""
    versions = [_int_version(meta.get("weight_version"), where)] * num_tokens
    for span in meta.get("weight_versions") or []:
        v = _int_version(span["version"], where)
        for i in range(max(0, span["start"]), min(num_tokens, span["end"])):
            versions[i] = v
    return versions


def _int_version(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SGLangRequestError(f"{where} reports weight version {value!r}; horizonrl needs integer versions "
                                 f"(launch servers with --weight-version <int>)") from None


def parse_generate_response(body: Any, where: str) -> GenerateOutput:
    """A ``/generate`` body as :class:`GenerateOutput`, checking that the arrays line up."""
    try:
        ids = [int(t) for t in body["output_ids"]]
        meta = body["meta_info"]
        finish = meta["finish_reason"]["type"]
        pairs = meta["output_token_logprobs"]
    except (KeyError, TypeError) as exc:
        raise SGLangRequestError(f"{where} returned a /generate body without {exc} "
                                 f"(keys: {sorted(body) if isinstance(body, dict) else type(body).__name__})") from None
    if finish not in ("stop", "length", "abort"):
        raise SGLangRequestError(f"{where} returned an unknown finish_reason {meta['finish_reason']!r}")
    if len(pairs) != len(ids) or any(int(p[1]) != t for p, t in zip(pairs, ids)):
        raise SGLangRequestError(f"{where} returned {len(ids)} output_ids but output_token_logprobs for "
                                 f"{[p[1] for p in pairs][:8]}... that do not match them")
    return GenerateOutput(token_ids=ids, logprobs=[float(p[0]) for p in pairs], finish_reason=finish,
                          weight_versions=expand_weight_versions(meta, len(ids), where))


def parse_score_response(body: Any, where: str, sequence: list[int],
                         k: int) -> tuple[list[float], list[list[int]], list[list[float]]]:
    """A prefill-only ``/generate`` body (``logprob_start_len: 0``) as (own log-probs, top ids, top
    log-probs) of `sequence`, position 0 scored 0 (SGLang returns null there); the scored token ids
    must be `sequence`'s, unchanged."""
    try:
        meta = body["meta_info"]
        pairs = meta["input_token_logprobs"]
        top = meta["input_top_logprobs"] if k else []
    except (KeyError, TypeError) as exc:
        raise SGLangRequestError(f"{where} returned a prefill-only /generate body without {exc}") from None
    if len(pairs) != len(sequence) or any(int(p[1]) != t for p, t in zip(pairs, sequence)):
        raise SGLangRequestError(f"{where} scored {len(pairs)} tokens {[p[1] for p in pairs][:8]}... that are not "
                                 f"the {len(sequence)} ids sent {sequence[:8]}...")
    own = [0.0] + [float(p[0]) for p in pairs[1:]]
    if not k:
        return own, [], []
    if len(top) != len(sequence) or any(row is None or len(row) != k for row in top[1:]):
        raise SGLangRequestError(f"{where} returned input_top_logprobs of {len(top)} rows for {len(sequence)} "
                                 f"tokens, or rows without {k} entries")
    return (own, [[0] * k] + [[int(e[1]) for e in row] for row in top[1:]],
            [[0.0] * k] + [[float(e[0]) for e in row] for row in top[1:]])


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class ManagedProcess:
    """A launched server or router: its command, log files and process."""

    name: str
    argv: list[str]
    env: dict
    log_dir: Path
    popen: Optional[subprocess.Popen] = None

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.stderr.log"

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{self.name}.stdout.log", "ab") as out, open(self.stderr_path, "ab") as err:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=self.env,
                                          start_new_session=True)

    def exit_code(self) -> Optional[int]:
        return None if self.popen is None else self.popen.poll()

    def stderr_tail(self, lines: int = 25) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return "(no stderr log)"
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(stderr is empty)"

    def describe_exit(self) -> str:
        return (f"its process exited with code {self.exit_code()}; stderr tail ({self.stderr_path}):\n"
                f"{self.stderr_tail()}")

    def kill(self, grace_s: float = 10.0) -> None:
        """Stop the process and everything it started (it leads its own session)."""
        if self.popen is None or self.popen.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue


@dataclass
class _Server:
    index: int
    url: str
    process: Optional[ManagedProcess]
    slots: asyncio.Semaphore
    inflight: int = 0
    version: int = 0


class SGLangEngine:
    """The :class:`rollout.engine.Engine` interface over SGLang servers.

    ``engine = SGLangEngine(cfg); await engine.start(gpu_ids)`` launches (or, with ``cfg.urls``,
    connects); ``await engine.close()`` stops what it launched. Use it from one event loop (it
    can be an async Ray actor: ``ray.remote(SGLangEngine)``). In ``distributed`` mode the process
    that calls :meth:`update_weights` is rank 0 of the weight-update group, so call it where the
    learner's full weights are.
    """

    def __init__(self, cfg: SGLangConfig) -> None:
        self.cfg = cfg
        self.servers: list[_Server] = []
        self.router: Optional[ManagedProcess] = None
        self.router_url: str = cfg.router_url
        self._router_slots: Optional[asyncio.Semaphore] = None
        self._session: Optional[aiohttp.ClientSession] = None
        self._inflight: dict[str, Optional[_Server]] = {}  # rid -> its server (None: behind the router)
        self._push_lock = asyncio.Lock()
        self._group = None                       # rank 0 of the weight-update group (distributed)
        self._group_name = ""
        self._group_count = 0
        self._group_thread: Optional[asyncio.Future] = None   # the last broadcast into the group
        self._log_dir = Path(cfg.log_dir) if cfg.log_dir else None
        self._gpu_ids: Optional[List[List[int]]] = None
        self.released: set[str] = set()          # memory tags the servers gave back (release_memory)

    # ------------------------------------------------------------------ start / stop
    async def start(self, gpu_ids: Optional[List[List[int]]] = None) -> None:
        """Launch the servers (GPU ids per engine, e.g. from a Ray placement group) or connect to
        ``cfg.urls``; wait until every one is healthy and runs a supported SGLang."""
        cfg = self.cfg
        if self.servers:
            raise SGLangError("the sglang engine is already started")
        if gpu_ids is not None and len(gpu_ids) != cfg.num_engines:
            raise ValueError(f"sglang: {len(gpu_ids)} GPU-id lists for {cfg.num_engines} engines")
        if gpu_ids is not None and any(len(ids) != cfg.tp_size for ids in gpu_ids):
            raise ValueError(f"sglang: every engine needs tp_size={cfg.tp_size} GPU ids (got {gpu_ids})")
        if cfg.urls and gpu_ids is not None:
            raise ValueError("sglang: GPU ids are for launched servers; cfg.urls names running ones")
        if not cfg.urls and not cfg.model_path:
            raise ValueError("sglang model_path is required to launch servers (or give urls of running ones)")
        self._gpu_ids = gpu_ids
        if cfg.urls:
            self.servers = [self._new_server(i, url.rstrip("/"), None) for i, url in enumerate(cfg.urls)]
        else:
            for i in range(cfg.num_engines):
                port = cfg.ports[i] if cfg.ports else free_port(cfg.host)
                self.servers.append(self._new_server(i, f"http://{cfg.host}:{port}", self._server_process(i, port)))
        try:
            for s in self.servers:
                if s.process is not None:
                    s.process.start()
            await asyncio.gather(*(self._await_ready(s) for s in self.servers))
            if cfg.router:
                port = cfg.router_port or free_port(cfg.host)
                self.router = ManagedProcess("router", router_command(cfg, self.server_urls, port), dict(os.environ),
                                             self._logs())
                self.router.start()
                self.router_url = f"http://{cfg.host}:{port}"
                await self._await_http(self.router_url, "/health", self.router, "router")
            if self.router_url:
                self._router_slots = asyncio.Semaphore(cfg.max_concurrency * cfg.num_engines)
        except BaseException:
            await self.close()
            raise

    def _new_server(self, index: int, url: str, process: Optional[ManagedProcess]) -> _Server:
        return _Server(index=index, url=url, process=process, slots=asyncio.Semaphore(self.cfg.max_concurrency),
                       version=self.cfg.initial_version)

    def _logs(self) -> Path:
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="horizonrl-sglang-"))
        return self._log_dir

    def _server_process(self, index: int, port: int) -> ManagedProcess:
        env = dict(os.environ)
        if self._gpu_ids is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in self._gpu_ids[index])
        return ManagedProcess(f"server{index}-port{port}", server_command(self.cfg, port), env, self._logs())

    async def _await_ready(self, server: _Server) -> None:
        await self._await_http(server.url, "/health_generate", server.process, f"server {server.index}")
        await self._check_version(server)
        server.version = await self._server_weight_version(server)

    async def _await_http(self, url: str, path: str, process: Optional[ManagedProcess], what: str) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        last = "no answer yet"
        session = self._http()
        while True:
            if process is not None and process.exit_code() is not None:
                raise SGLangLaunchError(f"SGLang {what} ({url}) exited with code {process.exit_code()} while "
                                        f"starting; command: {' '.join(process.argv)}\nstderr tail "
                                        f"({process.stderr_path}):\n{process.stderr_tail()}")
            try:
                async with session.get(url + path, timeout=aiohttp.ClientTimeout(total=max(
                        1.0, min(30.0, deadline - time.monotonic())))) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                tail = f"\n{process.describe_exit()}" if process is not None else ""
                raise SGLangUnreachableError(f"SGLang {what} at {url} did not answer GET {path} with 200 within "
                                             f"{self.cfg.startup_timeout_s:.0f}s (last: {last}){tail}")
            await asyncio.sleep(self.cfg.poll_interval_s)

    async def _check_version(self, server: _Server) -> None:
        try:
            info = await self._call(server, "GET", "/server_info", None, self.cfg.control_timeout_s)
        except SGLangRequestError as exc:
            if "HTTP 404" not in str(exc):
                raise
            info = await self._call(server, "GET", "/get_server_info", None, self.cfg.control_timeout_s)
        raw = info.get("version") if isinstance(info, dict) else None
        try:
            ok = raw is not None and SUPPORTED_SGLANG.contains(Version(str(raw)), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            raise SGLangVersionError(f"SGLang server {server.url} runs SGLang {raw!r}; horizonrl's sglang engine "
                                     f"supports {SUPPORTED_SGLANG} (it follows the 0.5.23 HTTP API)")

    async def _server_weight_version(self, server: _Server) -> int:
        info = await self._call(server, "GET", "/model_info", None, self.cfg.control_timeout_s)
        return _int_version(info.get("weight_version"), f"SGLang server {server.url}")

    async def restart_server(self, index: int) -> None:
        """Relaunch server `index` (it must be one this engine launched) and wait until it is ready."""
        server = self.servers[index]
        if server.process is None:
            raise SGLangError(f"SGLang server {server.url} was not launched by this engine; restart it where it runs")
        await asyncio.to_thread(server.process.kill)
        server.process.start()
        await self._await_ready(server)
        await self._drop_group()  # the group lost a member: rebuilt at the next push
        if self.released:         # it started with all its memory: keep it in step with the others
            await self._control(server, "/release_memory_occupation", {"tags": sorted(self.released)})

    async def close(self) -> None:
        """Leave the weight group, stop launched processes and close the HTTP session."""
        await self._drop_group()
        procs = [p for p in [self.router, *(s.process for s in self.servers)] if p is not None]
        await asyncio.gather(*(asyncio.to_thread(p.kill) for p in procs))
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def server_urls(self) -> list[str]:
        return [s.url for s in self.servers]

    # ------------------------------------------------------------------ HTTP
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def _request(self, url: str, method: str, path: str, body: Optional[dict], timeout_s: float, *,
                       role: str = "server", process: Optional[ManagedProcess] = None) -> Any:
        """One call; JSON (or text) body back, or an error naming the URL, the call and why (and, for
        a launched process that has exited, its exit code and stderr tail)."""
        name = f"SGLang {role} {url}"
        try:
            async with self._http().request(method, url + path, json=body,
                                            timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    text = raw.decode(errors="replace")[:1000]
                    raise SGLangRequestError(f"{name} answered {method} {path} with HTTP {resp.status}: {text}")
                if not raw:
                    return None
                if resp.content_type == "application/json":
                    return await resp.json(content_type=None)
                return raw.decode(errors="replace")
        except asyncio.TimeoutError as exc:
            raise SGLangUnreachableError(f"{name} did not answer {method} {path} within {timeout_s:.0f}s") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            msg = f"{name} is unreachable ({method} {path}: {detail})"
            if process is not None and process.exit_code() is not None:
                msg += f"; {process.describe_exit()}"
            raise SGLangUnreachableError(msg) from exc

    async def _call(self, server: _Server, method: str, path: str, body: Optional[dict], timeout_s: float) -> Any:
        return await self._request(server.url, method, path, body, timeout_s, process=server.process)

    async def _on_all(self, call: Callable[[_Server], Awaitable[T]]) -> list[T]:
        return list(await asyncio.gather(*(call(s) for s in self.servers)))

    async def _control(self, server: _Server, path: str, body: Optional[dict] = None) -> Any:
        return await self._call(server, "POST", path, body if body is not None else {}, self.cfg.control_timeout_s)

    # ------------------------------------------------------------------ generate / abort
    def _pick_server(self) -> _Server:
        return min(self.servers, key=lambda s: s.inflight)

    async def generate(self, prompt_ids: list[int], params: SamplingParams, *, rid: Optional[str] = None,
                       stop: Sequence[str] = ()) -> GenerateOutput:
        """Sample a continuation of `prompt_ids`. `rid` names the request for :meth:`abort`;
        `stop` adds stop strings (checked on the detokenised text by the server)."""
        self._check_serving()
        payload = {"rid": rid or uuid.uuid4().hex, "input_ids": list(prompt_ids), "return_logprob": True,
                   "stream": False, "sampling_params": sampling_payload(params, self.cfg.ignore_eos, stop)}
        return parse_generate_response(*await self._post_generate(payload))

    def _check_serving(self) -> None:
        if not self.servers:
            raise SGLangError("the sglang engine is not started (await engine.start())")
        if self.released:
            raise SGLangError(f"the sglang servers' GPU memory is released ({sorted(self.released)}): "
                              f"resume_memory() (or update_weights, which resumes it) before generating")

    async def _post_generate(self, payload: dict) -> tuple[Any, str]:
        """``POST /generate`` through the router, or to the least busy server within its concurrency
        limit: (the body, which endpoint answered)."""
        rid = payload["rid"]
        if self.router_url:
            assert self._router_slots is not None
            async with self._router_slots:
                self._inflight[rid] = None
                try:
                    body = await self._request(self.router_url, "POST", "/generate", payload,
                                               self.cfg.request_timeout_s, role="router", process=self.router)
                finally:
                    self._inflight.pop(rid, None)
            return body, f"SGLang router {self.router_url}"
        server = self._pick_server()
        async with server.slots:
            server.inflight += 1
            self._inflight[rid] = server
            try:
                body = await self._call(server, "POST", "/generate", payload, self.cfg.request_timeout_s)
            finally:
                server.inflight -= 1
                self._inflight.pop(rid, None)
        return body, f"SGLang server {server.url}"

    async def score(self, sequences: list[list[int]], temperature: float) -> list[list[float]]:
        """Prefill-only log-probs of each sequence's own tokens (:meth:`score_top_k` without the top k)."""
        return [own for own, _, _ in await self.score_top_k(sequences, temperature, 0)]

    async def score_top_k(self, sequences: list[list[int]], temperature: float,
                          k: int) -> list[tuple[list[float], list[list[int]], list[list[float]]]]:
        """Prefill-only scoring of given token ids, the contract of the hf engine's ``score_top_k``
        (per sequence: own log-probs with 0 at position 0, and, `k` > 0, the top `k` ids and log-probs
        per position, zeros at position 0): one ``/generate`` per sequence with ``max_new_tokens: 0``,
        ``return_logprob``, ``logprob_start_len: 0`` and ``top_logprobs_num: k``. SGLang computes
        prompt log-probs from the raw logits (0.5.23, ``layers/logprob_processor.py``: no temperature),
        so the scores are at temperature 1; another `temperature` is refused rather than answered wrong."""
        if temperature != 1.0:
            raise SGLangError(f"sglang scores prompt tokens at temperature 1 only (its input log-probs are taken "
                              f"before any temperature), got temperature {temperature}: score with hf engines or "
                              f"sample at sampling.temperature=1.0")
        self._check_serving()
        return list(await asyncio.gather(*(self._score_one(list(seq), k) for seq in sequences)))

    async def _score_one(self, sequence: list[int], k: int) -> tuple[list[float], list[list[int]], list[list[float]]]:
        if not sequence:
            return [], [], []
        payload = {"rid": uuid.uuid4().hex, "input_ids": sequence, "return_logprob": True, "logprob_start_len": 0,
                   "stream": False, "sampling_params": {"max_new_tokens": 0}}
        if k:
            payload["top_logprobs_num"] = k
        return parse_score_response(*await self._post_generate(payload), sequence=sequence, k=k)

    async def abort(self, rid: str) -> None:
        """Abort request `rid`: its ``generate`` returns ``finish_reason="abort"`` with the tokens so far."""
        target = self._inflight.get(rid)
        servers = [target] if target is not None else self.servers   # unknown or behind the router: all
        await asyncio.gather(*(self._control(s, "/abort_request", {"rid": rid}) for s in servers))

    async def abort_all(self) -> None:
        await self._on_all(lambda s: self._control(s, "/abort_request", {"abort_all": True}))

    async def weight_version(self) -> int:
        """The oldest weight version any server serves (a restarted server is back at its launch version)."""
        return min(s.version for s in self.servers)

    # ------------------------------------------------------------------ memory (colocated training)
    async def release_memory(self, tags: Optional[Sequence[str]] = None) -> None:
        """Give the servers' GPU memory back while the learner trains on the same GPUs
        (``/release_memory_occupation``; `tags` of :data:`MEMORY_TAGS`, default all). Only between
        rollouts: requests in flight are refused. Frees memory only with ``memory_saver``."""
        tags = list(tags or MEMORY_TAGS)
        unknown = [t for t in tags if t not in MEMORY_TAGS]
        if unknown:
            raise ValueError(f"release_memory: unknown memory tag(s) {unknown}; SGLang's are {list(MEMORY_TAGS)}")
        if self._inflight:
            raise SGLangError(f"release_memory with {len(self._inflight)} request(s) in flight: SGLang releases "
                              f"memory only when idle (finish or abort them first)")
        tags = [t for t in tags if t not in self.released]
        if tags:
            await self._on_all(lambda s: self._control(s, "/release_memory_occupation", {"tags": tags}))
            self.released |= set(tags)

    async def resume_memory(self, tags: Optional[Sequence[str]] = None) -> None:
        """Take the released memory back (``/resume_memory_occupation``), `tags` default all released.
        The weights are as they were released (or as the next push makes them)."""
        tags = [t for t in (tags or MEMORY_TAGS) if t in self.released]
        if tags:
            await self._on_all(lambda s: self._control(s, "/resume_memory_occupation", {"tags": tags}))
            self.released -= set(tags)

    # ------------------------------------------------------------------ weight push
    async def update_weights(self, state: dict, version: int) -> None:
        """Push `state` to every server under `version` (pause -> flush -> buckets -> continue). Servers
        whose memory is released take their weights' memory back first and the rest (KV cache) after
        the push, so the push never needs both at once (slime's order)."""
        if not self.servers:
            raise SGLangError("the sglang engine is not started (await engine.start())")
        if not state:
            raise ValueError(f"weight push of version {version}: the state dict is empty")
        async with self._push_lock:
            await self.resume_memory(["weights"])
            try:
                if self.cfg.weight_sync == "distributed":
                    await self._ensure_group()   # once (again after a restart); needs no pause
                await self._on_all(lambda s: self._control(s, "/pause_generation", {"mode": self.cfg.pause_mode}))
                await self._on_all(self._flush)
                if self.cfg.weight_sync == "disk":
                    await self._push_disk(state, version)
                else:
                    await self._on_all(lambda s: self._control(s, "/begin_weight_update", {}))
                    push = self._push_distributed if self.cfg.weight_sync == "distributed" else self._push_tensor
                    try:
                        await push(state, version)
                    except BaseException:
                        await asyncio.gather(*(self._control(s, "/end_weight_update", {}) for s in self.servers),
                                             return_exceptions=True)
                        raise
                    await self._on_all(lambda s: self._control(s, "/end_weight_update", {}))
                await self._on_all(lambda s: self._control(s, "/continue_generation", {}))
            except (SGLangError, OSError, RuntimeError, ValueError) as exc:
                if self.cfg.weight_sync == "distributed":  # the group's state is unknown now: rebuild it next time
                    await _ignore_errors(self._drop_group())
                raise WeightSyncError(f"weight push of version {version} ({self.cfg.weight_sync}) failed: {exc}\n"
                                      f"Generation stays paused on the servers that were paused (their weights may "
                                      f"be partly updated); a successful update_weights resumes them.") from exc
            for s in self.servers:
                s.version = version
            await self.resume_memory()

    async def _flush(self, server: _Server) -> None:
        """``/flush_cache`` until it answers 200 (it refuses while requests run)."""
        deadline = time.monotonic() + self.cfg.flush_timeout_s
        while True:
            try:
                await self._call(server, "POST", "/flush_cache", None, self.cfg.control_timeout_s)
                return
            except SGLangRequestError as exc:
                if time.monotonic() >= deadline:
                    raise SGLangRequestError(f"SGLang server {server.url} kept refusing /flush_cache for "
                                             f"{self.cfg.flush_timeout_s:.0f}s (last: {exc})") from exc
            await asyncio.sleep(self.cfg.flush_retry_interval_s)

    @staticmethod
    def _bucket_body(i: int, n: int, version: int) -> dict:
        last = i == n - 1
        return {"flush_cache": last, "weight_version": str(version) if last else None}

    async def _push_distributed(self, state: dict, version: int) -> None:
        group = await self._ensure_group()
        buckets = make_buckets(state, self.cfg.bucket_bytes)
        for i, bucket in enumerate(buckets):
            body = {**bucket.manifest.as_request(), "group_name": self._group_name,
                    **self._bucket_body(i, len(buckets), version)}
            broadcast = asyncio.ensure_future(asyncio.to_thread(broadcast_bucket, bucket, group))
            self._group_thread = broadcast
            await _first_error(self._on_all(lambda s: self._control(s, "/update_weights_from_distributed", body)),
                               broadcast)

    async def _ensure_group(self):
        """Rank 0 of a new weight-update group that every server's TP ranks join. Each group gets
        a fresh name (``<group_name>_<n>``), so a group left behind by a failed push never clashes."""
        if self._group is not None:
            return self._group
        cfg = self.cfg
        self._group_count += 1
        name = f"{cfg.group_name}_{self._group_count}"
        port = cfg.master_port or free_port(cfg.master_address)
        world = 1 + cfg.num_engines * cfg.tp_size

        def body(s: _Server) -> dict:
            return {"master_address": cfg.master_address, "master_port": port, "rank_offset": 1 + s.index * cfg.tp_size,
                    "world_size": world, "group_name": name, "backend": cfg.group_backend}

        init = asyncio.ensure_future(asyncio.to_thread(init_weight_update_group, cfg.master_address, port, world,
                                                       name, cfg.group_backend, cfg.group_timeout_s))
        try:
            await _first_error(self._on_all(lambda s: self._control(s, "/init_weights_update_group", body(s))), init)
        except BaseException:
            _when_done(init, lambda pg: destroy_weight_update_group(pg))   # if rank 0 still gets its group
            raise
        self._group, self._group_name, self._group_thread = init.result(), name, None
        return self._group

    async def _drop_group(self) -> None:
        """Leave the weight group (a member restarted, a push failed, or closing): the servers
        destroy it, and this process does once no broadcast thread uses it any more."""
        if self._group is None:
            return
        group, thread, self._group = self._group, self._group_thread, None
        await asyncio.gather(*(self._control(s, "/destroy_weights_update_group", {"group_name": self._group_name})
                               for s in self.servers), return_exceptions=True)
        if thread is None or thread.done():
            destroy_weight_update_group(group)
        else:  # a broadcast whose receivers failed: it ends at the group's timeout
            thread.add_done_callback(lambda _: destroy_weight_update_group(group))

    async def _push_tensor(self, state: dict, version: int) -> None:
        buckets = make_buckets(state, self.cfg.bucket_bytes)
        for i, bucket in enumerate(buckets):
            def body(s: _Server, bucket=bucket, i=i) -> dict:
                # one entry per TP rank, serialised per server: each entry can be opened once
                return {"serialized_named_tensors": [serialize_named_tensors(bucket.named_tensors())
                                                     for _ in range(self.cfg.tp_size)],
                        "load_format": None, **self._bucket_body(i, len(buckets), version)}

            await self._on_all(lambda s: self._control(s, "/update_weights_from_tensor", body(s)))

    async def _push_disk(self, state: dict, version: int) -> None:
        root = Path(self.cfg.disk_dir)
        path = await asyncio.to_thread(save_checkpoint, state, self.cfg.model_path, root / f"weights_v{version}")
        await self._on_all(lambda s: self._control(s, "/update_weights_from_disk", {
            "model_path": str(path), "weight_version": str(version), "flush_cache": True}))
        pushed = sorted((p for p in root.glob("weights_v*") if p.is_dir() and p.name[len("weights_v"):].isdigit()),
                        key=lambda p: int(p.name[len("weights_v"):]))
        for old in pushed[:-self.cfg.keep_checkpoints]:
            if old != path:
                shutil.rmtree(old, ignore_errors=True)


async def _ignore_errors(aw: Awaitable[Any]) -> None:
    try:
        await aw
    except Exception:  # noqa: BLE001 - best effort while another error is being reported
        pass


async def _first_error(*aws: Awaitable[Any]) -> None:
    """Wait for all; on the first error raise it at once. What is still running goes on (a
    broadcast thread whose receivers failed cannot be stopped; it ends at the group's timeout)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in pending:
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no "never retrieved" noise
    for task in done:
        if task.exception() is not None:
            raise task.exception()


def _when_done(future: asyncio.Future, use_result: Callable[[Any], Any]) -> None:
    def callback(f: asyncio.Future) -> None:
        if not f.cancelled() and f.exception() is None:
            use_result(f.result())
    future.add_done_callback(callback)
