"""What a key/value cache costs a scoring forward: peak memory of one SmolLM2-shaped trunk forward (random
weights) with `use_cache=True` (the model's default) and `False` (what `scoring.py` now asks for).

    python -m benchmarks.kv_cache_memory                      # CPU: peak RSS growth, one fresh process per setting
    python -m benchmarks.kv_cache_memory --device cuda        # GPU: peak allocated memory
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys


def measure(use_cache: bool, device: str, rows: int, length: int, dtype: str) -> float:
    """MiB above the model's own footprint at the forward's peak."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config).to(device=device, dtype=getattr(torch, dtype)).eval()
    ids = torch.randint(0, 1000, (rows, length), device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.no_grad():
        model.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=use_cache)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return (peak - before) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--length", type=int, default=1312, help="BoolQ's longest planned length")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--one", choices=["true", "false"], help=argparse.SUPPRESS)  # a child process's setting
    args = parser.parse_args()
    if args.one:
        print(measure(args.one == "true", args.device, args.rows, args.length, args.dtype))
        return
    for setting in ("true", "false"):
        child = [sys.executable, "-m", "benchmarks.kv_cache_memory", *sys.argv[1:], "--one", setting]
        mib = float(subprocess.run(child, capture_output=True, text=True, check=True).stdout.split()[-1])
        shape = f"{args.rows} x {args.length}"
        print(f"use_cache={setting}: {mib:,.0f} MiB at the peak of a {shape} forward ({args.device})")


if __name__ == "__main__":
    main()
