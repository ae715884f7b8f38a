"""Streamed ZO (`offload/`): the block-by-block step equals the resident step on the CPU (where nothing moves, but
units, the two-branch forward, the per-unit engines with whole-model noise keys and the lazy update all run)."""

from __future__ import annotations

import pytest
import torch

from tests.golden_rules import golden_batch
from zolightning.forward.scoring import batch_loss, branch_objectives
from zolightning.models.tiny import build_tiny_llama
from zolightning.offload.optimizer import StreamedZOOptimizer
from zolightning.offload.streamer import BlockStreamer
from zolightning.offload.units import find_units, halves, joined
from zolightning.optim import ZOOptimizer, resolve_rule

STREAMED_RULES = ("zo_sgd", "zo_sgd_momentum", "zo_sgd_nesterov", "zo_sgd_sign", "zo_adam")


def _model(name: str, dtype=torch.float64):
    return build_tiny_llama(name, seed=0).to(dtype).eval()


def _groups(model):
    decay = [p for p in model.parameters() if p.ndim >= 2]
    return [{"params": decay}, {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]


def _resident_fit(name, rule, steps, batch, dtype=torch.float64, **options):
    model = _model(name, dtype)
    optimizer = ZOOptimizer(_groups(model), resolve_rule(rule), noise="philox", **options)
    losses = [optimizer.step(lambda: batch_loss(model, batch)[0]).loss for _ in range(steps)]
    return model, losses, optimizer


def _streamed_fit(name, rule, steps, batch, dtype=torch.float64, **options):
    model = _model(name, dtype)
    streamer = BlockStreamer(find_units(model), torch.device("cpu"))
    streamer.install()
    optimizer = StreamedZOOptimizer(_groups(model), resolve_rule(rule), streamer=streamer, noise="philox", **options)
    losses = [optimizer.step(lambda: branch_objectives(model, batch)).loss for _ in range(steps)]
    optimizer.flush()
    return model, losses, optimizer


def test_units_of_a_llama_are_its_layers_and_weight_holders():
    units = find_units(_model("tiny-llama"))
    names = [unit.name for unit in units]
    assert names == ["model.embed_tokens", "model.norm", "lm_head", "model.layers.0", "model.layers.1"]
    head = units[2]
    assert head.shared == head.tensors == [units[0].tensors[0]]  # the tied embedding: owned by the embedding unit


def test_halves_split_row_tensors_and_share_the_rest():
    hidden, mask, cache = torch.zeros(4, 3, 2), torch.ones(4, 1, 3, 3), torch.arange(4)
    rope = (torch.zeros(1, 3, 2), torch.ones(1, 3, 2))
    (a0, k0), (a1, k1) = halves((hidden,), {"attention_mask": mask, "cache_position": cache, "rope": rope})
    assert a0[0].shape[0] == a1[0].shape[0] == 2 and k0["attention_mask"].shape[0] == 2
    assert k0["cache_position"] is cache and k0["rope"][0] is rope[0]  # 1-D and one-row tensors are shared
    assert torch.equal(joined(a0[0], a1[0]), hidden)
    with pytest.raises(ValueError, match="even number of rows"):
        halves((torch.zeros(3, 2),), {})


@pytest.mark.parametrize("name", ["tiny-llama-untied", "tiny-llama"])
def test_two_branch_forward_scores_each_branch_as_a_plain_forward(name):
    model, batch = _model(name), golden_batch()
    streamer = BlockStreamer(find_units(model), torch.device("cpu"))
    streamer.install()
    plain = batch_loss(model, batch)[0]
    assert torch.equal(branch_objectives(model, batch), torch.stack([plain, plain]))  # no step: both at θ


@pytest.mark.parametrize("rule", STREAMED_RULES)
def test_streamed_steps_equal_resident_steps_bitwise(rule):
    batch, options = golden_batch(), {"lr": 1e-3, "eps": 1e-3, "weight_decay": 0.05, "seed": 3}
    resident, resident_losses, _ = _resident_fit("tiny-llama-untied", rule, 6, batch, **options)
    streamed, streamed_losses, optimizer = _streamed_fit("tiny-llama-untied", rule, 6, batch, **options)
    assert streamed_losses == resident_losses
    for (name, a), b in zip(resident.named_parameters(), streamed.parameters()):
        assert torch.equal(a, b), name
    assert optimizer.num_steps == 6


def test_tied_weights_follow_the_resident_steps_closely():
    # The head re-moves the tied embedding for its two branches (θ−εz -> θ+εz -> θ−εz): two more roundings of that
    # tensor than the resident step, so equal to rounding, not bit for bit.
    batch, options = golden_batch(), {"lr": 1e-3, "eps": 1e-3, "seed": 3}
    resident, resident_losses, _ = _resident_fit("tiny-llama", "zo_sgd", 6, batch, **options)
    streamed, streamed_losses, _ = _streamed_fit("tiny-llama", "zo_sgd", 6, batch, **options)
    assert streamed_losses == pytest.approx(resident_losses, rel=1e-12)
    for a, b in zip(resident.parameters(), streamed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_a_checkpoint_mid_run_resumes_to_the_same_weights():
    batch, options = golden_batch(), {"lr": 1e-3, "eps": 1e-3, "seed": 3}
    straight, _, _ = _streamed_fit("tiny-llama-untied", "zo_adam", 6, batch, **options)
    model, _, optimizer = _streamed_fit("tiny-llama-untied", "zo_adam", 3, batch, **options)
    weights, state = {k: v.clone() for k, v in model.state_dict().items()}, optimizer.state_dict()
    again = _model("tiny-llama-untied")
    again.load_state_dict(weights)
    streamer = BlockStreamer(find_units(again), torch.device("cpu"))
    streamer.install()
    resumed = StreamedZOOptimizer(_groups(again), resolve_rule("zo_adam"), streamer=streamer, noise="philox", **options)
    resumed.load_state_dict(state)
    for _ in range(3):
        resumed.step(lambda: branch_objectives(again, batch))
    resumed.flush()
    for a, b in zip(straight.parameters(), again.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("rule", "options", "message"),
    [
        ("hizoo", {}, "block by block"),
        ("zo_sgd", {"queries": 2}, "one query"),
        ("zo_sgd", {"noise": "generator"}, "philox"),
    ],
)
def test_what_cannot_stream_is_refused_by_name(rule, options, message):
    model = _model("tiny-llama-untied")
    streamer = BlockStreamer(find_units(model), torch.device("cpu"))
    options = {"noise": "philox", **options}
    with pytest.raises(ValueError, match=message):
        StreamedZOOptimizer(_groups(model), resolve_rule(rule), streamer=streamer, **options)


def test_a_streamed_step_counts_two_forwards():
    _, _, optimizer = _streamed_fit("tiny-llama-untied", "zo_sgd", 3, golden_batch(), lr=1e-3, eps=1e-3)
    assert optimizer.num_forwards == 6


_INTERPRETED = """
import torch
from tests.golden_rules import golden_batch
from tests.test_offload import _resident_fit, _streamed_fit
batch = golden_batch()
options = {"lr": 1e-3, "eps": 1e-3, "seed": 3, "weight_decay": 0.01, "dtype": torch.float32}
for rule in ("zo_sgd", "zo_adam"):  # the restore-and-update pass, and the rule kernel with states
    resident, losses, plain = _resident_fit("tiny-llama-untied", rule, 2, batch, **options)
    streamed, streamed_losses, _ = _streamed_fit("tiny-llama-untied", rule, 2, batch, **options)
    assert plain.fused and losses == streamed_losses, rule
    assert all(torch.equal(a, b) for a, b in zip(resident.parameters(), streamed.parameters())), rule
print("streamed fused steps equal the resident ones")
"""


def test_streamed_fused_steps_equal_resident_ones_under_the_interpreter(run_interpreted):
    # the unit engines' fused passes (shift and rule kernels) with whole-model keys, on float32 weights
    run_interpreted(_INTERPRETED, "streamed fused steps equal the resident ones")
