"""Build the default policy's tokenizer: a byte-level BPE trained on the task suite's text.

No tokenizer can be downloaded here, so the project builds one. Byte-level BPE covers every
byte (any text encodes, nothing maps to <unk>); the merges come from the suite's
demonstrations, so code and tool calls are short in tokens. The result is saved as a standard
`PreTrainedTokenizerFast` directory and loaded back with `AutoTokenizer.from_pretrained`,
the same code path as any local Hugging Face checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from rollout.chat import ENDOFTEXT, IM_END, SPECIAL_TOKENS, chat_template


def build_bpe_tokenizer(corpus: Iterable[str], vocab_size: int, out_dir: Path) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus`, save it to `out_dir` and load it back from there."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT, bos_token=None, unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (IM_END, ENDOFTEXT)],
    )
    fast.chat_template = chat_template()
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return load_tokenizer(out_dir)


def load_tokenizer(path: Path | str) -> PreTrainedTokenizerFast:
    """Load a tokenizer from a local directory (never from a hub)."""
    path = Path(path)
    if not (path / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"no tokenizer at {path} (tokenizer_config.json missing)")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
