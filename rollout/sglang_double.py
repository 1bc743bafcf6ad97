"""TEST DOUBLE of an SGLang 0.5.23 HTTP server (test infrastructure, not production).

It answers the native endpoints :mod:`rollout.sglang_engine` uses with the request and response
shapes of SGLang **0.5.23**, read from that release's source (wheel ``sglang==0.5.23``):

* ``python/sglang/srt/entrypoints/http_server.py``: the routes, status codes and bodies
  (``/generate``, ``/health_generate``, ``/server_info`` + the deprecated ``/get_server_info``,
  ``/model_info``, ``/abort_request``, ``/pause_generation``, ``/continue_generation``,
  ``/flush_cache`` (200 text, or 400 ``"Flush cache failed.\\n"`` while requests run),
  ``/init_weights_update_group``, ``/destroy_weights_update_group``, ``/begin_weight_update``,
  ``/end_weight_update``, ``/update_weights_from_distributed``, ``/update_weights_from_tensor``,
  ``/update_weights_from_disk``, ``/update_weight_version``, ``/get_weights_by_name``,
  ``/release_memory_occupation`` and ``/resume_memory_occupation`` with optional ``tags``).
* ``python/sglang/srt/managers/io_struct.py``: request fields (``GenerateReqInput``,
  ``AbortReq``, ``PauseGenerationReqInput`` with modes abort / retract / in_place,
  ``UpdateWeightsFromDistributedReqInput``, ``UpdateWeightsFromTensorReqInput``,
  ``UpdateWeightFromDiskReqInput``, ``InitWeightsUpdateGroupReqInput``, ...).
* ``python/sglang/api/v1/api_types.py``: the ``/generate`` contract (unknown sampling-param keys
  rejected with 400).
* ``python/sglang/srt/managers/tokenizer_manager.py`` and
  ``python/sglang/srt/utils/weight_versions.py``: the response (``output_ids``, ``meta_info``
  with ``id``, ``finish_reason``, ``output_token_logprobs`` as ``[logprob, token_id, null]``,
  ``weight_version`` and the per-token ``weight_versions`` spans ``{version, start, end}``).
* ``python/sglang/srt/managers/scheduler.py``, ``.../scheduler_components/logprob_result_processor.py``
  and ``python/sglang/srt/layers/logprob_processor.py``: prompt log-probs for prefill-only scoring
  (``max_new_tokens: 0``, ``return_logprob``, ``logprob_start_len``, ``top_logprobs_num``):
  ``input_token_logprobs`` from ``logprob_start_len`` on with the first entry's log-prob ``null``,
  ``input_top_logprobs`` likewise (first row ``null``), log_softmax of the raw logits (no
  temperature); a ``logprob_start_len`` past the prompt is refused.
* ``python/sglang/srt/managers/schedule_batch.py``: finish reasons (``{"type": "stop",
  "matched": id-or-str}``, ``{"type": "length", "length": n}``, ``{"type": "abort", ...}``).
* ``python/sglang/srt/managers/scheduler_components/weight_updater.py``: distributed and tensor
  updates must run inside ``begin_weight_update``/``end_weight_update``; the version recorded at
  an update; the receive loop (``torch.empty`` + ``broadcast(src=0)`` per manifest entry).
* ``python/sglang/srt/managers/scheduler_components/weight_updater.py`` and ``python/sglang/srt/constants.py``:
  memory release for colocated training: tags ``weights``, ``kv_cache``, ``cuda_graph`` (none = all),
  only when the server is idle (paused requests may wait), a resumed tag must have been released;
  without ``--enable-memory-saver`` the release is accepted and frees nothing.
* ``python/sglang/srt/layers/sampler.py``: returned log-probs are ``log_softmax(logits / T)`` of the
  sampled token (before top-k / top-p renormalisation).
* ``python/sglang/srt/utils/common.py``: ``init_custom_process_group`` (joined here as the
  receiving rank, gloo on CPU) and the unpickler allow-list of ``serialized_named_tensors``.

It really generates: a transformers causal LM loaded from ``--model-path`` (a tiny Qwen2 in the
tests) samples every token, so log-probs are the model's own. One request runs as one asyncio
task, one token per step, with a full forward per step (no KV cache, no batching).

Test controls (not SGLang): it records the order of the control calls (``calls``, or
``GET /_double/calls``), answers ``/flush_cache`` with "busy" N more times
(:meth:`SGLangDouble.answer_flush_busy`, ``POST /_double/flush_busy``), can sleep per token
(``token_delay_s``) so tests can pause or abort mid-generation, keeps the ``input_ids`` of every
``/generate`` (``prompts``), reports any SGLang version
(``--double-sglang-version``) and can die and be restarted (:meth:`SGLangDouble.stop` /
:meth:`SGLangDouble.start` in a thread, or killing the process started by
``python -m rollout.sglang_double``, which takes SGLang's launch flags and exits with argparse's
error on an unknown one, as ``sglang serve`` does). Weight names are the checkpoint's Hugging Face
names (SGLang's ``load_weights`` maps them onto fused layers; the double loads them as they are).

Simplifications: no streaming, no batched ``input_ids``, no radix cache (``/flush_cache`` only
checks for running requests), text and stop strings only when the model directory has a
tokenizer (otherwise it behaves as ``--skip-tokenizer-init``), top log-probs of prompt positions
only (``output_top_logprobs`` stays empty), and it joins a weight-update group
as a single TP rank. :class:`RouterDouble` stands in for ``sglang_router`` (``/health`` and
round-robin ``/generate``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import pickle
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from aiohttp import web

from rollout.weight_sync import custom_process_group

DOUBLE_SGLANG_VERSION = "0.5.23"

# python/sglang/api/v1/api_types.py: SamplingParams (unknown keys rejected)
SAMPLING_PARAM_KEYS = frozenset({
    "max_new_tokens", "stop", "stop_token_ids", "stop_regex", "temperature", "top_p", "top_k", "min_p",
    "frequency_penalty", "presence_penalty", "repetition_penalty", "min_new_tokens", "n", "json_schema", "regex",
    "ebnf", "structural_tag", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim",
    "stream_interval", "logit_bias", "sampling_seed", "custom_params", "beam_width", "watermark", "choice",
})
TOP_K_ALL = 1 << 30
# python/sglang/srt/constants.py: GPU_MEMORY_ALL_TYPES
MEMORY_TAGS = ("kv_cache", "weights", "cuda_graph")



@dataclass
class _Request:
    rid: str
    prompt: list[int]
    sampling: dict
    return_logprob: bool = False
    logprob_start_len: int = -1      # input positions to return log-probs from (-1: none)
    top_logprobs_num: int = 0
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    version_events: list[tuple[str, int]] = field(default_factory=list)  # (old version, tokens so far)
    abort_message: Optional[str] = None
    num_retractions: int = 0
    created: float = field(default_factory=time.monotonic)


class _BadRequest(Exception):
    """A /generate body SGLang rejects with 400: ``{"error": {"message": ...}}`` from request
    validation, ``{"error": "..."}`` from the API contract check (``contract=True``)."""

    def __init__(self, message: str, contract: bool = False) -> None:
        super().__init__(message)
        self.contract = contract


class _ThreadedApp:
    """An aiohttp app served from a background thread (``start``) or the current loop (``serve_forever``)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port or _free_port(host)
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner: Optional[web.AppRunner] = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def routes(self) -> list[tuple[str, str, Any]]:
        raise NotImplementedError

    async def on_started(self) -> None:
        """Set up loop-bound state (runs in the serving loop)."""

    def start(self) -> str:
        """Serve from a background thread; returns the URL once it accepts connections."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} at {self.url} is already running")
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start_site())
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"{type(self).__name__}-{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            self._thread = None
            raise errors[0]
        return self.url

    def stop(self) -> None:
        """Die: in-flight requests lose their connections and the port closes; ``start`` restarts."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        self._loop = None

    async def _start_site(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        for method, path, handler in self.routes():
            app.router.add_route(method, path, handler)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        await web.SockSite(self._runner, sock).start()
        await self.on_started()

    async def _shutdown(self) -> None:
        for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class SGLangDouble(_ThreadedApp):
    """An SGLang-0.5.23-shaped HTTP server backed by a tiny transformers model (test double)."""

    def __init__(self, model_path: str | Path, *, host: str = "127.0.0.1", port: int = 0,
                 weight_version: str = "default", sglang_version: str = DOUBLE_SGLANG_VERSION, tp_size: int = 1,
                 seed: int = 0, token_delay_s: float = 0.0, skip_tokenizer_init: bool = False,
                 server_args: Optional[dict] = None, enable_memory_saver: bool = False) -> None:
        super().__init__(host, port)
        self.model_path = str(model_path)
        self.launch_weight_version = weight_version
        self.sglang_version = sglang_version
        self.tp_size = tp_size
        self.seed = seed
        self.token_delay_s = token_delay_s
        self.skip_tokenizer_init = skip_tokenizer_init
        self.server_args = dict(server_args or {})
        self.enable_memory_saver = enable_memory_saver
        self.calls: list[str] = []          # control endpoints hit, in order
        self.call_bodies: list[tuple[str, dict]] = []  # weight-update calls with their bodies (payloads elided)
        self.flush_busy_remaining = 0
        self.max_running = 0                # the most requests generating at once
        self.prompts: list[list[int]] = []  # input_ids of every /generate taken, in order
        self._load_model()

    def _load_model(self) -> None:
        """(Re)load the checkpoint: a restarted server has the launch weights and version again."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, local_files_only=True,
                                                          dtype=torch.float32).eval()
        self.tokenizer = None
        if not self.skip_tokenizer_init and (Path(self.model_path) / "tokenizer_config.json").is_file():
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        eos = self.model.config.eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.generator = torch.Generator().manual_seed(self.seed)
        self.weight_version = self.launch_weight_version
        self.requests: dict[str, _Request] = {}  # every request the server knows (abort by rid)
        self.running: set[str] = set()           # the ones past the pause gate (the scheduler's)
        self.is_pause = False
        self.pause_mode = "abort"
        self.session_open = False
        self.groups: dict[str, Any] = {}
        self.released: set[str] = set()          # memory tags given back (release_memory_occupation)
        self.startup_time = time.time()

    def stop(self) -> None:
        super().stop()
        self._load_model()

    async def on_started(self) -> None:
        self._pause_changed = asyncio.Condition()

    async def serve_forever(self) -> None:
        await self._start_site()
        print(f"The server is fired up and ready to roll! ({self.url}, SGLang test double "
              f"reporting version {self.sglang_version})", file=sys.stderr, flush=True)
        await asyncio.Event().wait()

    def routes(self) -> list[tuple[str, str, Any]]:
        return [
            ("GET", "/health", self.health), ("GET", "/health_generate", self.health),
            ("GET", "/server_info", self.server_info), ("GET", "/get_server_info", self.server_info),
            ("GET", "/model_info", self.model_info), ("GET", "/get_model_info", self.model_info),
            ("POST", "/generate", self.generate), ("PUT", "/generate", self.generate),
            ("POST", "/abort_request", self.abort_request),
            ("POST", "/pause_generation", self.pause_generation),
            ("POST", "/continue_generation", self.continue_generation),
            ("GET", "/flush_cache", self.flush_cache), ("POST", "/flush_cache", self.flush_cache),
            ("POST", "/init_weights_update_group", self.init_weights_update_group),
            ("POST", "/destroy_weights_update_group", self.destroy_weights_update_group),
            ("POST", "/begin_weight_update", self.begin_weight_update),
            ("POST", "/end_weight_update", self.end_weight_update),
            ("POST", "/update_weights_from_distributed", self.update_weights_from_distributed),
            ("POST", "/update_weights_from_tensor", self.update_weights_from_tensor),
            ("POST", "/update_weights_from_disk", self.update_weights_from_disk),
            ("POST", "/update_weight_version", self.update_weight_version),
            ("GET", "/get_weights_by_name", self.get_weights_by_name),
            ("POST", "/release_memory_occupation", self.release_memory_occupation),
            ("GET", "/release_memory_occupation", self.release_memory_occupation),
            ("POST", "/resume_memory_occupation", self.resume_memory_occupation),
            ("GET", "/resume_memory_occupation", self.resume_memory_occupation),
            ("POST", "/get_weights_by_name", self.get_weights_by_name),
            ("GET", "/_double/calls", self.double_calls),
            ("POST", "/_double/flush_busy", self.double_flush_busy),
            ("GET", "/_double/weights_digest", self.double_weights_digest),
        ]

    # ------------------------------------------------------------------ test controls (not SGLang)
    def answer_flush_busy(self, times: int) -> None:
        """Answer the next `times` calls of ``/flush_cache`` with 400 "Flush cache failed" (busy)."""
        self.flush_busy_remaining = times

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    async def double_calls(self, request: web.Request) -> web.Response:
        return web.json_response(self.calls)

    async def double_flush_busy(self, request: web.Request) -> web.Response:
        self.answer_flush_busy(int((await request.json())["count"]))
        return web.json_response({"success": True})

    async def double_weights_digest(self, request: web.Request) -> web.Response:
        return web.json_response({k: tensor_digest(v) for k, v in self.model.state_dict().items()})

    # ------------------------------------------------------------------ info
    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def server_info(self, request: web.Request) -> web.Response:
        info = {"model_path": self.model_path, "host": self.host, "port": self.port, "tp_size": self.tp_size,
                "weight_version": self.launch_weight_version, "random_seed": self.seed,
                "skip_tokenizer_init": self.skip_tokenizer_init, **self.server_args,
                "startup_time": self.startup_time,
                "internal_states": [{"num_running_reqs": len(self.running)}],
                "version": self.sglang_version, "frontend": "python"}
        return web.json_response(info)

    async def model_info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "model_path": self.model_path, "served_model_name": self.model_path, "tokenizer_path": self.model_path,
            "is_generation": True, "preferred_sampling_params": None, "weight_version": self.weight_version,
            "load_format": "auto", "model_type": self.model.config.model_type,
            "architectures": self.model.config.architectures})

    # ------------------------------------------------------------------ generate
    async def generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.enable_memory_saver and self.released & {"weights", "kv_cache"}:
            # SGLang would run on freed memory; the double refuses loudly instead
            return web.json_response({"error": {"message": f"TEST DOUBLE: /generate while memory is released "
                                                           f"({sorted(self.released)})"}}, status=400)
        try:
            req = self._parse_generate(body)
        except _BadRequest as exc:
            return web.json_response({"error": str(exc) if exc.contract else {"message": str(exc)}}, status=400)
        self.requests[req.rid] = req
        self.prompts.append(list(req.prompt))
        try:
            async with self._pause_changed:  # requests that arrive while paused wait (tokenizer manager)
                await self._pause_changed.wait_for(lambda: not self.is_pause or req.abort_message is not None)
            self.running.add(req.rid)
            self.max_running = max(self.max_running, len(self.running))
            finish = await self._run(req)
        finally:
            self.requests.pop(req.rid, None)
            self.running.discard(req.rid)
        return web.json_response(self._response(req, finish))

    def _parse_generate(self, body: dict) -> _Request:
        if not isinstance(body, dict):
            raise _BadRequest("the /generate body must be a JSON object")
        if body.get("stream"):
            raise _BadRequest("the SGLang test double does not stream")
        ids = body.get("input_ids")
        if ids is None and body.get("text") is not None:
            if self.tokenizer is None:
                raise _BadRequest("text input needs a tokenizer (the server runs with --skip-tokenizer-init)")
            ids = self.tokenizer.encode(body["text"])
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
            raise _BadRequest("input_ids must be a non-empty list of token ids (batches are not supported here)")
        vocab = self.model.config.vocab_size
        if any(t < 0 or t >= vocab for t in ids):
            raise _BadRequest(f"input_ids contain a token id outside the vocabulary [0, {vocab})")
        sp = dict(body.get("sampling_params") or {})
        unknown = sorted(set(sp) - SAMPLING_PARAM_KEYS)
        if unknown:
            raise _BadRequest(f"sampling_params: unknown field(s) {unknown}", contract=True)
        sp.setdefault("max_new_tokens", 128)
        sp.setdefault("temperature", 1.0)
        sp.setdefault("top_p", 1.0)
        top_k = sp.get("top_k", -1)
        if top_k is None:
            top_k = -1
        if top_k < 1 and top_k != -1:  # python/sglang/srt/sampling/sampling_params.py: verify()
            raise _BadRequest(f"top_k must be -1 (disable) or at least 1, got {top_k}.")
        if sp["max_new_tokens"] is not None and sp["max_new_tokens"] < 0:   # sampling_params.py: verify()
            raise _BadRequest(f"max_new_tokens must be at least 0, got {sp['max_new_tokens']}.")
        if not 0.0 < sp["top_p"] <= 1.0:
            raise _BadRequest(f"top_p must be in (0, 1], got {sp['top_p']}.")
        if sp["temperature"] < 0:
            raise _BadRequest(f"temperature must be a non-negative finite number, got {sp['temperature']}.")
        if sp["temperature"] < 1e-6:  # greedy
            sp["temperature"], top_k = 1.0, 1
        sp["top_k"] = TOP_K_ALL if top_k == -1 else top_k
        if sp.get("stop") and self.tokenizer is None:
            raise _BadRequest("stop strings need a tokenizer (the server runs with --skip-tokenizer-init)")
        if len(ids) + sp["max_new_tokens"] > self.model.config.max_position_embeddings:
            raise _BadRequest(f"Requested token count exceeds the model's maximum context length of "
                              f"{self.model.config.max_position_embeddings} tokens.")
        rid = body.get("rid") or uuid.uuid4().hex
        if rid in self.requests:
            raise _BadRequest(f"Duplicate request ID detected: {rid}")
        return_logprob = bool(body.get("return_logprob"))
        start = body.get("logprob_start_len")
        start = -1 if start is None or not return_logprob else int(start)   # scheduler.py: ignored without logprobs
        if start > len(ids):   # scheduler.py aborts the request with this message
            raise _BadRequest(f"req.logprob_start_len={start} is higher than the number of input tokens "
                              f"len(req.origin_input_ids)={len(ids)}. Please use a smaller logprob_start_len.")
        return _Request(rid=rid, prompt=list(ids), sampling=sp, return_logprob=return_logprob,
                        logprob_start_len=start, top_logprobs_num=int(body.get("top_logprobs_num") or 0))

    async def _run(self, req: _Request) -> dict:
        sp = req.sampling
        stops = set(sp.get("stop_token_ids") or [])
        if not sp.get("ignore_eos"):
            stops |= self.eos_token_ids
        stop_strs = [sp["stop"]] if isinstance(sp.get("stop"), str) else list(sp.get("stop") or [])
        for _ in range(sp["max_new_tokens"]):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            if self.is_pause and self.pause_mode != "abort" and req.abort_message is None:
                req.num_retractions += self.pause_mode == "retract"
                async with self._pause_changed:
                    await self._pause_changed.wait_for(lambda: not self.is_pause or req.abort_message is not None)
            if req.abort_message is not None:
                return {"type": "abort", "message": req.abort_message, "status_code": None, "err_type": None}
            token, logprob = self._sample(req)
            req.output_ids.append(token)
            req.logprobs.append(logprob)
            if token in stops:
                return {"type": "stop", "matched": token}
            if stop_strs:
                text = self.tokenizer.decode(req.output_ids, skip_special_tokens=False)
                hit = next((s for s in stop_strs if s in text), None)
                if hit is not None:
                    return {"type": "stop", "matched": hit}
        return {"type": "length", "length": sp["max_new_tokens"]}

    @torch.no_grad()
    def _sample(self, req: _Request) -> tuple[int, float]:
        sp = req.sampling
        logits = self.model(torch.tensor([req.prompt + req.output_ids])).logits[0, -1].float()
        scaled = logits / sp["temperature"]
        logprobs = torch.log_softmax(scaled, dim=-1)          # what SGLang returns (sampler.py)
        probs = logprobs.exp()
        if sp["top_k"] < probs.numel():
            kth = torch.topk(probs, sp["top_k"]).values[-1]
            probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
        if sp["top_p"] < 1.0:
            sorted_p, idx = torch.sort(probs, descending=True)
            cum = sorted_p.cumsum(-1)
            sorted_p = torch.where(cum - sorted_p > sp["top_p"] * cum[-1], torch.zeros_like(sorted_p), sorted_p)
            probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        token = int(torch.multinomial(probs / probs.sum(), 1, generator=self.generator))
        return token, float(logprobs[token])

    @torch.no_grad()
    def _input_logprobs(self, req: _Request) -> tuple[list, list]:
        """``input_token_logprobs`` and ``input_top_logprobs`` of the prompt from ``logprob_start_len``
        on, as SGLang 0.5.23 builds them (logprob_result_processor.py: the first entry's log-prob is
        None and the last position's, the next token's, is dropped; logprob_processor.py: log_softmax
        of the logits with no temperature): ``[[lp, id, None], ...]`` and ``[None, [[lp, id, None] x k], ...]``."""
        start, ids = req.logprob_start_len, req.prompt
        if start < 0 or start >= len(ids):
            return [], []
        logp = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), dim=-1)
        own = [None] + [float(logp[i - 1, ids[i]]) for i in range(start + 1, len(ids))]
        entries = [[lp, t, None] for lp, t in zip(own, ids[start:])]
        if req.top_logprobs_num <= 0:
            return entries, []
        values, index = logp[start: len(ids) - 1].topk(req.top_logprobs_num, dim=-1)
        top = [None] + [[[float(v), int(i), None] for v, i in zip(vs, ix)] for vs, ix in zip(values, index)]
        return entries, top

    def _response(self, req: _Request, finish: dict) -> dict:
        n = len(req.output_ids)
        spans = compute_weight_version_spans(req.version_events, self.weight_version, n)
        visible = [s for s in spans if s["start"] < n or s["start"] == 0]
        meta = {
            "id": req.rid, "finish_reason": finish, "prompt_tokens": len(req.prompt),
            "weight_version": visible[-1]["version"], "num_retractions": req.num_retractions,
            "reasoning_tokens": 0, "completion_tokens": n, "cached_tokens": 0,
            "weight_versions": [{"version": s["version"], "start": s["start"], "end": min(s["end"], n)}
                                for s in visible],
            "e2e_latency": time.monotonic() - req.created,
        }
        if req.return_logprob:
            meta["input_token_logprobs"], top = self._input_logprobs(req)
            if req.top_logprobs_num > 0:
                meta["input_top_logprobs"] = top
                meta["output_top_logprobs"] = []   # (the double returns top log-probs of input positions only)
            meta["output_token_logprobs"] = [[lp, t, None] for lp, t in zip(req.logprobs, req.output_ids)]
            meta["output_token_logprobs_length"] = n
        out: dict = {"output_ids": list(req.output_ids), "meta_info": meta}
        if self.tokenizer is not None:
            ids = req.output_ids
            if finish["type"] == "stop" and isinstance(finish.get("matched"), int) and \
                    not req.sampling.get("no_stop_trim"):
                ids = ids[:-1]
            out = {"text": self.tokenizer.decode(ids, skip_special_tokens=req.sampling.get("skip_special_tokens",
                                                                                           True)), **out}
        return out

    # ------------------------------------------------------------------ abort / pause / flush
    async def abort_request(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append("abort_request")
        if body.get("abort_all"):
            self._abort_all("Aborted")
        elif body.get("rid"):
            req = self.requests.get(body["rid"])
            if req is not None:
                req.abort_message = "Aborted"
        await self._notify()
        return web.Response(status=200)

    def _abort_all(self, message: str) -> None:
        for req in self.requests.values():
            req.abort_message = message

    async def _notify(self) -> None:
        async with self._pause_changed:
            self._pause_changed.notify_all()

    async def pause_generation(self, request: web.Request) -> web.Response:
        body = await _json_or_empty(request)
        mode = body.get("mode", "abort")
        if mode not in ("abort", "retract", "in_place"):
            return web.json_response({"detail": f"mode must be abort, retract or in_place (got {mode!r})"}, status=422)
        self.calls.append("pause_generation")
        self.is_pause, self.pause_mode = True, mode
        if mode == "abort":
            for rid in self.running:
                self.requests[rid].abort_message = "Aborted"
            await self._notify()
            while self.running:
                await asyncio.sleep(0.01)
        return web.json_response({"message": "Generation paused successfully.", "status": "ok"})

    async def continue_generation(self, request: web.Request) -> web.Response:
        self.calls.append("continue_generation")
        self.is_pause = False
        await self._notify()
        return web.json_response({"message": "Generation continued successfully.", "status": "ok"})

    def _is_fully_idle(self) -> bool:
        """Scheduler.flush_cache: idle, ignoring waiting requests while paused (retracted ones wait)."""
        if not self.running:
            return True
        return self.is_pause and self.pause_mode == "retract"

    async def flush_cache(self, request: web.Request) -> web.Response:
        self.calls.append("flush_cache")
        if self.flush_busy_remaining > 0 or not self._is_fully_idle():
            self.flush_busy_remaining = max(0, self.flush_busy_remaining - 1)
            return web.Response(text="Flush cache failed.\n", status=400)
        return web.Response(text="Cache flushed.\nPlease check backend logs for more details. (When there are running "
                                 "or waiting requests, the operation will not be performed.)\n", status=200)

    # ------------------------------------------------------------------ weight updates
    async def _control_body(self, request: web.Request, name: str, required: tuple[str, ...]) -> dict:
        body = await _json_or_empty(request)
        self.calls.append(name)
        self.call_bodies.append((name, {k: (f"<{len(v)} payloads>" if k == "serialized_named_tensors" else v)
                                        for k, v in body.items()}))
        missing = [k for k in required if k not in body]
        if missing:
            raise web.HTTPUnprocessableEntity(text=json.dumps({"detail": f"missing field(s) {missing}"}),
                                              content_type="application/json")
        return body

    async def _wait_writer(self) -> None:
        """Not paused: wait for running requests to finish (the tokenizer manager's writer lock)."""
        if not self.is_pause:
            while self.running:
                await asyncio.sleep(0.01)

    def _record_version(self, new_version: Optional[str]) -> None:
        """Scheduler.record_weight_version_change: tokens so far keep the old version."""
        if new_version is None or new_version == self.weight_version:
            return
        for req in self.requests.values():
            if req.output_ids:
                req.version_events.append((self.weight_version, len(req.output_ids)))
        self.weight_version = new_version

    def _load(self, named: list[tuple[str, torch.Tensor]]) -> tuple[bool, str]:
        params = dict(self.model.named_parameters(remove_duplicate=False))  # tied lm_head.weight included
        unknown = [n for n, _ in named if n not in params]
        if unknown:
            return False, f"Failed to update weights: unknown parameter name(s) {unknown[:5]}"
        for name, tensor in named:
            if tuple(tensor.shape) != tuple(params[name].shape):
                return False, (f"Failed to update weights: {name} has shape {tuple(tensor.shape)}, "
                               f"the model's is {tuple(params[name].shape)}")
        with torch.no_grad():
            for name, tensor in named:
                params[name].copy_(tensor.to(params[name].dtype))
        return True, "Succeeded to update parameter online."

    def _after_update(self, body: dict, success: bool, message: str) -> tuple[bool, str]:
        if success:
            self._record_version(body.get("weight_version"))
            if body.get("flush_cache", True) and not self._is_fully_idle():
                return False, ("Weights were updated, but the cache was not flushed because requests are still "
                               "running or queued. Retract or finish them, then call /flush_cache.")
            if body.get("weight_version") is not None:
                message += f" Weight version updated to {body['weight_version']}."
        return success, message

    async def init_weights_update_group(self, request: web.Request) -> web.Response:
        body = await self._control_body(request, "init_weights_update_group",
                                        ("master_address", "master_port", "rank_offset", "world_size"))
        name = body.get("group_name", "weight_update_group")
        try:
            self.groups[name] = await asyncio.to_thread(
                join_process_group, body["master_address"], int(body["master_port"]), int(body["rank_offset"]),
                int(body["world_size"]), name, body.get("backend", "nccl"))
            success, message = True, "Succeeded to initialize custom process group."
        except Exception as exc:  # noqa: BLE001 - reported like SGLang does
            success, message = False, f"Failed to initialize custom process group: {exc}."
        return web.json_response({"success": success, "message": message}, status=200 if success else 400)

    async def destroy_weights_update_group(self, request: web.Request) -> web.Response:
        body = await self._control_body(request, "destroy_weights_update_group", ())
        name = body.get("group_name", "weight_update_group")
        if name not in self.groups:
            return web.json_response({"success": False, "message": "The group to be destroyed does not exist."},
                                     status=400)
        await asyncio.to_thread(torch.distributed.destroy_process_group, self.groups.pop(name))
        return web.json_response({"success": True, "message": "Succeeded to destroy custom process group."})

    # ------------------------------------------------------------------ memory (colocated training)
    async def release_memory_occupation(self, request: web.Request) -> web.Response:
        body = await self._control_body(request, "release_memory_occupation", ())
        if not self._is_fully_idle() or self.session_open:
            return web.json_response({"error": {"message": "release_memory_occupation should be called only when "
                                                           "server is idle."}}, status=400)
        tags = body.get("tags") or list(MEMORY_TAGS)
        if self.enable_memory_saver:
            self.released |= set(tags)
        return web.json_response(None)

    async def resume_memory_occupation(self, request: web.Request) -> web.Response:
        body = await self._control_body(request, "resume_memory_occupation", ())
        tags = body.get("tags") or list(MEMORY_TAGS)
        if self.enable_memory_saver:
            missing = [t for t in tags if t not in self.released]
            if missing:   # SGLang: offload_tags.remove(tag) raises KeyError
                return web.json_response({"error": {"message": f"{missing[0]!r}"}}, status=400)
            self.released -= set(tags)
        return web.json_response(None)

    def _weights_released(self) -> Optional[web.Response]:
        if self.enable_memory_saver and "weights" in self.released:
            return web.json_response({"success": False, "message": "TEST DOUBLE: weight update while the weights' "
                                      "memory is released (resume_memory_occupation first)"}, status=400)
        return None

    async def begin_weight_update(self, request: web.Request) -> web.Response:
        await self._control_body(request, "begin_weight_update", ())
        if (refused := self._weights_released()) is not None:
            return refused
        if self.session_open:
            return web.json_response({"success": False, "message": "a weight-update session is already open; "
                                      "call end_weight_update() first"}, status=400)
        self.session_open = True
        return web.json_response({"success": True, "message": "Success"})

    async def end_weight_update(self, request: web.Request) -> web.Response:
        await self._control_body(request, "end_weight_update", ())
        if not self.session_open:
            return web.json_response({"success": False, "message": "no weight-update session is open; call "
                                      "begin_weight_update() first"}, status=400)
        self.session_open = False
        return web.json_response({"success": True, "message": "Success"})

    async def update_weights_from_distributed(self, request: web.Request) -> web.Response:
        body = await self._control_body(request, "update_weights_from_distributed", ("names", "dtypes", "shapes"))
        if not self.session_open:
            return web.json_response({"success": False, "message": "update_weights_from_distributed must run between "
                                      "begin_weight_update() and end_weight_update()"}, status=400)
        name = body.get("group_name", "weight_update_group")
        if name not in self.groups:
            return web.json_response({"success": False, "message": f"Failed to receive weights: Group {name} not in "
                                      f"{list(self.groups)}. Please call `init_weights_update_group` first."},
                                     status=400)
        await self._wait_writer()
        try:
            named = await asyncio.to_thread(receive_broadcast, self.groups[name], body["names"], body["dtypes"],
                                            body["shapes"])
            success, message = self._load(named)
        except Exception as exc:  # noqa: BLE001
            success, message = False, f"Failed to receive weights: {exc}"
        success, message = self._after_update(body, success, message)
        return web.json_response({"success": success, "message": message}, status=200 if success else 400)

    async def update_weights_from_tensor(self, request: web.Request) -> web.Response:
        body = await self._control_body(request, "update_weights_from_tensor", ("serialized_named_tensors",))
        if not self.session_open:
            return web.json_response({"success": False, "message": "update_weights_from_tensor must run between "
                                      "begin_weight_update() and end_weight_update()"}, status=400)
        payloads = body["serialized_named_tensors"]
        if len(payloads) != self.tp_size:
            return web.json_response({"success": False, "message": f"serialized_named_tensors has {len(payloads)} "
                                      f"entries; this server has tp_size={self.tp_size}"}, status=400)
        if body.get("load_format") not in (None, "direct"):
            return web.json_response({"success": False, "message": f"Unknown load_format={body['load_format']}"},
                                     status=400)
        await self._wait_writer()
        try:
            per_rank = [safe_unpickle(base64.b64decode(p, validate=True)) for p in payloads]  # each TP rank its own
            success, message = self._load(list(per_rank[0]))
        except Exception as exc:  # noqa: BLE001
            success, message = False, f"Failed to update weights from tensor: {type(exc).__name__}: {exc}"
        if success:
            message = "Success"
        success, message = self._after_update(body, success, message)
        return web.json_response({"success": success, "message": message}, status=200 if success else 400)

    async def update_weights_from_disk(self, request: web.Request) -> web.Response:
        body = await self._control_body(request, "update_weights_from_disk", ("model_path",))
        if (refused := self._weights_released()) is not None:
            return refused
        if body.get("abort_all_requests"):
            self._abort_all("Aborted")
            await self._notify()
        await self._wait_writer()
        try:
            named = load_checkpoint_tensors(body["model_path"])
            params = dict(self.model.named_parameters(remove_duplicate=False))
            missing = [n for n in params if n not in dict(named) and not _tied(self.model, n)]
            if missing:
                raise ValueError(f"checkpoint {body['model_path']} lacks {missing[:5]}")
            success, message = self._load(named)
            if success:
                message = "Succeeded to update model weights."
        except Exception as exc:  # noqa: BLE001
            success, message = False, f"Failed to update weights: {exc}. Rolling back to the original weights."
        success, message = self._after_update(body, success, message)
        return web.json_response({"success": success, "message": message, "num_paused_requests": 0},
                                 status=200 if success else 400)

    async def update_weight_version(self, request: web.Request) -> web.Response:
        body = await self._control_body(request, "update_weight_version", ("new_version",))
        if body.get("abort_all_requests", True):
            self._abort_all("Aborted")
            await self._notify()
        self._record_version(body["new_version"])
        return web.json_response({"success": True, "message": f"Weight version updated to {body['new_version']}",
                                  "new_version": body["new_version"]})

    async def get_weights_by_name(self, request: web.Request) -> web.Response:
        body = await _json_or_empty(request)
        params = dict(self.model.named_parameters(remove_duplicate=False))
        if body.get("name") not in params:
            return web.json_response({"error": {"message": "Get parameter by name failed"}}, status=400)
        return web.json_response(params[body["name"]].detach()[: int(body.get("truncate_size", 100))].tolist())


class RouterDouble(_ThreadedApp):
    """TEST DOUBLE of ``sglang_router`` (0.3.2): ``GET /health`` and ``POST /generate`` forwarded
    round-robin to the workers; ``forwarded`` counts requests per worker URL."""

    def __init__(self, worker_urls: list[str], *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.worker_urls = list(worker_urls)
        self.forwarded: dict[str, int] = {u: 0 for u in self.worker_urls}
        self._next = 0

    def routes(self) -> list[tuple[str, str, Any]]:
        return [("GET", "/health", self.health), ("POST", "/generate", self.generate)]

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def generate(self, request: web.Request) -> web.Response:
        import aiohttp

        worker = self.worker_urls[self._next % len(self.worker_urls)]
        self._next += 1
        self.forwarded[worker] += 1
        async with aiohttp.ClientSession() as session:
            async with session.post(worker + "/generate", data=await request.read(),
                                    headers={"Content-Type": "application/json"}) as resp:
                return web.Response(body=await resp.read(), status=resp.status, content_type=resp.content_type)


def _tied(model: torch.nn.Module, name: str) -> bool:
    return name == "lm_head.weight" and bool(getattr(model.config, "tie_word_embeddings", False))


async def _json_or_empty(request: web.Request) -> dict:
    raw = await request.read()
    return json.loads(raw) if raw else {}


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tensor_digest(tensor: torch.Tensor) -> str:
    t = tensor.detach().cpu().contiguous()
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()


def compute_weight_version_spans(events: list[tuple[str, int]], current_version: str,
                                 num_output_tokens: int) -> list[dict]:
    """Port of ``compute_weight_version_spans`` (python/sglang/srt/utils/weight_versions.py)."""
    changes = list(events) + [(current_version, num_output_tokens)]
    spans: list[dict] = []
    for version, end in changes:
        end = min(end, num_output_tokens)
        if spans and end <= spans[-1]["end"]:
            continue
        if spans and version == spans[-1]["version"]:
            spans[-1]["end"] = end
            continue
        start = spans[-1]["end"] if spans else 0
        spans.append({"version": version, "start": start, "end": end})
    return spans


# ---------------------------------------------------------------------- the receiving side of transports
def join_process_group(master_address: str, master_port: int, rank_offset: int, world_size: int,
                       group_name: str, backend: str):
    """The server's side of ``init_custom_process_group`` (python/sglang/srt/utils/common.py), TP rank 0."""
    return custom_process_group(master_address, master_port, rank_offset, world_size, group_name, backend, 60.0)


def receive_broadcast(group, names: list[str], dtypes: list[str], shapes: list[list[int]]):
    """WeightUpdater.receive_weights_from_distributed: empty tensors, broadcast(src=0) each, wait all."""
    weights, handles = [], []
    for name, dtype, shape in zip(names, dtypes, shapes):
        weight = torch.empty(shape, dtype=getattr(torch, dtype))
        handles.append(torch.distributed.broadcast(weight, src=0, group=group, async_op=True))
        weights.append((name, weight))
    for handle in handles:
        handle.wait()
    return weights


class _SafeUnpickler(pickle.Unpickler):
    """The part of SGLang's ``SafeUnpickler`` allow-list that CPU tensors in a ForkingPickler use."""

    ALLOWED = {
        ("builtins", "list"), ("builtins", "tuple"), ("builtins", "str"), ("builtins", "int"),
        ("torch", "Tensor"), ("torch", "Size"), ("torch", "device"), ("torch.storage", "UntypedStorage"),
        ("torch", "UntypedStorage"), ("torch._utils", "_rebuild_tensor_v2"),
        ("torch.multiprocessing.reductions", "rebuild_tensor"),
        ("torch.multiprocessing.reductions", "rebuild_typed_storage"),
        ("torch.multiprocessing.reductions", "rebuild_storage_fd"),
        ("torch.multiprocessing.reductions", "rebuild_storage_filename"),
        ("torch.multiprocessing.reductions", "rebuild_storage_empty"),
        ("torch.multiprocessing.reductions", "rebuild_cuda_tensor"),
        ("multiprocessing.resource_sharer", "DupFd"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                               torch.dtype)):
            return super().find_class(module, name)
        raise RuntimeError(f"Blocked unsafe global ({module}.{name}) during pickle deserialization")


def safe_unpickle(data: bytes):
    return _SafeUnpickler(io.BytesIO(data)).load()


def load_checkpoint_tensors(model_path: str) -> list[tuple[str, torch.Tensor]]:
    from safetensors.torch import load_file

    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {path}")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    named: list[tuple[str, torch.Tensor]] = []
    for f in files:
        named.extend(load_file(str(f)).items())
    return named


# ---------------------------------------------------------------------- `python -m rollout.sglang_double`
def parse_args(argv: list[str]) -> argparse.Namespace:
    """SGLang's launch flags the double understands; anything else fails as in ``sglang serve``."""
    p = argparse.ArgumentParser(prog="sglang serve")
    p.add_argument("--model-path", "--model", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--tp-size", "--tensor-parallel-size", type=int, default=1)
    p.add_argument("--weight-version", default="default")
    p.add_argument("--random-seed", type=int, default=0)
    p.add_argument("--skip-tokenizer-init", action="store_true")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--mem-fraction-static", type=float)
    p.add_argument("--context-length", type=int)
    p.add_argument("--log-level", default="info")
    p.add_argument("--disable-radix-cache", action="store_true")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--load-format", default="auto")
    p.add_argument("--enable-memory-saver", action="store_true")
    p.add_argument("--double-sglang-version", default=DOUBLE_SGLANG_VERSION, help="test double: version to report")
    p.add_argument("--double-token-delay-s", type=float, default=0.0, help="test double: sleep per sampled token")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    extra = {"dtype": args.dtype, "mem_fraction_static": args.mem_fraction_static,
             "context_length": args.context_length, "disable_radix_cache": args.disable_radix_cache}
    double = SGLangDouble(args.model_path, host=args.host, port=args.port, weight_version=args.weight_version,
                          sglang_version=args.double_sglang_version, tp_size=args.tp_size, seed=args.random_seed,
                          token_delay_s=args.double_token_delay_s, skip_tokenizer_init=args.skip_tokenizer_init,
                          server_args=extra, enable_memory_saver=args.enable_memory_saver)
    asyncio.run(double.serve_forever())


if __name__ == "__main__":
    main()
