"""Where the first compiled scoring forward's seconds go: cProfile of `FastScoringModel` warm-up on a model, the
fit's plan (rows 16, 32 x tokens 32, 64, 96), and dynamo's own compile-time table. Run it twice for the warm case.

    python -m benchmarks.compile_profile --model $GGUF [--dtype bfloat16] [--no-regions] [--top 30]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--no-regions", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    import torch
    from torch._dynamo.utils import compile_times, counters

    from zolightning.forward.fast_forward import FastScoringModel
    from zolightning.forward.shape_plan import ShapePlan
    from zolightning.models import load_causal_lm

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_causal_lm(args.model, dtype=args.dtype).to(device)
    scorer = FastScoringModel(model, plan=ShapePlan(rows=(16, 32), lengths=(32, 64, 96)), regions=not args.no_regions)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    scorer.trunk.warm_up(device, progress=print)
    profile.disable()
    print(f"warm-up {time.perf_counter() - start:.1f} s; inductor counters {dict(counters['inductor'])}")
    print(compile_times(repr="str"))
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
