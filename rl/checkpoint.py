"""Exact-resume checkpoints: everything a run needs to continue as if it had never stopped.

A checkpoint root holds complete checkpoints and a `latest` pointer:

    <root>/latest                  the name of the newest complete checkpoint (one line)
    <root>/step_00000012/
        manifest.json              written last inside the checkpoint: every file's size
        state.json                 step, weight version, PPOLearner.steps_done, sampler position
                                   (+ a fingerprint of its task list), metrics history, `extra`
        rng_rank<r>.pt             python `random`, torch CPU (and CUDA), numpy global RNG states
        policy/ds/...              DeepSpeed engine state (module, optimiser, lr scheduler)
        critic/ds/...              the same for the critic
        policy_hf/                 the policy in `save_pretrained` layout (+ tokenizer if given)
    <root>/.tmp-step_00000013/     a write that was interrupted: ignored, removed by the next save

Invariants:
- A checkpoint is written into `.tmp-<name>`, every file and directory is fsynced, the directory is
  renamed to `<name>`, and only then is `latest` replaced (write + fsync + `os.replace`). A process
  killed at any instant leaves `latest` naming a complete checkpoint (or no `latest` at all).
- `latest` is the acknowledgement: a checkpoint is part of the run's history once `latest` names it.
  Saving step s removes every checkpoint numbered after s, and replaces an existing one numbered s:
  they belong to a timeline the run left (it resumed from an earlier checkpoint, or was killed
  between the rename and the pointer update). `latest` is moved off a checkpoint before it goes.
- Loading never silently picks another checkpoint: a missing, incomplete or damaged one raises
  `CheckpointError` naming the path.

All ranks call `save_checkpoint` / `load_checkpoint` (the DeepSpeed calls are collective); rank 0
writes the shared files and commits. The root must be on a file system every rank sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from rl.learner import PPOLearner
    from rl.orchestrator import TaskSampler

FORMAT = 1
LATEST = "latest"
MANIFEST = "manifest.json"
STATE = "state.json"
DS_TAG = "ds"
ENGINES = ("policy", "critic")
POLICY_HF = "policy_hf"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
NAME_RE = re.compile(r"^step_(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names its path."""


