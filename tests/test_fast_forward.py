"""The compiled, bucketed scoring forward (fast_forward.py) on the tiny model."""

import pytest
import torch

from zolightning.data.encoding import EncodedExample, collate
from zolightning.fast_forward import FastScoringModel
from zolightning.models import load_causal_lm
from zolightning.scoring import batch_loss


def _batch(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    examples = [
        EncodedExample((tuple(torch.randint(3, 259, (n,), generator=generator).tolist()),), (3,), 0, False)
        for n in lengths
    ]
    return collate(examples, 0, kind="lm")


@torch.no_grad()
def test_compiled_scoring_equals_eager_and_sees_in_place_updates():
    model = load_causal_lm("tiny-llama")
    fast = FastScoringModel(model, bucket=64)
    for lengths in ([20, 17, 9], [40, 33, 12]):  # two lengths, one padded shape
        batch = _batch(lengths)
        torch.testing.assert_close(batch_loss(fast, batch)[0], batch_loss(model, batch)[0], rtol=0, atol=1e-6)
    for p in model.parameters():  # a ZO step writes the weights in place: no stale constants in the graph
        p.add_(0.01 * torch.randn_like(p))
    batch = _batch([20, 17, 9])
    torch.testing.assert_close(batch_loss(fast, batch)[0], batch_loss(model, batch)[0], rtol=0, atol=1e-6)


def test_models_that_post_process_logits_are_refused():
    model = load_causal_lm("tiny-llama")
    model.logit_scale = 2.0
    with pytest.raises(ValueError, match="post-processes its logits"):
        FastScoringModel(model)
