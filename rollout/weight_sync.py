"""Moving a learner's weights into SGLang servers: buckets, manifests and the three transports.

A weight push sends a state dict (``name -> tensor``) in *buckets*: consecutive tensors whose
byte sizes add up to at most ``bucket_bytes`` (a single tensor larger than that travels alone).
Each bucket has a *manifest* (names, dtype names, shapes) in the form SGLang's
``UpdateWeightsFromDistributedReqInput`` takes it (``python/sglang/srt/managers/io_struct.py``,
SGLang 0.5.23): dtypes are the names ``getattr(torch, name)`` resolves (``"bfloat16"``), shapes are
lists of ints.

The transports (the HTTP side lives in :mod:`rollout.sglang_engine`):

``distributed``
    The learner's process is rank 0 of a process group that every server's TP ranks join
    (``/init_weights_update_group``). Per bucket the server is told the manifest
    (``/update_weights_from_distributed``), allocates empty tensors and receives them by
    ``torch.distributed.broadcast(src=0)``, in manifest order, while the learner broadcasts
    (:func:`broadcast_bucket`). :func:`init_weight_update_group` builds rank 0's side the way SGLang
    builds the servers' side (``init_custom_process_group`` in
    ``python/sglang/srt/utils/common.py``): a TCP rendezvous at ``master_address:master_port``
    hosted by rank 0, a store prefixed with the group name, a group that exists without a default
    process group. NCCL in production; gloo works the same on CPU (the tests use gloo).
``tensor``
    For servers colocated with the learner: ``/update_weights_from_tensor`` takes
    ``serialized_named_tensors``, one entry per server TP rank, each the base64 of a
    ``multiprocessing.reduction.ForkingPickler`` pickle of ``[(name, tensor), ...]`` (SGLang's
    ``MultiprocessingSerializer.serialize(named_tensors, output_str=True)``,
    ``python/sglang/srt/utils/common.py``; ``HttpServerEngine.update_weights_from_tensor`` in
    ``python/sglang/srt/entrypoints/http_server_engine.py`` sends exactly this). The pickle carries
    *handles*, not bytes: a CUDA tensor becomes a CUDA IPC handle (the production case: the
    learner's GPU tensors are mapped by the server on the same GPUs), a CPU tensor becomes a
    shared-memory file descriptor passed through the sender's ``multiprocessing`` resource sharer,
    which only a process holding the sender's ``multiprocessing`` authkey can fetch (the sender
    itself: the tests exercise the encoding against a server thread in the same process). The
    sender must keep the tensors alive until the server has answered.
``disk``
    :func:`save_checkpoint` writes the state as a Hugging Face checkpoint (safetensors shards +
    index, shared tensors saved once, every non-weight file of the base checkpoint copied: config,
    tokenizer) and the server loads it with ``/update_weights_from_disk``. Needs a filesystem the
    servers can read.

Tested on CPU: bucketing, manifests, the gloo group and broadcast protocol against a server
process, the tensor payload encoding against a server in the same process, the checkpoint.
Not exercised without a GPU: NCCL groups and CUDA IPC handles.
"""

from __future__ import annotations

import base64
import io
import shutil
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Iterable, Mapping

import torch
import torch.distributed as dist

WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json")


def dtype_name(dtype: torch.dtype) -> str:
    """The dtype as SGLang's manifests name it: ``torch.bfloat16 -> "bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """The inverse of :func:`dtype_name`, naming the manifest entry when it is not a torch dtype."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"manifest dtype {name!r} is not a torch dtype")
    return dtype


@dataclass(frozen=True)
class Manifest:
    """Names, dtype names and shapes of a bucket's tensors, in broadcast order."""

    names: list[str]
    dtypes: list[str]
    shapes: list[list[int]]

    def as_request(self) -> dict:
        return {"names": list(self.names), "dtypes": list(self.dtypes), "shapes": [list(s) for s in self.shapes]}


@dataclass
class Bucket:
    """Consecutive tensors of a state dict sent together."""

    names: list[str] = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)
    nbytes: int = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.names.append(name)
        self.tensors.append(tensor)
        self.nbytes += tensor_nbytes(tensor)

    @property
    def manifest(self) -> Manifest:
        return Manifest(names=list(self.names), dtypes=[dtype_name(t.dtype) for t in self.tensors],
                        shapes=[list(t.shape) for t in self.tensors])

    def named_tensors(self) -> list[tuple[str, torch.Tensor]]:
        return list(zip(self.names, self.tensors))


def tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def make_buckets(state: Mapping[str, torch.Tensor], bucket_bytes: int) -> list[Bucket]:
    """Split `state` into buckets of at most `bucket_bytes`, keeping the state's order.

    Every tensor lands in exactly one bucket; a tensor larger than `bucket_bytes` gets a bucket
    of its own. Tensors are detached and made contiguous (broadcast and pickling need that).
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be >= 1 (got {bucket_bytes})")
    buckets: list[Bucket] = []
    current = Bucket()
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state entry {name!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().contiguous()
        if current.names and current.nbytes + tensor_nbytes(tensor) > bucket_bytes:
            buckets.append(current)
            current = Bucket()
        current.add(name, tensor)
    if current.names:
        buckets.append(current)
    return buckets


# ----------------------------------------------------------------------------------------------
# distributed: rank 0 of the weight-update group
# ----------------------------------------------------------------------------------------------

def custom_process_group(master_address: str, master_port: int, rank: int, world_size: int, group_name: str,
                         backend: str, timeout_s: float) -> dist.ProcessGroup:
    """SGLang's ``init_custom_process_group``: a named group over a TCP rendezvous store, usable
    without a default process group. Rank 0 hosts the store; every rank calls this."""
    from torch.distributed.distributed_c10d import Backend, PrefixStore, _new_process_group_helper, _world, rendezvous

    timeout = timedelta(seconds=timeout_s)
    store, rank, world_size = next(rendezvous(f"tcp://{master_address}:{master_port}", rank, world_size,
                                              timeout=timeout))
    store.set_timeout(timeout)
    store = PrefixStore(group_name, store)
    pg, _ = _new_process_group_helper(world_size, rank, [], Backend(backend), store, group_name=group_name,
                                      backend_options=None, timeout=timeout)
    _world.pg_group_ranks[pg] = {i: i for i in range(world_size)}
    return pg


def init_weight_update_group(master_address: str, master_port: int, world_size: int, group_name: str,
                             backend: str, timeout_s: float) -> dist.ProcessGroup:
    """Create the learner's side (rank 0) of the group the servers join via ``/init_weights_update_group``.

    Mirrors SGLang's ``init_custom_process_group``: rank 0 hosts the TCP rendezvous store, the
    store is prefixed with `group_name`, and the group is registered so that
    ``torch.distributed.broadcast(..., group=pg)`` works without a default process group. Blocks
    until all `world_size` ranks have joined (or `timeout_s` passes).
    """
    return custom_process_group(master_address, master_port, 0, world_size, group_name, backend, timeout_s)


def destroy_weight_update_group(group: dist.ProcessGroup) -> None:
    dist.destroy_process_group(group)


def broadcast_bucket(bucket: Bucket, group: dist.ProcessGroup) -> None:
    """Broadcast the bucket's tensors from rank 0, in manifest order (blocking until all arrived)."""
    handles = [dist.broadcast(t, src=0, group=group, async_op=True) for t in bucket.tensors]
    for handle in handles:
        handle.wait()


# ----------------------------------------------------------------------------------------------
# tensor: SGLang's serialized_named_tensors
# ----------------------------------------------------------------------------------------------

def serialize_named_tensors(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """One ``serialized_named_tensors`` entry: base64 of a ForkingPickler pickle of ``[(name, tensor)]``.

    Each entry can be deserialised once (it holds process-sharing handles), so build one per
    server TP rank.
    """
    buf = io.BytesIO()
    ForkingPickler(buf).dump([(name, tensor) for name, tensor in named_tensors])
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------------------------
# disk: a Hugging Face checkpoint of the state
# ----------------------------------------------------------------------------------------------

def shared_tensor_duplicates(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names whose storage an earlier name of `state` already covers (tied embeddings, say)."""
    seen: dict[tuple, str] = {}
    duplicates = []
    for name, tensor in state.items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tensor.dtype)
        if tensor.numel() and key in seen:
            duplicates.append(name)
        else:
            seen.setdefault(key, name)
    return duplicates


def save_checkpoint(state: Mapping[str, torch.Tensor], base_model_path: str | Path, out_dir: str | Path,
                    max_shard_size: str = "5GB") -> Path:
    """Write `state` as a Hugging Face checkpoint in `out_dir` (what ``save_pretrained`` writes).

    Non-weight files of `base_model_path` (config, generation config, tokenizer) are copied so
    the directory loads on its own; the weights go to safetensors shards with an index. A tensor
    sharing storage with an earlier one (tied embeddings) is saved once, under the earlier name,
    as ``save_pretrained`` does.
    """
    from huggingface_hub import save_torch_state_dict

    base, out = Path(base_model_path), Path(out_dir)
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"base checkpoint {base} has no config.json; the disk weight sync copies it")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for item in base.iterdir():
        if item.is_file() and not item.name.endswith(WEIGHT_FILE_SUFFIXES):
            shutil.copy2(item, out / item.name)
    duplicates = set(shared_tensor_duplicates(state))
    tensors = {name: t.detach().cpu() for name, t in state.items() if name not in duplicates}
    save_torch_state_dict(tensors, out, max_shard_size=max_shard_size)
    return out
