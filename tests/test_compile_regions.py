"""Decoder layers compiled as one nested region (compile_regions.py): same outputs, less tracing."""

import torch
from torch import nn
from torch._dynamo.utils import counters

from tests.test_fast_forward import _batch
from zolightning.compile_regions import is_marked, mark_layer_regions, repeated_layers
from zolightning.fast_forward import FastScoringModel
from zolightning.models import load_causal_lm
from zolightning.scoring import batch_loss


def test_the_mark_changes_nothing_in_eager_forwards_and_generation():
    model = load_causal_lm("tiny-llama")
    ids = torch.randint(3, 259, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        generated = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert mark_layer_regions(model.model) == len(model.model.layers) == 2
    assert all(is_marked(layer) for layer in model.model.layers)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, logits, rtol=0, atol=0)
        assert torch.equal(model.generate(ids, max_new_tokens=5, do_sample=False), generated)


def _traced_calls(regions: bool) -> int:
    """Operations dynamo traced to compile the tiny model's trunk once."""
    torch._dynamo.reset()
    model = load_causal_lm("tiny-llama")
    fast = FastScoringModel(model, bucket=32, regions=regions)
    assert all(is_marked(layer) == regions for layer in model.model.layers)
    before = counters["stats"]["calls_captured"]
    batch = _batch([20, 17, 9])
    with torch.no_grad():
        torch.testing.assert_close(batch_loss(fast, batch)[0], batch_loss(model, batch)[0], rtol=0, atol=1e-6)
    return counters["stats"]["calls_captured"] - before


def test_one_layer_is_traced_for_all():
    whole, regional = _traced_calls(regions=False), _traced_calls(regions=True)
    layer_ops = whole - regional  # the second layer's operations, traced only without regions
    assert 0 < regional < whole and layer_ops > 10


def test_trunks_without_one_repeated_stack_are_left_alone():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])

    assert repeated_layers(Mixed()) is None and mark_layer_regions(Mixed()) == 0
    assert mark_layer_regions(nn.Sequential(nn.Linear(2, 2))) == 0
