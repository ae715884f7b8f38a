"""Learned block variance: networks, normalisation, files, the reference import, and the MeZO limit."""

from pathlib import Path

import pytest
import torch

from zolightning.data.encoding import collate
from zolightning.forward.scoring import batch_loss
from zolightning.models import load_causal_lm
from zolightning.optim import ZOOptimizer
from zolightning.variance import (
    FEATURES,
    BlockVarianceNets,
    LearnedOptimizerFile,
    OptimizerFileError,
    UntrustedPickleError,
    convert_reference,
    describe_blocks,
    normalisation_factor,
)
from zolightning.variance.blocks import trainable_named_parameters
from zolightning.variance.learned import learned_variance_for
from zolightning.variance.reference import load_reference_nets

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "zo_fine_tuner"


def _file_for(model, seed=0, **overrides) -> LearnedOptimizerFile:
    named = trainable_named_parameters(model)
    nets = BlockVarianceNets(len(named), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for key, value in overrides.items():
            getattr(nets, key).fill_(value)
    return LearnedOptimizerFile(
        nets,
        [n for n, _ in named],
        [tuple(p.shape) for _, p in named],
        [b.effective_size for b in describe_blocks(model, 4)],
        "tiny-llama",
        {"test": 1},
    )


def test_batched_networks_equal_a_per_block_loop():
    nets = BlockVarianceNets(7, generator=torch.Generator().manual_seed(0))
    features = torch.randn(7, len(FEATURES))
    loop = torch.stack([net(features[i]).abs()[0] for i, net in enumerate(nets.as_sequentials())])
    assert torch.allclose(nets(features), loop, atol=1e-6, rtol=0)


def test_normalisation_keeps_the_isotropic_size():
    sigma = torch.rand(50) * 3
    sizes = torch.randint(1, 10_000, (50,)).double()
    c = normalisation_factor(sigma, sizes)
    assert torch.isclose((sizes * (c * sigma.double()) ** 2).sum(), sizes.sum(), rtol=1e-6)


def test_effective_sizes_apply_the_embedding_rule_and_count_a_tied_head_once():
    tied, untied = load_causal_lm("tiny-llama"), load_causal_lm("tiny-llama-untied")
    blocks = describe_blocks(tied, batch_size=2, world_size=2)
    assert [b.name for b in blocks].count("model.embed_tokens.weight") == 1
    assert not any(b.name == "lm_head.weight" for b in blocks)
    embedding = next(b for b in blocks if b.kind == "embedding")
    assert embedding.effective_size == 15 * 2 * 2 * 64
    head = next(b for b in describe_blocks(untied, batch_size=2) if b.name == "lm_head.weight")
    assert head.effective_size == 259 * 64 and head.kind == "head"


def _train(model, batch, block_scales=None, steps=20):
    optimizer = ZOOptimizer(model.parameters(), lr=1e-3, eps=1e-3, seed=5, block_scales=block_scales)
    for _ in range(steps):
        optimizer.step(lambda: batch_loss(model, batch)[0])
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("normalize", [False, True])
def test_isotropic_learned_variance_is_exactly_mezo(tiny_data, tmp_path, normalize):
    data = tiny_data()
    batch = collate(data.splits["train"][:4], data.pad_id)
    mezo = _train(load_causal_lm("tiny-llama"), batch)
    model = load_causal_lm("tiny-llama")
    path = tmp_path / "ones.safetensors"
    _file_for(model, w1=0.0, b1=0.0, w2=0.0, b2=-1.0).save(path)  # sigma = |-1| = 1 for every block
    scales = learned_variance_for(str(path), model, list(model.parameters()), batch_size=4, normalize=normalize)
    learned = _train(model, batch, scales)
    assert all(torch.equal(a, b) for a, b in zip(mezo, learned))
    assert torch.equal(scales.sigma_prev, torch.ones(len(mezo)))


def test_learned_scales_change_the_trajectory_and_carry_history(tiny_data, tmp_path):
    data = tiny_data()
    batch = collate(data.splits["train"][:4], data.pad_id)
    model = load_causal_lm("tiny-llama")
    _file_for(model).save(tmp_path / "f.safetensors")
    scales = learned_variance_for(str(tmp_path / "f.safetensors"), model, list(model.parameters()), 4)
    learned = _train(model, batch, scales, steps=3)
    assert not all(torch.equal(a, b) for a, b in zip(_train(load_causal_lm("tiny-llama"), batch, steps=3), learned))
    assert scales.loss_prev != (0.0, 0.0) and not torch.equal(scales.sigma_prev, torch.ones(len(learned)))
    sizes = scales.effective_sizes
    c_sigma = scales.last_c * scales.last_sigma.double()
    assert torch.isclose((sizes * c_sigma**2).sum(), sizes.sum(), rtol=1e-6)


def test_non_finite_sigma_never_reaches_the_weights(tmp_path):
    model = load_causal_lm("tiny-llama")
    _file_for(model, b2=float("nan")).save(tmp_path / "nan.safetensors")
    scales = learned_variance_for(str(tmp_path / "nan.safetensors"), model, list(model.parameters()), 4)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = ZOOptimizer(model.parameters(), lr=1e-3, block_scales=scales)
    out = optimizer.step(lambda: torch.tensor(1.0))
    assert out.skipped and optimizer.consecutive_skipped == 1
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_file_round_trip(tmp_path):
    model = load_causal_lm("tiny-llama")
    original = _file_for(model, seed=3)
    original.save(tmp_path / "f.safetensors")
    loaded = LearnedOptimizerFile.load(tmp_path / "f.safetensors")
    assert loaded.names == original.names and loaded.shapes == original.shapes
    assert loaded.effective_sizes == original.effective_sizes and loaded.provenance == {"test": 1}
    assert all(torch.equal(a, b) for a, b in zip(loaded.nets.parameters(), original.nets.parameters()))
    assert "blocks: 20" in loaded.summary()  # 2 layers x 9 tensors + embedding + final norm


def test_carried_state_travels_in_the_optimizer_state_dict(tmp_path):
    model = load_causal_lm("tiny-llama")
    _file_for(model).save(tmp_path / "f.safetensors")

    def make():
        scales = learned_variance_for(str(tmp_path / "f.safetensors"), model, list(model.parameters()), 4)
        return ZOOptimizer(model.parameters(), lr=0.0, block_scales=scales)

    first = make()
    first.step(lambda: torch.tensor(0.5) + torch.rand(()))
    second = make()
    second.load_state_dict(first.state_dict())
    assert torch.equal(second.block_scales.sigma_prev, first.block_scales.sigma_prev)
    assert second.block_scales.loss_prev == first.block_scales.loss_prev != (0.0, 0.0)


def test_a_mismatched_file_names_the_first_difference(tmp_path):
    _file_for(load_causal_lm("tiny-llama")).save(tmp_path / "tied.safetensors")
    untied = load_causal_lm("tiny-llama-untied")
    with pytest.raises(OptimizerFileError, match="'lm_head.weight' .* has no network"):
        learned_variance_for(str(tmp_path / "tied.safetensors"), untied, list(untied.parameters()), 4)
    with pytest.raises(OptimizerFileError, match="does not exist"):
        LearnedOptimizerFile.load(tmp_path / "absent.safetensors")


def test_an_untrusted_pickle_is_refused():
    with pytest.raises(UntrustedPickleError, match="--trust-pickle"):
        convert_reference(REFERENCE / "llama1B_finetuner.pth")


def test_released_llama_1b_file_converts_and_matches_its_networks(tmp_path):
    converted = convert_reference(REFERENCE / "llama1B_finetuner.pth", trust_pickle=True, base_model="llama-1b")
    assert len(converted.names) == 146 and converted.names[0] == "model.embed_tokens.weight"
    converted.save(tmp_path / "l1b.safetensors")
    reloaded = LearnedOptimizerFile.load(tmp_path / "l1b.safetensors")
    original = load_reference_nets(REFERENCE / "llama1B_finetuner.pth", trust_pickle=True)
    features = torch.tensor([[1e-4, 2e-4, 0.0, 0.0, 1.0], [-3e-3, 5e-2, 2.3, 2.1, 0.7], [0.1, 1.0, 0.5, 0.6, 3.0]])
    for row in features:
        x = row.expand(146, 5)
        expected = torch.stack([original[n].float()(row).abs()[0] for n in converted.names])
        assert torch.allclose(reloaded.nets(x), expected, atol=1e-6, rtol=0)


def test_block_features_from_the_update_pass_equal_a_fresh_pass(tiny_data, tmp_path):
    data = tiny_data()
    batch = collate(data.splits["train"][:4], data.pad_id)
    model = load_causal_lm("tiny-llama")
    params = list(model.parameters())
    _file_for(model).save(tmp_path / "f.safetensors")
    scales = learned_variance_for(str(tmp_path / "f.safetensors"), model, params, 4)
    optimizer = ZOOptimizer(params, lr=1e-3, eps=1e-3, seed=5, block_scales=scales, noise="philox")
    optimizer.step(lambda: batch_loss(model, batch)[0])
    assert scales._sums_current(params)  # the update pass reported the sums of what it wrote
    torch.testing.assert_close(scales.features(params, from_sums=True), scales.features(params), rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        params[0].mul_(2)  # written by someone else: the reported sums are stale and must not be used
    assert not scales._sums_current(params)


def test_sigma_ceiling_caps_blocks_at_a_multiple_of_the_mean_and_feeds_the_capped_sigma_back(tmp_path):
    model = load_causal_lm("tiny-llama")
    _file_for(model, seed=3).save(tmp_path / "f.safetensors")
    params = list(model.parameters())
    free = learned_variance_for(str(tmp_path / "f.safetensors"), model, params, 4)
    capped = learned_variance_for(str(tmp_path / "f.safetensors"), model, params, 4, sigma_ceiling=1.2)
    free.scales(params), capped.scales(params)
    raw = free.last_sigma
    assert raw.max() > 1.2 * raw.mean()  # this file has blocks above the ceiling: the test can fail
    torch.testing.assert_close(capped.last_sigma, torch.minimum(raw, 1.2 * raw.mean()))
    sizes, c_sigma = capped.effective_sizes, capped.last_c * capped.last_sigma.double()
    assert torch.isclose((sizes * c_sigma**2).sum(), sizes.sum(), rtol=1e-6)  # still normalised
    capped.observe(0.7, 0.6)
    assert torch.equal(capped.sigma_prev, capped.last_sigma)  # the history carries the capped sigma
    with pytest.raises(ValueError, match="sigma_ceiling"):
        learned_variance_for(str(tmp_path / "f.safetensors"), model, params, 4, sigma_ceiling=0.0)
