"""The ``hf`` engine: a transformers causal LM that generates batches with a KV cache.

:class:`HFGenerator` is the in-process model (used directly by evaluation code and tests);
:class:`HFEngineActor` wraps it in an async Ray actor that gathers concurrent ``generate``
requests from many episodes into one batch (dynamic batching), so rollout workers can run
episodes independently while the model still sees batches.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoModelForCausalLM

from rollout.engine import GenerateOutput, SamplingParams

# cuDNN's fused attention builds an execution plan for every new sequence length (about 2 ms of CPU
# each, measured on an H100 with torch 2.11: a 0.5B model decoded at 95 ms/step instead of 20), and
# decoding meets a new length at every step; generation uses the other attention kernels.
GENERATE_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The sampling distribution's logits: logits/T, then top-k, then nucleus (top-p) filtering."""
    logits = logits / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return logits


class HFGenerator:
    """Batched sampling with a KV cache; returns token ids and their behaviour log-probs."""

    def __init__(self, model_path: str | Path, pad_token_id: int, seed: int, num_threads: int,
                 device: str = "cpu", dtype: str = "float32") -> None:
        torch.set_num_threads(num_threads)
        self.device = torch.device(device)
        self.model = load_causal_lm(model_path, dtype).to(self.device)
        self.model.eval()
        self.pad_token_id = pad_token_id
        self.generator = torch.Generator(device=self.device).manual_seed(seed)  # samples where the logits are
        self.version = 0
        self.released = False

    def release_memory(self) -> None:
        """Colocated training: the weights go to host memory (the KV cache lives only inside a
        `generate` call), and the device's cache is given back; on the CPU nothing moves."""
        if self.device.type != "cpu":
            self.model.to("cpu")
            torch.cuda.empty_cache()
        self.released = True

    def resume_memory(self) -> None:
        self.model.to(self.device)
        self.released = False

    def load_state(self, state: dict, version: int) -> None:
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
        if missing or unexpected:
            raise ValueError(f"weight update does not match the engine's model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        self.version = version

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[GenerateOutput]:
        if self.released:
            raise RuntimeError("the hf engine's memory is released (release_memory): resume_memory() or "
                               "update_weights first")
        with sdpa_kernel(GENERATE_SDPA_BACKENDS):
            return self._generate(prompts, params)

    @torch.inference_mode()
    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[GenerateOutput]:
        device = self.device
        batch, longest = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((batch, longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((batch, longest), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding
            ids[i, longest - len(p):] = torch.tensor(p)
            mask[i, longest - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        stop = torch.tensor(sorted(set(params.stop_token_ids)) or [-1], device=device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        past, logits = out.past_key_values, out.logits[:, -1, :].float()
        # Sampled ids and log-probs stay on the model's device; one [batch] flag crosses per step.
        tokens, logps = [], []
        alive = torch.ones(batch, dtype=torch.bool, device=device)
        lengths = torch.zeros(batch, dtype=torch.long, device=device)
        next_pos = positions[:, -1] + 1
        for _ in range(params.max_new_tokens):
            dist_logits = filter_logits(logits, params.temperature, params.top_k, params.top_p)
            logprobs_all = torch.log_softmax(dist_logits, dim=-1)
            nxt = torch.multinomial(logprobs_all.exp(), 1, generator=self.generator).squeeze(-1)
            lp = logprobs_all.gather(-1, nxt[:, None]).squeeze(-1)
            nxt = torch.where(alive, nxt, torch.full_like(nxt, self.pad_token_id))
            tokens.append(nxt)
            logps.append(lp)
            lengths += alive.long()
            alive &= ~torch.isin(nxt, stop)
            if not alive.any():
                break
            mask = torch.cat([mask, alive.long()[:, None]], dim=1)
            out = self.model(input_ids=nxt[:, None], attention_mask=mask,
                             position_ids=next_pos[:, None], past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1, :].float()
            next_pos = next_pos + 1
        tokens_cpu = torch.stack(tokens, dim=1).cpu()
        logps_cpu = torch.stack(logps, dim=1).cpu()
        lengths_cpu = lengths.cpu()
        results = []
        for i in range(batch):
            n = int(lengths_cpu[i])
            ids_i = tokens_cpu[i, :n].tolist()
            finished = n > 0 and ids_i[-1] in params.stop_token_ids
            results.append(GenerateOutput(token_ids=ids_i, logprobs=logps_cpu[i, :n].tolist(),
                                          finish_reason="stop" if finished else "length",
                                          weight_versions=[self.version] * n))
        return results

    @torch.inference_mode()
    def score(self, sequences: list[list[int]], temperature: float, token_budget: int = 16384) -> list[list[float]]:
        """Prefill-only scoring of given token ids (no sampling, ids used exactly as passed):

            s_i = log softmax(z_{i-1} / T)[x_i]   for i >= 1,   s_0 = 0

        where z_{i-1} are the logits after x_0..x_{i-1} and T is `temperature` (the rollout
        temperature, so a teacher scores the distribution the student sampled from; no top-k/top-p).
        Sequences are right-padded in groups of at most `token_budget` tokens."""
        return [own for own, _, _ in self.score_top_k(sequences, temperature, 0, token_budget)]

    def score_top_k(self, sequences: list[list[int]], temperature: float, k: int,
                    token_budget: int = 16384) -> list[tuple[list[float], list[list[int]], list[list[float]]]]:
        """:meth:`score`, plus at every position i >= 1 the `k` most likely tokens under
        log softmax(z_{i-1} / T) and their log-probs (position 0: k zeros), per sequence
        ``(own log-probs, top ids [L][k], top log-probs [L][k])``."""
        if temperature <= 0:
            raise ValueError(f"scoring temperature must be > 0 (got {temperature})")
        device = next(self.model.parameters()).device
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        out: list[tuple[list[float], list[list[int]], list[list[float]]]] = [([], [], []) for _ in sequences]
        start = 0
        while start < len(order):
            longest = max(1, len(sequences[order[start]]))
            count = max(1, min(len(order) - start, token_budget // longest))
            group = order[start: start + count]
            start += count
            ids = torch.full((len(group), longest), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(group), longest), dtype=torch.long)
            for row, i in enumerate(group):
                ids[row, : len(sequences[i])] = torch.tensor(sequences[i], dtype=torch.long)
                mask[row, : len(sequences[i])] = 1
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1] / temperature, dim=-1)
            picked = logp.gather(-1, ids[:, 1:, None].to(device)).squeeze(-1).cpu()
            top_lp, top_ids = (t.cpu() for t in logp.topk(k, dim=-1)) if k else (None, None)
            for row, i in enumerate(group):
                n = len(sequences[i])
                if n and k:
                    out[i] = ([0.0] + picked[row, : n - 1].tolist(), [[0] * k] + top_ids[row, : n - 1].tolist(),
                              [[0.0] * k] + top_lp[row, : n - 1].tolist())
                elif n:
                    out[i] = ([0.0] + picked[row, : n - 1].tolist(), [], [])
        return out


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_causal_lm(path: str | Path, dtype: str = "float32") -> torch.nn.Module:
    """Load a causal LM from a local checkpoint directory, naming the path if it is unusable."""
    path = Path(path)
    if dtype not in DTYPES:
        raise ValueError(f"engine dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model checkpoint at {path} (config.json missing)")
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=DTYPES[dtype])
    except (OSError, ValueError, RuntimeError) as exc:
        raise RuntimeError(f"cannot load the model checkpoint at {path}: {exc}") from exc


@dataclass
class _Request:
    prompt: list[int]
    params: SamplingParams
    future: asyncio.Future


class HFEngineActor:
    """Async Ray actor serving :class:`HFGenerator` with dynamic batching.

    Requests that arrive while a batch runs are queued; each batch takes up to ``max_batch``
    requests with equal sampling params. ``update_weights`` waits for the running batch, so every
    token of a batch was sampled by one version; episodes continue across updates (partial rollout).
    """

    def __init__(self, model_path: str, pad_token_id: int, seed: int, num_threads: int,
                 max_batch: int, batch_wait_s: float, device: str = "cpu", dtype: str = "float32") -> None:
        self.gen = HFGenerator(model_path, pad_token_id, seed, num_threads, device, dtype)
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.queue: list[_Request] = []
        self.lock = asyncio.Lock()
        self.wakeup = asyncio.Event()
        self.loop_task: asyncio.Task | None = None

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> GenerateOutput:
        if self.loop_task is None:
            self.loop_task = asyncio.get_running_loop().create_task(self._batch_loop())
        future = asyncio.get_running_loop().create_future()
        self.queue.append(_Request(list(prompt_ids), params, future))
        self.wakeup.set()
        return await future

    async def _batch_loop(self) -> None:
        while True:
            await self.wakeup.wait()
            await asyncio.sleep(self.batch_wait_s)
            if not self.queue:
                self.wakeup.clear()
                continue
            params = self.queue[0].params
            batch = [r for r in self.queue if r.params == params][: self.max_batch]
            taken = {id(r) for r in batch}
            self.queue = [r for r in self.queue if id(r) not in taken]
            if not self.queue:
                self.wakeup.clear()
            async with self.lock:
                try:
                    outs = await asyncio.to_thread(self.gen.generate, [r.prompt for r in batch], params)
                except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                    for r in batch:
                        r.future.set_exception(exc)
                    continue
            for r, o in zip(batch, outs):
                r.future.set_result(o)

    async def update_weights(self, state: dict, version: int) -> None:
        """Load `state` as `version`; a released engine takes its memory back (colocated training)."""
        async with self.lock:
            self.gen.load_state(state, version)
            if self.gen.released:
                self.gen.resume_memory()

    async def release_memory(self, tags: list[str] | None = None) -> None:
        """The Engine interface's colocated-training hooks (`tags` as SGLang's; the hf engine has
        only its weights to move)."""
        async with self.lock:
            self.gen.release_memory()

    async def resume_memory(self, tags: list[str] | None = None) -> None:
        async with self.lock:
            self.gen.resume_memory()

    async def weight_version(self) -> int:
        return self.gen.version

    async def score(self, sequences: list[list[int]], temperature: float) -> list[list[float]]:
        """Prefill-only log-probs of each sequence's own tokens (:meth:`HFGenerator.score`); waits for
        a running generation batch, like a weight update."""
        async with self.lock:
            return await asyncio.to_thread(self.gen.score, [list(s) for s in sequences], temperature)

    async def score_top_k(self, sequences: list[list[int]], temperature: float, k: int) -> list[tuple]:
        """:meth:`HFGenerator.score_top_k` (own log-probs plus the top `k` per position), like :meth:`score`."""
        async with self.lock:
            return await asyncio.to_thread(self.gen.score_top_k, [list(s) for s in sequences], temperature, k)

