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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zolightning export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="a .ckpt written by zolightning fit (a file, or a sharded run's folder)")
    parser.add_argument("out_dir", help="the directory to write (created; must be empty if it exists)")
    parser.add_argument("--model", help="load the base model from here instead of the checkpoint's model.model")
    return parser


def consolidate(folder: str, out_file: str) -> None:
    """A distributed checkpoint folder (weights in shards, the rest in meta.pt) as one Lightning .ckpt file."""
    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    dcp_to_torch_save(folder, out_file)
    weights = torch.load(out_file, weights_only=False)["state_dict"]
    torch.save({**torch.load(Path(folder) / "meta.pt", weights_only=False), "state_dict": weights}, out_file)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out_dir)
    if not Path(args.checkpoint).exists():
        print(f"error: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} exists and is not empty", file=sys.stderr)
        return 2
    from zolightning.modules import ZOFineTuneModule

    overrides = {"model": args.model} if args.model else {}
    checkpoint = args.checkpoint
    if Path(checkpoint).is_dir():  # a sharded (zo_fsdp) run's distributed checkpoint: consolidate it first
        checkpoint = str(out.parent / f".{out.name}.consolidated.ckpt")
        consolidate(args.checkpoint, checkpoint)
    try:
        module = ZOFineTuneModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=False, **overrides)
    finally:
        if checkpoint != args.checkpoint:
            Path(checkpoint).unlink(missing_ok=True)
    module.export_pretrained(str(out))
    print(f"wrote {out} (from {args.checkpoint}{', LoRA merged' if module.hparams.peft == 'lora' else ''})")
    return 0
