"""Blocks of the block-diagonal perturbation: one per trainable tensor, in the optimizer's walk order.

A block's effective size d~ weighs it in the normalisation (method.md §2.2): its element count, except for
token/position embedding matrices, which count as 15 x batch size x world size x hidden size (roughly the
rows a batch touches). A tied output head is the embedding tensor itself and appears once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

EMBEDDING_ROWS_PER_EXAMPLE = 15

_KINDS = (
    ("embedding", re.compile(r"embed|wte|wpe|word_embeddings|position_embeddings")),
    ("attn_q", re.compile(r"q_proj|query")),
    ("attn_k", re.compile(r"k_proj|key")),
    ("attn_v", re.compile(r"v_proj|value")),
    ("attn_o", re.compile(r"o_proj|out_proj|attn\.c_proj|attention\.dense")),
    ("mlp", re.compile(r"mlp|gate_proj|up_proj|down_proj|fc1|fc2|c_fc|dense_h_to_4h|dense_4h_to_h")),
    ("norm", re.compile(r"norm|ln_|layernorm")),
    ("head", re.compile(r"lm_head|embed_out")),
)


@dataclass(frozen=True)
class Block:
    name: str
    shape: tuple[int, ...]
    effective_size: int
    kind: str


def block_kind(name: str) -> str:
    """The family a parameter belongs to, for logging sigma by block type."""
    for kind, pattern in _KINDS:
        if pattern.search(name):
            return kind
    return "other"


def trainable_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters in `named_parameters()` order, tied tensors once (under their first name)."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def describe_blocks(model: nn.Module, batch_size: int, world_size: int = 1) -> list[Block]:
    """One Block per trainable tensor, with the embedding rule applied to nn.Embedding weights."""
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    blocks = []
    for name, p in trainable_named_parameters(model):
        size = p.numel()
        if id(p) in embedding_ids and p.ndim == 2:
            size = min(size, EMBEDDING_ROWS_PER_EXAMPLE * batch_size * world_size * p.shape[1])
        blocks.append(Block(name, tuple(p.shape), size, block_kind(name)))
    return blocks
