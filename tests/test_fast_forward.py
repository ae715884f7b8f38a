"""The compiled, bucketed scoring forward (fast_forward.py) on the tiny model."""

import pytest
import torch

from zolightning.data.encoding import EncodedExample, collate
from zolightning.forward.fast_forward import FastScoringModel, compiled_graph_count
from zolightning.forward.scoring import batch_loss
from zolightning.forward.shape_plan import ShapePlan, plan_shapes
from zolightning.models import load_causal_lm


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


def _planned(tiny_data):
    data = tiny_data(num_eval=12, eval_batch_size=8)  # 16 dev / 8: full batches; 12 eval: a partial last batch
    plan = plan_shapes(data.scoring_shapes(), multiple=32, max_lengths=2)
    model = load_causal_lm("tiny-llama")
    return data, model, FastScoringModel(model, plan=plan)


def test_no_recompile_after_warm_up_for_any_batch_of_any_split(tiny_data):
    data, model, fast = _planned(tiny_data)
    fast.trunk.warm_up(torch.device("cpu"))
    graphs = compiled_graph_count()
    stream = data.train_dataloader().dataset
    batches = [stream.batch(step) for step in range(12)]
    batches += [b for split in ("dev", "eval") for b in data._scoring_loader(split)]
    with torch.no_grad():
        for batch in batches:
            torch.testing.assert_close(batch_loss(fast, batch)[0], batch_loss(model, batch)[0], rtol=0, atol=1e-5)
    with torch.inference_mode():  # validation's grad mode must not make a second graph
        for batch in batches[-2:]:
            torch.testing.assert_close(batch_loss(fast, batch)[0], batch_loss(model, batch)[0], rtol=0, atol=1e-5)
    torch.set_default_dtype(torch.bfloat16)  # what bf16-true sets around steps: no second graph either
    try:
        with torch.no_grad():
            torch.testing.assert_close(
                batch_loss(fast, batches[0])[0], batch_loss(model, batches[0])[0], atol=1e-5, rtol=0
            )
    finally:
        torch.set_default_dtype(torch.float32)
    assert compiled_graph_count() == graphs and fast.trunk.recompiles == 0 and fast.trunk.eager_batches == 0


def test_batches_outside_the_plan_run_eagerly_and_are_reported_once(caplog):
    model = load_causal_lm("tiny-llama")
    fast = FastScoringModel(model, plan=ShapePlan(rows=(2,), lengths=(32,)))
    with torch.no_grad():
        for _ in range(2):
            batch = _batch([40, 20, 9])  # 3 rows x 40 tokens: neither fits
            torch.testing.assert_close(batch_loss(fast, batch)[0], batch_loss(model, batch)[0], rtol=0, atol=0)
    assert fast.trunk.eager_batches == 2
    assert sum("outside the compiled shapes" in r.message for r in caplog.records) == 1


def test_a_compiler_failure_falls_back_to_eager_with_the_reason(caplog, monkeypatch):
    model = load_causal_lm("tiny-llama")
    fast = FastScoringModel(model, plan=ShapePlan(rows=(3,), lengths=(64,)))

    def broken(**kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fast.trunk, "compiled", broken)
    with torch.no_grad():
        for _ in range(2):
            batch = _batch([20, 17, 9])
            torch.testing.assert_close(batch_loss(fast, batch)[0], batch_loss(model, batch)[0], rtol=0, atol=0)
    assert "no C++ compiler" in fast.trunk.eager_reason
    assert sum("continuing eagerly" in r.message for r in caplog.records) == 1
