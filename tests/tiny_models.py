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


def save_tiny_agent_policy(path: Path, tasks) -> Path:
    """A 1-layer, 32-wide Qwen2 agent policy with a 400-token BPE tokenizer trained on `tasks`'
    prompts and scripted tool calls, saved at `path` (what the rollout cluster loads)."""
    from envs.solver import scripted_solution
    from rollout.chat import prompt_text, render_tool_call
    from rollout.tokenizer import build_bpe_tokenizer

    corpus = [prompt_text(t.instruction) + "".join(render_tool_call(c) for c in scripted_solution(t)) for t in tasks]
    tok = build_bpe_tokenizer(corpus, 400, path)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(str(path))
    return path
