"""Fast scoring forwards: the model's trunk compiled once, for a few planned shapes.

A small model's eager forward is launch-bound (SmolLM2: 30 thin layers, ~35 ms on an H100 for 0.28 TFLOP),
and a ZO step is two forwards. `torch.compile` fuses the trunk's kernels and, on CUDA with the default
mode `reduce-overhead`, replays each shape as a CUDA graph (one launch). Every batch is padded up to a shape of
the `ShapePlan` (`shape_plan.py`): rows of padding and tokens of padding on the right, neither of which changes
the hidden states of the real tokens under causal attention; they are sliced away before the LM head.

Compilation is bounded: one decoder layer is compiled and runs every layer (`compiled_layers.py`; the whole trunk
without a plan or with `layers=False`), the dimensions the plan varies marked dynamic, so one graph serves every
planned shape, and `warm_up` runs each shape before training so that no compile or graph capture happens
later. With a plan on CUDA, `warm_up` captures each planned shape as our own `torch.cuda.CUDAGraph` (static
input buffers, one memory pool shared by all shapes), and a call is two copies and a replay. PyTorch's
CUDA-graph trees (`reduce-overhead`) did the same behind dynamo's guards and their own bookkeeping: about 1.9 ms
of host time per call on SmolLM2 (py-spy, docs/benchmarks.md), a third of a whole ZO step on the GPU.
After warm-up, any new graph dynamo builds is counted in `recompiles` and reported once. A batch
outside the plan, or a compiler failure, is said once in the log and scored by the eager trunk.

The weights are read by the compiled code at every call (they are graph inputs, not constants), so the
in-place updates of a ZO step are seen by the next forward; a test checks it. The captured graphs read them at
the addresses they had at warm-up: weights given new storage afterwards (`p.data = ...`, `.to()`, merging
adapters) need a new `FastScoringModel`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._dynamo.utils import counters

from zolightning.forward.compiled_layers import CompiledLayers, repeated_layers
from zolightning.forward.scoring import hidden_then_head
from zolightning.forward.shape_plan import ShapePlan, plan_shapes

log = logging.getLogger(__name__)


@contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def compiled_graph_count() -> int:
    """Graphs dynamo has built in this process (a recompile adds one)."""
    return counters["stats"]["unique_graphs"]


class CompiledTrunk:
    """`trunk(input_ids, attention_mask)` compiled, inputs padded to the plan's shapes (or, without a plan,
    lengths to a multiple of `bucket`)."""

    def __init__(
        self,
        trunk: nn.Module,
        plan: ShapePlan | None = None,
        bucket: int = 32,
        mode: str | None = None,
        layers: bool = True,
    ):
        if bucket < 1:
            raise ValueError(f"bucket must be >= 1, got {bucket}")
        self.trunk, self.plan, self.bucket = trunk, plan, bucket
        # planned shapes: captured by warm_up as our own graphs; unplanned: PyTorch's CUDA-graph trees
        self.replays = mode == "reduce-overhead" and plan is not None
        self.graphs = mode == "reduce-overhead" and not self.replays
        self._captured: dict[tuple[int, int], SimpleNamespace] = {}
        self._pool = None
        self.eager_reason: str | None = None  # set when compilation failed: every batch then runs eagerly
        self.eager_batches = 0  # batches scored eagerly (outside the plan, or after a failure)
        self.recompiles = 0  # graphs built after warm-up
        self._graphs_after_warm_up: int | None = None
        self.dynamic_dims = self._dynamic_dims()
        # with a plan, one decoder layer is compiled for all (compiled_layers.py); else the whole trunk
        layers = layers and plan is not None and repeated_layers(trunk) is not None
        self.layers = CompiledLayers(trunk, self.dynamic_dims) if layers else None
        self.compiled = self._layered if layers else torch.compile(trunk, mode=None if self.replays else mode)
        if plan is not None:
            # Each shape is one graph of dynamo's cache in the worst case (a dimension the model specialises).
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, len(plan.shapes) + 2)

    def _padded_shape(self, rows: int, length: int) -> tuple[int, int] | None:
        if self.plan is None:
            return rows, length + (-length % self.bucket)
        return self.plan.bucket(rows, length)

    def _dynamic_dims(self) -> list[int]:
        """Dimensions the plan varies (and never at size 1, which dynamo would specialise)."""
        if self.plan is None:
            return []
        sizes = (self.plan.rows, self.plan.lengths)
        return [d for d, values in enumerate(sizes) if len(values) > 1 and min(values) > 1]

    def _eager(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        self.eager_batches += 1
        return self.trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    def __call__(self, input_ids: Tensor, attention_mask: Tensor, use_cache: bool = False) -> SimpleNamespace:
        """The trunk's last hidden states (`use_cache` is accepted as the trunk's own call takes it: never a cache)."""
        rows, length = input_ids.shape
        target = None if self.eager_reason else self._padded_shape(rows, length)
        if target is None:
            if self.eager_reason is None and self.eager_batches == 0:
                log.warning(
                    "a %dx%d batch is outside the compiled shapes (%s): scored eagerly",
                    rows,
                    length,
                    self.plan.describe(),
                )
            return SimpleNamespace(last_hidden_state=self._eager(input_ids, attention_mask))
        try:
            hidden = self._compiled(input_ids, attention_mask, target)
        except Exception as error:  # noqa: BLE001 - any compiler failure: say why once, then run eagerly
            self.eager_reason = f"{type(error).__name__}: {error}"
            log.warning("compiled scoring forward failed, continuing eagerly: %s", self.eager_reason)
            hidden = self._eager(input_ids, attention_mask)
        return SimpleNamespace(last_hidden_state=hidden[:rows, :length])

    @property
    def pool(self):
        """The memory pool of the captured shapes (None before the first capture)."""
        return self._pool

    def planned(self, batch: dict) -> dict:
        """`batch` with its tokens padded to their planned shape (what a step graph is captured for), or as is
        when it has no planned shape."""
        input_ids = batch["input_ids"]
        target = None if self.plan is None or self.eager_reason else self.plan.bucket(*input_ids.shape)
        if target is None or target == tuple(input_ids.shape):
            return batch
        input_ids, attention_mask = self._padded(input_ids, batch["attention_mask"], target)
        return batch | {"input_ids": input_ids, "attention_mask": attention_mask}

    def _padded(self, input_ids: Tensor, attention_mask: Tensor, target: tuple[int, int]) -> tuple[Tensor, Tensor]:
        rows, length = input_ids.shape
        pad_rows, pad_tokens = target[0] - rows, target[1] - length
        input_ids = F.pad(input_ids, (0, pad_tokens, 0, pad_rows), value=0)
        attention_mask = F.pad(attention_mask, (0, pad_tokens, 0, pad_rows), value=0)
        if pad_rows:
            attention_mask[rows:, 0] = 1  # padding rows attend to one token: no fully masked softmax
        return input_ids, attention_mask

    def _layered(self, **inputs):
        """The eager trunk with every layer run by the one compiled layer."""
        with self.layers.active():
            return self.trunk(**inputs)

    def _run_compiled(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if self.layers is None:  # CompiledLayers marks the layers' inputs instead
            for dim in self.dynamic_dims:
                torch._dynamo.maybe_mark_dynamic(input_ids, dim)
                torch._dynamo.maybe_mark_dynamic(attention_mask, dim)
        return self.compiled(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    def _compiled(self, input_ids: Tensor, attention_mask: Tensor, target: tuple[int, int]) -> Tensor:
        # Dynamo guards on global state: validation runs under inference mode, and bf16-true training sets the
        # default dtype to bfloat16 around steps. One state always, or each of them would compile again.
        with torch.inference_mode(False), torch.no_grad(), _default_dtype(torch.float32):
            input_ids, attention_mask = self._padded(input_ids, attention_mask, target)
            # inside the capture of a whole ZO step (step_graphs.py) the compiled code is recorded, not our replay
            capturing = input_ids.is_cuda and torch.cuda.is_current_stream_capturing()
            captured = None if capturing else self._captured.get(target)
            if captured is not None:  # the last call's output is dead by now: the shared pool may reuse it
                captured.input_ids.copy_(input_ids)
                captured.attention_mask.copy_(attention_mask)
                captured.graph.replay()
                return captured.hidden
            if self.graphs:  # each call is a new step for CUDA-graph trees: the last call's outputs are dead by now
                torch.compiler.cudagraph_mark_step_begin()
            hidden = self._run_compiled(input_ids, attention_mask)
        self._count_recompiles()
        return hidden

    def _capture(self, shape: tuple[int, int], device: torch.device) -> None:
        """Record the compiled forward of one planned shape as a CUDA graph over static input buffers."""
        ids = torch.zeros(shape, dtype=torch.long, device=device)
        with torch.inference_mode(False), torch.no_grad(), _default_dtype(torch.float32):
            input_ids, attention_mask = self._padded(ids, torch.ones_like(ids), shape)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                hidden = self._run_compiled(input_ids, attention_mask)
        self._pool = self._pool if self._pool is not None else graph.pool()
        self._captured[shape] = SimpleNamespace(
            graph=graph, input_ids=input_ids, attention_mask=attention_mask, hidden=hidden
        )

    def _count_recompiles(self) -> None:
        if self._graphs_after_warm_up is None:
            return
        new = compiled_graph_count() - self._graphs_after_warm_up
        if new > self.recompiles:
            if self.recompiles == 0:
                log.warning(
                    "the scoring forward recompiled after warm-up (%d graph(s)): a shape or guard the "
                    "plan did not foresee",
                    new,
                )
            self.recompiles = new

    def warm_up(self, device: torch.device, progress: Callable[[str], None] = log.info) -> float:
        """Compile (and on CUDA capture) every planned shape now; seconds taken. Later graphs count as recompiles."""
        start = time.perf_counter()
        shapes = self.plan.shapes if self.plan is not None else []
        for i, (rows, length) in enumerate(shapes, 1):
            shape_start = time.perf_counter()
            ids = torch.zeros(rows, length, dtype=torch.long, device=device)
            # CUDA-graph trees run a shape eagerly, then record it, then replay: three calls reach the replay.
            for _ in range(3 if self.graphs else 1):
                self(ids, torch.ones_like(ids))
            if length > 1:  # eager mask code drops a mask without padding: the padded case is another graph
                padded = torch.ones_like(ids)
                padded[:, -1] = 0
                self(ids, padded)
            if self.replays and device.type == "cuda" and not self.eager_reason:
                self._capture_or_say_why((rows, length), device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            progress(
                f"compiling the scoring forward: shape {i}/{len(shapes)} ({rows} rows x {length} tokens) "
                f"in {time.perf_counter() - shape_start:.1f} s"
            )
            if self.eager_reason:
                break
        self._graphs_after_warm_up = compiled_graph_count()
        self.recompiles = 0
        return time.perf_counter() - start

    def _capture_or_say_why(self, shape: tuple[int, int], device: torch.device) -> None:
        try:
            self._capture(shape, device)
        except Exception as error:  # noqa: BLE001 - the compiled forward still serves the shape, without a graph
            log.warning("CUDA-graph capture of %s failed, the compiled forward runs it without: %s", shape, error)


class FastScoringModel:
    """Stands in for a causal LM in `scoring.py`: the compiled, padded trunk, then the model's own LM head.

    Args:
        model: a causal LM whose logits are `head(trunk(x))` (Llama and most decoder LMs).
        bucket: without a plan, sequence lengths are padded up to a multiple of this.
        mode: `torch.compile` mode; default `reduce-overhead` (CUDA graphs) on CUDA, `default` elsewhere.
        plan: the shapes to compile for (`shape_plan.plan_shapes`); batches are padded up to them.
        layers: with a plan, compile one decoder layer and run every layer through it (`compiled_layers.py`):
            compiled in a fraction of the time; off: the whole trunk is one compiled graph.
    """

    base_model_prefix = "trunk"

    def __init__(
        self,
        model: nn.Module,
        bucket: int = 32,
        mode: str | None = None,
        plan: ShapePlan | None = None,
        layers: bool = True,
    ):
        split = hidden_then_head(model)
        if split is None:
            raise ValueError(f"{type(model).__name__} post-processes its logits; fast_forward cannot split it")
        trunk, self._head = split
        if mode is None:
            mode = "reduce-overhead" if next(model.parameters()).is_cuda else "default"
        self.config = model.config
        self.trunk = CompiledTrunk(trunk, plan, bucket, mode, layers)

    def get_output_embeddings(self) -> nn.Module:
        return self._head

    def __call__(self, *args, **kwargs):
        raise TypeError("FastScoringModel only serves scoring.answer_logprobs (trunk + head)")


def compile_for_data(
    model: nn.Module, datamodule, bucket: int, max_lengths: int, layers: bool = True
) -> tuple[FastScoringModel, float]:
    """(scorer, seconds compiling): the shapes planned from the data module's loaders (`scoring_shapes`), each
    compiled now; without a plan, lengths padded to a multiple of `bucket` and compiled on first use.
    `layers`: see `FastScoringModel`."""
    loaders = datamodule.scoring_shapes() if hasattr(datamodule, "scoring_shapes") else None
    plan = plan_shapes(loaders, bucket, max_lengths) if loaders else None
    scorer = FastScoringModel(model, bucket, plan=plan, layers=layers)
    if plan is None:
        return scorer, 0.0
    layered = scorer.trunk.layers
    scope = f"one decoder layer compiled for all {len(layered)}" if layered else "the whole trunk compiled"
    log.info("compiling the scoring forward for %s, %s", plan.describe(), scope)
    seconds = scorer.trunk.warm_up(next(model.parameters()).device)
    failed = f" (failed, eager: {scorer.trunk.eager_reason})" if scorer.trunk.eager_reason else ""
    log.info("scoring forward compiled in %.1f s%s", seconds, failed)
    return scorer, seconds
