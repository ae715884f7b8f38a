"""One decoder layer compiled for all (compiled_layers.py): same outputs, one layer traced, no lasting change."""

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from tests.test_fast_forward import _batch
from zolightning.forward.compiled_layers import CompiledLayers, is_routed, repeated_layers
from zolightning.forward.fast_forward import FastScoringModel, compiled_graph_count
from zolightning.forward.scoring import batch_loss
from zolightning.forward.shape_plan import ShapePlan
from zolightning.models import load_causal_lm

PLAN = ShapePlan(rows=(3, 4), lengths=(32, 64))


def _traced_calls(layers: bool) -> tuple[int, FastScoringModel, nn.Module]:
    """Operations dynamo traced to compile the tiny model's scoring forward for PLAN."""
    torch._dynamo.reset()
    model = load_causal_lm("tiny-llama")
    fast = FastScoringModel(model, plan=PLAN, layers=layers)
    before = counters["stats"]["calls_captured"]
    fast.trunk.warm_up(torch.device("cpu"))
    return counters["stats"]["calls_captured"] - before, fast, model


def test_one_layer_is_traced_for_all_and_scores_equal_the_eager_model():
    whole, _, _ = _traced_calls(layers=False)
    graphs = compiled_graph_count()
    layered, fast, model = _traced_calls(layers=True)
    # two graphs whatever the depth: with and without a mask tensor (one per layer would be a guard on the layer)
    assert len(fast.trunk.layers) == 2 and 0 < layered < whole and compiled_graph_count() - graphs == 2
    with torch.no_grad():
        for lengths in ([20, 17, 9], [40, 33, 12, 5], [30, 30, 30]):  # padded and unpadded masks, both row counts
            batch = _batch(lengths)
            torch.testing.assert_close(batch_loss(fast, batch)[0], batch_loss(model, batch)[0], rtol=0, atol=1e-5)
    assert fast.trunk.recompiles == 0 and fast.trunk.eager_batches == 0


def test_the_routing_is_gone_outside_the_compiled_call():
    _, fast, model = _traced_calls(layers=True)
    assert not any(is_routed(layer) for layer in model.model.layers)
    ids = torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(0))
    with fast.trunk.layers.active():
        assert all(is_routed(layer) for layer in model.model.layers)
    assert not any(is_routed(layer) for layer in model.model.layers)
    with torch.no_grad():  # generation keeps its own eager forward (a cache, one token at a time)
        model.generate(ids, max_new_tokens=3, do_sample=False)
    assert fast.trunk.recompiles == 0


def test_trunks_without_one_repeated_stack_are_compiled_whole():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])

    assert repeated_layers(Mixed()) is None
    with pytest.raises(ValueError, match="no stack of identical layers"):
        CompiledLayers(Mixed(), dynamic=[])
    model = load_causal_lm("tiny-llama")
    assert FastScoringModel(model, plan=PLAN, layers=False).trunk.layers is None
    assert FastScoringModel(model, bucket=32).trunk.layers is None  # no plan: the whole trunk, compiled on use
