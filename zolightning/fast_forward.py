"""Fast scoring forwards: the model's trunk compiled for a few fixed shapes.

A small model's eager forward is launch-bound (SmolLM2: 30 thin layers, ~35 ms on an H100 for 0.28 TFLOP),
and a ZO step is two forwards. `torch.compile` fuses the trunk's kernels and, on CUDA with the default
mode `reduce-overhead`, replays each compiled shape as a CUDA graph (one launch). Shapes are made few by
padding every batch on the right up to a multiple of `bucket` tokens; right padding does not change the
hidden states of the real tokens under causal attention, and they are sliced back before the LM head.

The weights are read by the compiled code at every call (they are graph inputs, not constants), so the
in-place updates of a ZO step are seen by the next forward; a test checks it.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zolightning.scoring import _hidden_then_head


class BucketedTrunk:
    """`trunk(input_ids, attention_mask)` compiled, inputs right-padded to a multiple of `bucket` tokens."""

    def __init__(self, trunk: nn.Module, bucket: int = 32, mode: str | None = None):
        if bucket < 1:
            raise ValueError(f"bucket must be >= 1, got {bucket}")
        self.bucket, self.graphs = bucket, mode == "reduce-overhead"
        self.compiled = torch.compile(trunk, mode=mode, dynamic=False)

    def __call__(self, input_ids: Tensor, attention_mask: Tensor) -> SimpleNamespace:
        length = input_ids.shape[1]
        pad = -length % self.bucket
        if pad:
            input_ids = F.pad(input_ids, (0, pad), value=0)
            attention_mask = F.pad(attention_mask, (0, pad), value=0)
        if self.graphs:  # each call is a new step for CUDA-graph trees: the last call's outputs are dead by now
            torch.compiler.cudagraph_mark_step_begin()
        hidden = self.compiled(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return SimpleNamespace(last_hidden_state=hidden[:, :length])


class FastScoringModel:
    """Stands in for a causal LM in `scoring.py`: the compiled, bucketed trunk, then the model's own LM head.

    Args:
        model: a causal LM whose logits are `head(trunk(x))` (Llama and most decoder LMs).
        bucket: sequence lengths are padded up to a multiple of this.
        mode: `torch.compile` mode; default `reduce-overhead` (CUDA graphs) on CUDA, `default` elsewhere.
    """

    base_model_prefix = "trunk"

    def __init__(self, model: nn.Module, bucket: int = 32, mode: str | None = None):
        split = _hidden_then_head(model)
        if split is None:
            raise ValueError(f"{type(model).__name__} post-processes its logits; fast_forward cannot split it")
        trunk, self._head = split
        if mode is None:
            mode = "reduce-overhead" if next(model.parameters()).is_cuda else "default"
        self.config = model.config
        self.trunk = BucketedTrunk(trunk, bucket, mode)

    def get_output_embeddings(self) -> nn.Module:
        return self._head

    def __call__(self, *args, **kwargs):
        raise TypeError("FastScoringModel only serves scoring.answer_logprobs (trunk + head)")
