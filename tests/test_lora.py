"""LoRA through peft: ZO trains only the adapters, and the export merges them into plain weights."""

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from zolightning.cli.export import main as export_main
from zolightning.models.lora import LoraConfigError
from zolightning.modules import ZOFineTuneModule


def _fit(tmp_path, tiny_data, steps=3, **kwargs):
    module = ZOFineTuneModule(model="tiny-llama", peft="lora", lr=1e-2, **kwargs)
    base = {n: p.detach().clone() for n, p in module.model.named_parameters() if not p.requires_grad}
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(module, datamodule=tiny_data())
    return module, trainer, base


def test_zo_moves_only_the_adapters(tmp_path, tiny_data):
    module, trainer, base = _fit(tmp_path, tiny_data)
    trained = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert {"q_proj", "v_proj"} == {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trained}
    walked = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
    assert len(walked) == len(trained)
    now = dict(module.model.named_parameters())
    assert all(torch.equal(now[n], before) for n, before in base.items())  # frozen weights untouched
    lora_b = [p for n, p in now.items() if ".lora_B." in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: the ZO steps moved it


def test_the_export_merges_lora_and_reloads_with_transformers(tmp_path, tiny_data):
    module, trainer, _ = _fit(tmp_path, tiny_data, lora_r=4, lora_target_modules=["q_proj", "o_proj"])
    checkpoint = tmp_path / "run.ckpt"
    trainer.save_checkpoint(checkpoint)
    tokens = torch.randint(0, 200, (2, 12))
    with torch.no_grad():
        expected = module.model(input_ids=tokens).logits
    out = tmp_path / "exported"
    assert export_main([str(checkpoint), str(out)]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in exported.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=tokens).logits, expected, rtol=1e-4, atol=1e-5)
    assert export_main([str(checkpoint), str(out)]) == 2  # never over an existing export


def test_a_target_the_model_lacks_is_named_with_the_layers_it_has():
    with pytest.raises(LoraConfigError, match=r"lora_target_modules \['query'\].*q_proj"):
        ZOFineTuneModule(model="tiny-llama", peft="lora", lora_target_modules=["query"])


def _adapted_tiny_model():
    from zolightning.models.lora import add_lora
    from zolightning.models.tiny import build_tiny_llama

    torch.manual_seed(0)
    model, _ = add_lora(build_tiny_llama(), r=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(std=0.1)  # B starts at zero: give the adapters a contribution to compare
    return model.eval()


def test_the_compiled_lora_forward_matches_eager():
    # the fast path compiles peft's LoRA layers inside the decoder layers: one graph, no break in peft's forward
    model = _adapted_tiny_model()
    tokens = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        eager = model(input_ids=tokens).logits
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(input_ids=tokens).logits
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def _adapter_dtypes(model) -> set:
    return {p.dtype for name, p in model.named_parameters() if ".lora_" in name}


def test_adapters_take_the_models_dtype_unless_float32_is_asked_for():
    from zolightning.models.lora import add_lora
    from zolightning.models.tiny import build_tiny_llama

    assert _adapter_dtypes(add_lora(build_tiny_llama().to(torch.bfloat16))[0]) == {torch.bfloat16}
    assert _adapter_dtypes(add_lora(build_tiny_llama().to(torch.bfloat16), dtype="float32")[0]) == {torch.float32}
    with pytest.raises(LoraConfigError, match="lora_dtype"):
        add_lora(build_tiny_llama(), dtype="float64")


def test_float32_adapters_on_a_bf16_base_train_under_32_true(tmp_path, tiny_data):
    module, _, base = _fit(tmp_path, tiny_data, steps=2, dtype="bfloat16", lora_dtype="float32")
    assert _adapter_dtypes(module.model) == {torch.float32}
    assert {p.dtype for p in base.values()} == {torch.bfloat16}
    assert any(p.abs().sum() > 0 for n, p in module.model.named_parameters() if ".lora_B." in n)


def test_float32_adapters_under_bf16_true_are_refused_with_the_fix(tmp_path, tiny_data):
    module = ZOFineTuneModule(model="tiny-llama", peft="lora", lora_dtype="float32")
    trainer = L.Trainer(max_steps=1, accelerator="cpu", precision="bf16-true", logger=False, default_root_dir=tmp_path)
    with pytest.raises(LoraConfigError, match="32-true"):
        trainer.fit(module, datamodule=tiny_data())


def test_a_lora_checkpoint_holds_the_adapters_alone_and_resumes_from_them(tmp_path, tiny_data):
    module, trainer, base = _fit(tmp_path, tiny_data)
    checkpoint = tmp_path / "run.ckpt"
    trainer.save_checkpoint(checkpoint)
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)
    assert sum(v.numel() for v in saved.values()) * 20 < sum(p.numel() for p in base.values())
    resumed = ZOFineTuneModule(model="tiny-llama", peft="lora", lr=1e-2)
    trainer = L.Trainer(
        max_steps=5, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(resumed, datamodule=tiny_data(), ckpt_path=checkpoint)
    assert trainer.global_step == 5
    now = dict(resumed.model.named_parameters())
    assert all(torch.equal(now[n], before) for n, before in base.items())  # the base, rebuilt, untouched


def test_adapter_only_export_loads_with_peft_onto_the_base(tmp_path, tiny_data):
    from peft import PeftModel

    from zolightning.models import load_causal_lm

    module, trainer, _ = _fit(tmp_path, tiny_data)
    checkpoint = tmp_path / "run.ckpt"
    trainer.save_checkpoint(checkpoint)
    tokens = torch.randint(0, 200, (2, 12))
    with torch.no_grad():
        expected = module.model(input_ids=tokens).logits
    assert export_main([str(checkpoint), str(tmp_path / "adapter"), "--adapter-only"]) == 0
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() and (tmp_path / "adapter" / "README.md").is_file()
    loaded = PeftModel.from_pretrained(load_causal_lm("tiny-llama"), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=tokens).logits, expected, rtol=1e-4, atol=1e-5)


def test_a_push_without_the_hub_is_one_line_and_keeps_the_export(tmp_path, tiny_data):
    import os
    import subprocess
    import sys

    _, trainer, _ = _fit(tmp_path, tiny_data)
    checkpoint = tmp_path / "run.ckpt"
    trainer.save_checkpoint(checkpoint)
    command = [sys.executable, "-m", "zolightning", "export", str(checkpoint), str(tmp_path / "out")]
    result = subprocess.run(
        [*command, "--push-to-hub", "someone/tiny"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: could not upload to someone/tiny: ")
    assert (tmp_path / "out" / "config.json").is_file()
