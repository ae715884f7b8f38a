"""GPU memory and time of greedy decoding a generation eval batch (SQuAD: 128 prompts up to ~864 tokens) on a
SmolLM2-shaped model with random weights (every row decodes all `--new` tokens: the worst case), by batch size
and key/value cache kind. Each setting in a fresh process, so that reserved memory is its own.

    python -m benchmarks.generation_memory [--dtype float32] [--prompt 864] [--new 50]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

SETTINGS = [(128, "dynamic"), (128, "static"), (64, "dynamic"), (32, "dynamic")]


def decode(rows: int, cache: str, prompt: int, new: int, dtype: str) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, tie_word_embeddings=True, max_position_embeddings=8192,
    )  # fmt: skip
    model = LlamaForCausalLM(config).to("cuda", getattr(torch, dtype)).eval()
    ids = torch.randint(3, 49152, (rows, prompt), device="cuda")
    mask = torch.ones_like(ids)
    mask[: rows // 2, : prompt // 3] = 0  # half the rows left-padded to a third shorter prompt
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    extra = {"cache_implementation": "static"} if cache == "static" else {}
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                       pad_token_id=0, **extra)  # fmt: skip
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    reserved = torch.cuda.max_memory_reserved() / 2**30
    return (f"rows {rows:3d} cache {cache:7s}: {seconds:5.2f} s, peak above the model {peak:5.2f} GiB, "
            f"reserved {reserved:5.2f} GiB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompt", type=int, default=864)
    parser.add_argument("--new", type=int, default=50)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # a child process's (rows, cache)
    args = parser.parse_args()
    if args.one:
        print(decode(int(args.one[0]), args.one[1], args.prompt, args.new, args.dtype))
        return
    print(f"SmolLM2 shape, {args.dtype}, prompts of {args.prompt} tokens, {args.new} new tokens per row")
    for rows, cache in SETTINGS:
        child = [sys.executable, "-m", "benchmarks.generation_memory", "--one", str(rows), cache,
                 "--dtype", args.dtype, "--prompt", str(args.prompt), "--new", str(args.new)]  # fmt: skip
        done = subprocess.run(child, capture_output=True, text=True)
        print(done.stdout.strip() or f"rows {rows} cache {cache}: failed\n{done.stderr[-1500:]}", flush=True)


if __name__ == "__main__":
    main()
