"""A Hugging Face model folder of a Llama shape with seeded random weights and the byte tokenizer, for real
`zolightning fit` runs on machines without the model files (`benchmarks/gpu/offload_fit.sh`).

    python -m benchmarks.random_model_dir --shape smollm2 OUT_DIR
"""

from __future__ import annotations

import argparse

import torch
from transformers import LlamaForCausalLM

from benchmarks.sharded_scale import SHAPES, config_for
from zolightning.models.tiny import build_byte_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    args = parser.parse_args()
    torch.manual_seed(0)
    LlamaForCausalLM(config_for(args.shape)).save_pretrained(args.out)
    build_byte_tokenizer().save_pretrained(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
