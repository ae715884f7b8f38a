"""`zolightning export CKPT OUT_DIR`: a fine-tuned checkpoint as a Hugging Face model directory.

zolightning export logs/sst2-mezo/version_0/checkpoints/last.ckpt exported/sst2
zolightning export last.ckpt exported/sst2 --model path/to/smollm2.gguf   # the base model moved since training

LoRA runs are merged (W + alpha/r · B A) and written as plain weights; the directory loads with
`AutoModelForCausalLM.from_pretrained(OUT_DIR)` and `AutoTokenizer.from_pretrained(OUT_DIR)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zolightning.checkpoints.provenance import model_card
from zolightning.checkpoints.safety import (
    UnsafeCheckpointError,
    check_sharded_checkpoint,
    first_line_of,
    load_checkpoint,
    refusal,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zolightning export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="a .ckpt written by zolightning fit (a file, or a sharded run's folder)")
    parser.add_argument("out_dir", help="the directory to write (created; must be empty if it exists)")
    parser.add_argument("--model", help="load the base model from here instead of the checkpoint's model.model")
    parser.add_argument(
        "--adapter-only", action="store_true", help="LoRA: peft's adapter directory instead of merged weights"
    )
    parser.add_argument("--push-to-hub", metavar="REPO", help="then upload the directory to this hub repo (user/name)")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read a checkpoint that holds objects other than tensors and plain values (unpickling can run code; "
        "zolightning's own checkpoints never need this)",
    )
    return parser


def consolidate(folder: str, out_file: str, trust_pickle: bool = False) -> None:
    """A distributed checkpoint folder (weights in shards, the rest in meta.pt) as one Lightning .ckpt file."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    if not trust_pickle:
        check_sharded_checkpoint(folder)
    meta = load_checkpoint(Path(folder) / "meta.pt", trust_pickle)
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    dcp_to_torch_save(folder, out_file)
    weights = load_checkpoint(out_file, trust_pickle)["state_dict"]
    torch.save({**meta, "state_dict": weights}, out_file)


def load_module(checkpoint: str, out: Path, trust_pickle: bool, overrides: dict):
    """The fine-tuned module of a checkpoint file or a sharded run's folder, read weights-only unless trusted."""
    import pickle

    from zolightning.modules import ZOFineTuneModule

    single = Path(checkpoint)
    if single.is_dir():  # a sharded (zo_fsdp) run's distributed checkpoint: consolidate it first
        single = out.parent / f".{out.name}.consolidated.ckpt"
        consolidate(checkpoint, str(single), trust_pickle)
    try:
        return ZOFineTuneModule.load_from_checkpoint(
            single, map_location="cpu", weights_only=not trust_pickle, **overrides
        )
    except pickle.UnpicklingError as error:
        raise refusal(checkpoint, first_line_of(error), "--trust-pickle") from None
    finally:
        if single != Path(checkpoint):
            single.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out_dir)
    if not Path(args.checkpoint).exists():
        print(f"error: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} exists and is not empty", file=sys.stderr)
        return 2
    overrides = {"model": args.model} if args.model else {}
    try:
        module = load_module(args.checkpoint, out, args.trust_pickle, overrides)
    except UnsafeCheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        module.export_pretrained(str(out), adapter_only=args.adapter_only)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    record = module.provenance or {"base_model": module.hparams.model}  # checkpoints of earlier versions: less
    (out / "README.md").write_text(model_card(record, args.checkpoint))
    merged = module.hparams.peft == "lora" and not args.adapter_only
    print(f"wrote {out} (from {args.checkpoint}{', LoRA merged' if merged else ''})")
    return push_to_hub(out, args.push_to_hub) if args.push_to_hub else 0


def push_to_hub(folder: Path, repo: str) -> int:
    """Upload the exported directory to a hub model repo (created if needed) with huggingface_hub's own calls."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
        url = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model")
    except Exception as error:  # offline, no token, no network, refused: one line, the export stays on disk
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: could not upload to {repo}: {message[:300]} (the export is in {folder})", file=sys.stderr)
        return 2
    print(f"uploaded {folder} to {url}")
    return 0
