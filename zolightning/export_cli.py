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
    parser.add_argument("checkpoint", help="a .ckpt written by zolightning fit")
    parser.add_argument("out_dir", help="the directory to write (created; must be empty if it exists)")
    parser.add_argument("--model", help="load the base model from here instead of the checkpoint's model.model")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out_dir)
    if not Path(args.checkpoint).is_file():
        print(f"error: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} exists and is not empty", file=sys.stderr)
        return 2
    from zolightning.modules import ZOFineTuneModule

    overrides = {"model": args.model} if args.model else {}
    module = ZOFineTuneModule.load_from_checkpoint(args.checkpoint, map_location="cpu", weights_only=False, **overrides)
    module.export_pretrained(str(out))
    print(f"wrote {out} (from {args.checkpoint}{', LoRA merged' if module.hparams.peft == 'lora' else ''})")
    return 0
