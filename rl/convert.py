"""`horizonrl-convert`: a training checkpoint's DeepSpeed state -> a transformers checkpoint.

    horizonrl-convert runs/<run>/checkpoints/step_00000100 out/policy               # the policy
    horizonrl-convert runs/<run>/checkpoints/step_00000100 out/critic --part critic # the value model

Every checkpoint already holds the policy in ``save_pretrained`` layout (``policy_hf/``); this
rebuilds either model from the DeepSpeed engine state alone: ZeRO-0 keeps the full module in
``mp_rank_00_model_states.pt``; ZeRO 1-3 keep fp32 partitions per rank, merged with DeepSpeed's
own ``zero_to_fp32`` (no GPU needed, any number of ranks). The model's config (and tokenizer)
come from ``policy_hf/``. The other direction needs no tool: ``model.path=<transformers dir>``
starts training from any transformers checkpoint.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification

from rl.checkpoint import DS_TAG, ENGINES, POLICY_HF, CheckpointError, resolve_checkpoint

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def engine_state_dict(ds_dir: Path) -> dict[str, torch.Tensor]:
    """The full fp32 weights of one DeepSpeed engine's checkpoint directory (the one holding tag ``ds``)."""
    tag_dir = ds_dir / DS_TAG
    if not tag_dir.is_dir():
        raise CheckpointError(f"{tag_dir}: no DeepSpeed state (tag {DS_TAG!r}) here")
    if any(tag_dir.glob("*optim_states.pt")):   # ZeRO 1-3: partitions to merge
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return dict(get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag=DS_TAG))
    model_states = tag_dir / "mp_rank_00_model_states.pt"
    if not model_states.is_file():
        raise CheckpointError(f"{tag_dir}: neither ZeRO partitions nor {model_states.name}")
    state = torch.load(model_states, map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in state["module"].items()}


def convert(checkpoint: Path, out_dir: Path, part: str = "policy") -> Path:
    """Write `part` (policy | critic) of `checkpoint` to `out_dir` in ``save_pretrained`` layout."""
    if part not in ENGINES:
        raise ValueError(f"part must be one of {ENGINES}, got {part!r}")
    ckpt = resolve_checkpoint(Path(checkpoint))
    hf = ckpt / POLICY_HF
    config = AutoConfig.from_pretrained(str(hf), local_files_only=True)
    if part == "policy":
        model = AutoModelForCausalLM.from_config(config)
    else:
        config.num_labels = 1
        model = AutoModelForTokenClassification.from_config(config)
    state = engine_state_dict(ckpt / part)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise CheckpointError(f"{ckpt / part}: the DeepSpeed state does not fit the {part} model of {hf}: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    for name in TOKENIZER_FILES:
        if (hf / name).is_file():
            shutil.copy2(hf / name, out_dir / name)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="horizonrl-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint dir, or a checkpoints root (its latest)")
    parser.add_argument("out", type=Path, help="where to write the transformers checkpoint")
    parser.add_argument("--part", choices=ENGINES, default="policy")
    args = parser.parse_args(argv)
    try:
        print(convert(args.checkpoint, args.out, args.part))
    except CheckpointError as exc:
        print(f"horizonrl-convert: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
