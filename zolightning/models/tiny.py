"""Tiny random-init models and a byte-level tokenizer, for tests and demos that must run offline in seconds."""

from __future__ import annotations

import torch

TINY_MODELS = {
    # name: (layers, hidden, heads, kv heads, intermediate, tied embeddings)
    "tiny-llama": (2, 64, 4, 2, 128, True),
    "tiny-llama-untied": (2, 64, 4, 2, 128, False),
}

_SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]


def build_byte_tokenizer():
    """A byte-level tokenizer with no merges: every UTF-8 byte is one token, so any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(_SPECIAL_TOKENS + sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=512
    )


def build_tiny_llama(name: str = "tiny-llama", seed: int = 0):
    """A 2-layer Llama with random weights drawn from `seed` (same seed, same weights, on every rank)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, hidden, heads, kv_heads, intermediate, tied = TINY_MODELS[name]
    config = LlamaConfig(
        vocab_size=len(_SPECIAL_TOKENS) + 256,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    return model
