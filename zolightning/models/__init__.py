"""Causal LMs and tokenizers: packaged GGUF, local, hub, and tiny test models."""

from zolightning.models.loading import ModelNotFoundError, load_causal_lm, load_tokenizer, resolve_model

__all__ = ["ModelNotFoundError", "load_causal_lm", "load_tokenizer", "resolve_model"]
