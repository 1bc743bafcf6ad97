"""Tiny random-init transformers checkpoints for tests (built from a config: nothing is downloaded)."""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen2Config


def save_tiny_qwen2(path: Path, vocab_size: int, max_positions: int = 128, seed: int = 0) -> Path:
    """A 2-layer, 32-wide Qwen2 causal LM with tied embeddings, saved with `save_pretrained` at `path`."""
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_positions,
                      tie_word_embeddings=True, pad_token_id=0)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(path))
    return path
