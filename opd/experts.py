"""Make sure every model a distillation run needs exists: reuse it, or train it with `horizonrl-train`.

A model (the shared base or an expert) is a :class:`opd.config.ModelSource`. In order:

1. ``checkpoint`` exists: it is used as it is (and checked at start like any other checkpoint).
2. ``train_dir`` holds a finished `horizonrl-train` run (its ``summary.json``): its final policy is
   copied to ``checkpoint``.
3. ``train`` lists overrides: `horizonrl-train <overrides> hydra.run.dir=<train_dir>` runs (an expert
   also gets ``model.path=<base checkpoint>`` and ``suite.families=<its domain's families>``, so
   experts share the base's tokenizer and see only their domain), then step 2.
4. Otherwise the missing checkpoint is an error naming its path.

The experts are independent runs from one shared initialisation (MOPD's "parallel, independent
development of domain teachers"); here they run one after the other, as the machine has few cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from opd.config import DomainConfig, ModelSource, OPDConfig
from opd.teacher import CheckpointError


def final_policy(run_dir: Path) -> Path:
    """The policy a finished `horizonrl-train` run ended with: its last checkpoint's `policy_hf/`,
    or the SFT warm start when the run trained no RL step."""
    summary = json.loads((run_dir / "summary.json").read_text())
    path = Path(summary["checkpoint_dir"]) if summary["checkpoint_dir"] else run_dir / "sft"
    if not (path / "config.json").is_file():
        raise CheckpointError(f"the finished run {run_dir} has no final policy at {path}")
    return path


def train_command(source: ModelSource, extra: list[str]) -> list[str]:
    """`horizonrl-train` (next to this interpreter) with the recipe's overrides, then `extra`."""
    exe = Path(sys.executable).with_name("horizonrl-train")
    return [str(exe), *source.train, *extra, f"hydra.run.dir={source.train_dir}"]


def ensure_model(source: ModelSource, role: str, extra: list[str], say: Callable[[str], None]) -> Path:
    """The checkpoint of `source`, made as the module docstring says if it is missing."""
    checkpoint = Path(source.checkpoint)
    if checkpoint.exists():
        say(f"{role}: reusing {checkpoint}")
        return checkpoint
    if not source.train:
        raise CheckpointError(f"{role}: no checkpoint at {checkpoint} (and no `train` recipe to make it)")
    if not source.train_dir:
        raise CheckpointError(f"{role}: a `train` recipe needs a `train_dir` for its run")
    run_dir = Path(source.train_dir)
    if not (run_dir / "summary.json").is_file():
        command = train_command(source, extra)
        say(f"{role}: training -> {run_dir}: {' '.join(command[1:])}")
        run_dir.mkdir(parents=True, exist_ok=True)
        with (run_dir.parent / f"{run_dir.name}.log").open("w") as log:
            proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"{role}: horizonrl-train failed (exit {proc.returncode}); "
                               f"see {run_dir.parent / f'{run_dir.name}.log'}")
    else:
        say(f"{role}: reusing the finished run {run_dir}")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(final_policy(run_dir), checkpoint)
    say(f"{role}: {checkpoint}")
    return checkpoint


def ensure_models(opd: OPDConfig, say: Callable[[str], None]) -> None:
    """The base (if the student starts from it or an expert must be trained from it), then every expert."""
    domains: dict[str, DomainConfig] = {d.name: d for d in opd.domains}
    must_train = [e for e in opd.experts if e.train and not Path(e.checkpoint).exists()]
    if opd.base.checkpoint and (opd.student_init == "base" or must_train):
        ensure_model(opd.base, "base", [], say)
    elif must_train:
        raise CheckpointError(f"experts {[e.name for e in must_train]} must be trained but opd.base.checkpoint "
                              "is empty: experts are trained from the shared base so that they share its tokenizer")
    for expert in opd.experts:
        families = ",".join(domains[expert.domain].families)
        extra = [f"model.path={opd.base.checkpoint}", f"suite.families=[{families}]"] if opd.base.checkpoint else []
        ensure_model(expert, f"expert {expert.name}", extra, say)
