"""Prefix tuning through peft: the project's forwards equal peft's, ZO trains only the prefix, export reloads."""

import lightning as L
import pytest
import torch

from zolightning.cli.export import main as export_main
from zolightning.forward.fast_path import choose_path
from zolightning.models import load_causal_lm
from zolightning.models.prefix import add_prefix, prefix_inputs
from zolightning.modules import ZOFineTuneModule


def test_the_inner_forward_with_the_prefix_equals_pefts_forward():
    inner, wrapper = add_prefix(load_causal_lm("tiny-llama"), num_virtual_tokens=5)
    with torch.no_grad():  # a prefix away from peft's initialisation, so that it matters
        inner.prefix_encoder["default"].embedding.weight.normal_(0, 1.0)
    tokens = torch.randint(3, 200, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :4] = 0  # left padding, as the scoring and generation batches have
    with torch.no_grad():
        ours = inner(**prefix_inputs(inner, tokens, mask)).logits
        peft = wrapper(input_ids=tokens, attention_mask=mask).logits
        plain = inner(input_ids=tokens, attention_mask=mask).logits
    torch.testing.assert_close(ours, peft, rtol=0, atol=1e-6)
    assert (ours - plain).abs().max() > 1e-3  # the prefix is really in the forward


def _fit(tmp_path, tiny_data, steps=3, **kwargs):
    module = ZOFineTuneModule(model="tiny-llama", peft="prefix", prefix_tokens=4, lr=1e-2, **kwargs)
    frozen = {n: p.detach().clone() for n, p in module.model.named_parameters() if not p.requires_grad}
    prefix = module.model.prefix_encoder["default"].embedding.weight.detach().clone()
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(module, datamodule=tiny_data())
    return module, trainer, frozen, prefix


def test_zo_moves_only_the_prefix_and_the_export_reloads_with_peft(tmp_path, tiny_data):
    from peft import PeftModel

    module, trainer, frozen, prefix = _fit(tmp_path, tiny_data)
    trained = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trained == ["prefix_encoder.default.embedding.weight"]
    walked = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
    assert len(walked) == 1
    now = dict(module.model.named_parameters())
    assert all(torch.equal(now[n], before) for n, before in frozen.items())
    assert not torch.equal(now[trained[0]], prefix)  # the ZO steps moved the prefix

    checkpoint = tmp_path / "run.ckpt"
    trainer.save_checkpoint(checkpoint)
    tokens = torch.randint(3, 200, (2, 10))
    mask = torch.ones_like(tokens)
    with torch.no_grad():
        expected = module.model(**prefix_inputs(module.model, tokens, mask)).logits
    out = tmp_path / "exported"
    assert export_main([str(checkpoint), str(out)]) == 0
    reloaded = PeftModel.from_pretrained(load_causal_lm("tiny-llama"), out)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=tokens, attention_mask=mask).logits, expected)


def test_prefix_runs_score_eagerly_and_refuse_the_compiled_forward():
    inner, _ = add_prefix(load_causal_lm("tiny-llama"), num_virtual_tokens=2)
    path = choose_path(inner, "auto", "auto")
    assert not path.fast_forward and "prefix" in path.why
    with pytest.raises(ValueError, match="prefix"):
        choose_path(inner, "auto", True)
    with pytest.raises(ValueError, match="prefix_tokens"):
        add_prefix(load_causal_lm("tiny-llama"), num_virtual_tokens=0)
    with pytest.raises(ValueError, match="peft must be one of"):
        ZOFineTuneModule(model="tiny-llama", peft="ia3")