@dataclass
class ResumeState:
    """What the driver needs besides the learner and sampler, which are restored in place."""

    path: Path                       # the checkpoint directory that was loaded
    step: int                        # training steps completed; the loop continues at this index
    version: int                     # weight version last pushed to the engines
    metrics_history: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(root: Path, step: int, learner: PPOLearner, sampler: TaskSampler, version: int,
                    metrics_history: list[dict], extra: dict, keep: int = 3,
                    tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """Atomically write checkpoint `step` under `root`, point `latest` at it, keep the newest `keep`.

    `step` counts completed training steps (resume continues the loop at `step`); `version` is the
    weight version the engines hold; `metrics_history` and `extra` must be JSON-serialisable.
    `tokenizer` (optional) is saved next to the policy's `save_pretrained` weights so an engine can
    load that directory as it is. Returns the checkpoint directory."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    root = Path(root)
    name = checkpoint_name(step)
    final, tmp = root / name, root / (TMP_PREFIX + name)
    rank = _rank()
    state_text = json.dumps({
        "format": FORMAT, "step": step, "version": version, "steps_done": learner.steps_done,
        "sampler": sampler.state(), "sampler_fingerprint": sampler_fingerprint(sampler),
        "metrics_history": metrics_history, "extra": extra,
        "reference": str(learner.policy.reference.path) if learner.policy.reference is not None else None,
    })  # serialise first: a value that is not JSON fails before anything is written

    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(root)
        tmp.mkdir()
    _barrier()

    for engine_name, learner_part in zip(ENGINES, (learner.policy, learner.critic)):
        learner_part.engine.save_checkpoint(str(tmp / engine_name), tag=DS_TAG, save_latest=False)
    weights = learner.policy.state_dict()  # gathers ZeRO-3 partitions: every rank takes part
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    if rank == 0:
        learner.policy.engine.module.save_pretrained(str(tmp / POLICY_HF), state_dict=weights)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / POLICY_HF))
        (tmp / STATE).write_text(state_text)
    _barrier()

    if rank == 0:
        _write_manifest(tmp, step)
        _fsync_tree(tmp)
        if final.exists():  # from a timeline the run has left (it resumed from an earlier checkpoint)
            if _read_latest(root) == name:  # move the pointer off it first, so it never names a missing dir
                earlier = [p for s, p in _checkpoint_dirs(root) if s < step]
                if earlier:
                    _write_latest(root, earlier[-1].name)
                else:
                    (root / LATEST).unlink()
                    _fsync_dir(root)
            _discard(root, final)
        os.rename(tmp, final)
        _fsync_dir(root)
        _write_latest(root, name)
        _prune(root, step, keep)
    _barrier()
    return final


def reference_of(path: Path | None) -> Path | None:
    """The KL reference policy (``algo.kl_coef``) of the run that wrote checkpoint `path`: the policy
    that run started RL from, so a resumed run keeps the same one. None when `path` is None or the
    run had no reference."""
    if path is None:
        return None
    ckpt = resolve_checkpoint(Path(path))
    try:
        reference = json.loads((ckpt / STATE).read_text()).get("reference")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt / STATE}: unreadable checkpoint state ({e})") from e
    return Path(reference) if reference else None


def load_checkpoint(path: Path, learner: PPOLearner, sampler: TaskSampler) -> ResumeState:
    """Restore learner (both DeepSpeed engines and `steps_done`), sampler position and RNG states
    from `path`: a checkpoint directory, or a root whose `latest` names one."""
    ckpt = resolve_checkpoint(Path(path))
    manifest = verify_checkpoint(ckpt)
    try:
        state = json.loads((ckpt / STATE).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt / STATE}: unreadable checkpoint state ({e})") from e
    if state.get("format") != FORMAT or state.get("step") != manifest["step"]:
        raise CheckpointError(f"{ckpt / STATE}: format {state.get('format')} / step {state.get('step')} does not "
                              f"match the manifest (format {FORMAT}, step {manifest['step']})")
    if state["sampler_fingerprint"] != sampler_fingerprint(sampler):
        raise CheckpointError(f"{ckpt}: the checkpoint's task sampler ({state['sampler_fingerprint']}) is not this "
                              f"run's ({sampler_fingerprint(sampler)}); its position would mean other tasks")

    for engine_name, learner_part in zip(ENGINES, (learner.policy, learner.critic)):
        where = ckpt / engine_name
        try:
            load_path, _ = learner_part.engine.load_checkpoint(str(where), tag=DS_TAG, load_optimizer_states=True,
                                                               load_lr_scheduler_states=True)
        except Exception as e:  # DeepSpeed raises many types for damaged files
            raise CheckpointError(f"{where}: cannot load the {engine_name} DeepSpeed state ({e!r})") from e
        if load_path is None:
            raise CheckpointError(f"{where}: DeepSpeed found no {engine_name} checkpoint (tag {DS_TAG!r})")

    rng_file = ckpt / f"rng_rank{_rank()}.pt"
    try:
        rng = torch.load(rng_file, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{rng_file}: cannot load RNG states ({e!r})") from e
    learner.steps_done = int(state["steps_done"])
    sampler.load_state(state["sampler"])
    set_rng_state(rng)
    return ResumeState(path=ckpt, step=int(state["step"]), version=int(state["version"]),
                       metrics_history=state["metrics_history"], extra=state["extra"])


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint `root/latest` names, or None when `root` has no `latest` yet."""
    name = _read_latest(Path(root))
    return None if name is None else Path(root) / name


def resolve_checkpoint(path: Path) -> Path:
    """`path` itself if it is a checkpoint directory, else the one its `latest` file names."""
    if (path / MANIFEST).is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or checkpoint root")
    name = _read_latest(path)
    if name is None:
        raise CheckpointError(f"{path}: not a complete checkpoint (no {MANIFEST}) and no {LATEST} pointer in it")
    target = path / name
    if not (target / MANIFEST).is_file():
        raise CheckpointError(f"{target}: named by {path / LATEST} but missing or incomplete")
    return target


def verify_checkpoint(ckpt: Path) -> dict:
    """Check that every file the manifest lists is there with its recorded size; return the manifest."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        files, step = manifest["files"], int(manifest["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt / MANIFEST}: unreadable manifest ({e!r})") from e
    for rel, size in files.items():
        f = ckpt / rel
        if not f.is_file():
            raise CheckpointError(f"{ckpt}: file {rel} listed in the manifest is missing")
        if f.stat().st_size != size:
            raise CheckpointError(f"{ckpt}: file {rel} has {f.stat().st_size} bytes, the manifest says {size}")
    return {"step": step, "files": files}


def sampler_fingerprint(sampler: TaskSampler) -> dict:
    """Seed and task list of a sampler: a saved position only means something for the same ones."""
    ids = "\n".join(t.task_id for t in sampler.tasks).encode()
    return {"seed": sampler.seed, "num_tasks": len(sampler.tasks), "task_ids_sha256": hashlib.sha256(ids).hexdigest()}


def rng_state() -> dict:
    """The global RNG states a training process draws from (python, numpy, torch CPU and CUDA)."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss},
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _read_latest(root: Path) -> str | None:
    try:
        name = (root / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    if not NAME_RE.match(name):
        raise CheckpointError(f"{root / LATEST}: does not name a checkpoint ({name!r})")
    return name


def _write_latest(root: Path, name: str) -> None:
    tmp = root / (LATEST + ".tmp")
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST)
    _fsync_dir(root)


def _write_manifest(ckpt: Path, step: int) -> None:
    files = {str(p.relative_to(ckpt)): p.stat().st_size for p in sorted(ckpt.rglob("*")) if p.is_file()}
    (ckpt / MANIFEST).write_text(json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1))


def _fsync_tree(top: Path) -> None:
    for dirpath, _, filenames in os.walk(top):
        for fn in filenames:
            fd = os.open(os.path.join(dirpath, fn), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_leftovers(root: Path) -> None:
    """Directories of interrupted writes (and a stale pointer temp file) from an earlier process."""
    for p in root.iterdir():
        if p.name.startswith((TMP_PREFIX, TRASH_PREFIX)) and p.is_dir():
            shutil.rmtree(p)
    (root / (LATEST + ".tmp")).unlink(missing_ok=True)


def _prune(root: Path, step: int, keep: int) -> None:
    """Keep checkpoint `step` and the `keep - 1` newest before it; a checkpoint numbered after `step`
    belongs to an abandoned timeline (the run resumed from an earlier one) and goes too."""
    steps = _checkpoint_dirs(root)
    older = [p for s, p in steps if s < step]
    for p in older[: max(0, len(older) - (keep - 1))] + [p for s, p in steps if s > step]:
        _discard(root, p)


def _checkpoint_dirs(root: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every checkpoint-named directory under `root`, oldest first."""
    return sorted((int(m.group(1)), p) for p in root.iterdir() if (m := NAME_RE.match(p.name)) and p.is_dir())


def _discard(root: Path, ckpt: Path) -> None:
    """Rename to `.trash-*`, then delete: a kill mid-delete never leaves a half checkpoint under a
    checkpoint's name."""
    trash = root / (TRASH_PREFIX + ckpt.name)
    os.rename(ckpt, trash)
    _fsync_dir(root)
    shutil.rmtree(trash)
