"""How long the first compiled scoring forward takes (dynamo tracing + inductor), by what is compiled: the whole
SmolLM2-shaped trunk (what `fast_forward.py` does) or each decoder layer ("regional": one graph serves all 30),
with and without a key/value cache. Random weights, batch 4, lengths 32 then 64 (the length marked dynamic).

    python -m benchmarks.compile_scope     # the four settings, each in a fresh process, inductor caches off
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def first_calls(scope: str, use_cache: bool) -> tuple[float, float]:
    """Seconds of the first call at length 32 and of the first call at length 64."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, tie_word_embeddings=True,
    )  # fmt: skip
    trunk = LlamaForCausalLM(config).eval().model
    if scope == "layers":
        for layer in trunk.layers:
            layer.compile()
        forward = trunk
    else:
        forward = torch.compile(trunk)
    seconds = []
    for length in (32, 64):
        ids = torch.randint(0, 1000, (4, length))
        mask = torch.ones_like(ids)
        torch._dynamo.maybe_mark_dynamic(ids, 1)
        torch._dynamo.maybe_mark_dynamic(mask, 1)
        start = time.perf_counter()
        with torch.no_grad():
            forward(input_ids=ids, attention_mask=mask, use_cache=use_cache)
        seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # a child process's (scope, use_cache)
    args = parser.parse_args()
    if args.one:
        print(*first_calls(args.one[0], args.one[1] == "true"))
        return
    env = {"TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    for scope in ("trunk", "layers"):
        for cache in ("true", "false"):
            child = [sys.executable, "-m", "benchmarks.compile_scope", "--one", scope, cache]
            done = subprocess.run(child, capture_output=True, text=True, env={**os.environ, **env})
            if done.returncode:
                print(f"scope={scope} use_cache={cache}: failed\n{done.stderr[-2000:]}")
                continue
            first, second = map(float, done.stdout.split()[-2:])
            print(f"scope={scope:6s} use_cache={cache:5s}: first call {first:5.1f} s, first call at a new length "
                  f"{second:5.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
