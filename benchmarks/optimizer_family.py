"""Step time and peak memory of every ZO update rule (and LoRA) beside MeZO's ZOSGD, in one run (GPU).

    python -m benchmarks.optimizer_family --model $GGUF --noise philox          # SmolLM2, fp32, batch 16 x 64
    python -m benchmarks.optimizer_family --model smollm2 --dtype bfloat16      # its shape, random weights
    python -m benchmarks.optimizer_family --model smollm2 --fast-forward        # the fit's compiled forward

Each rule steps the same model on the same random batch (eager forward by default: the comparison is of the
update rules, not of the forward; `--fast-forward`: the compiled, CUDA-graphed forward of a GPU fit, planned for
the batch's one shape, where the rules' own costs weigh more); medians after warm-up, and the peak allocated
memory of one step with the rule's state in place. `ratio` is the step time over `zo_sgd`'s (issue #14: <= 1.15
on the fast path, ZO-Adam excepted); rules that spend more forward passes per step (HiZOO 3, Conserve 4-5, q
queries 2q) are also compared per forward pass (`per forward`: the step time over `forwards`, against zo_sgd's
over 2). `fused` says whether the rule's passes ran fused (`fused_rules.py`, `fused_shaped.py`) and `sync`
whether its step read g on the host.
"""

from __future__ import annotations

import argparse
import gc

import torch

from benchmarks.step_time import build_model, random_batch
from benchmarks.timing import peak_mib, timed
from zolightning.forward.fast_forward import FastScoringModel
from zolightning.forward.scoring import batch_loss
from zolightning.forward.shape_plan import ShapePlan
from zolightning.models.lora import add_lora
from zolightning.optim import OPTIMIZER_NAMES, build_zo_optimizer

# --rules names of the LoRA rows: adapters in the model's dtype (what every fit runs), or peft's float32 ones
LORA_ROWS = {"model": "lora", "float32": "lora_fp32"}


def scoring_model(model, batch: dict, fast_forward: bool):
    """What scores the batch: the model, or (fast_forward) its trunk compiled and captured for the batch's shape."""
    if not fast_forward:
        return model
    scorer = FastScoringModel(model, plan=ShapePlan(rows=(batch["input_ids"].shape[0],),
                                                    lengths=(batch["input_ids"].shape[1],)))  # fmt: skip
    scorer.trunk.warm_up(batch["input_ids"].device)
    return scorer


def measure(model, scorer, batch, name: str, noise: str, repeats: int, queries: int = 1) -> tuple:
    params = [p for p in model.parameters() if p.requires_grad]
    # as in a fit: philox steps keep g on the device where the rule can (the registry keeps the others synced)
    optimizer = build_zo_optimizer(
        name, params, lr=1e-7, eps=1e-3, noise=noise, queries=queries, sync=noise != "philox"
    )

    calls = {"steps": 0, "forwards": 0}

    def loss():
        calls["forwards"] += 1
        return batch_loss(scorer, batch)[0]

    def step():
        calls["steps"] += 1
        optimizer.step(loss)

    seconds = timed(step, repeats)
    fused = optimizer.fused
    return seconds, peak_mib(step), fused, optimizer.sync, calls["forwards"] / calls["steps"]


def row(label: str, seconds: float, base: float, peak: float, fused: bool, sync: bool, forwards: float) -> str:
    per_forward = (seconds / forwards) / (base / 2)
    return (
        f"| {label} | {1000 * seconds:.1f} | {seconds / base:.2f} | {forwards:.1f} | {per_forward:.2f} | {peak:.0f} "
        f"| {fused} | {sync} |"
    )


def _plain(label: str) -> str:
    return label.replace(",", "").replace(" ", "")  # "lozo, q=4" (a row) == "lozo q=4" (in --rules)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--noise", default="philox", choices=["philox", "generator"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--fast-forward", action="store_true", help="score with the fit's compiled forward")
    parser.add_argument(
        "--rules",
        default=None,
        help="rows to run, comma-separated (e.g. lozo,lora,lora_fp32,zo_sgd_momentum q=4); zo_sgd always runs first",
    )
    args = parser.parse_args()
    model = build_model(args.model, getattr(torch, args.dtype))
    model.requires_grad_(True)
    batch = random_batch(model.config.vocab_size, args.batch, args.length)
    print(f"# resident with the model alone: {torch.cuda.memory_allocated() / 2**20:.0f} MiB")
    scorer = scoring_model(model, batch, args.fast_forward)
    with torch.no_grad():
        inference = peak_mib(lambda: batch_loss(scorer, batch))
    forward = "compiled forward" if args.fast_forward else "eager forward"
    print(f"{args.model} {args.dtype} noise={args.noise} batch {args.batch}x{args.length} {forward}: "
          f"inference peak {inference:.0f} MiB")  # fmt: skip
    print("| rule | step (ms) | ratio to zo_sgd | forwards | per forward | peak (MiB) | fused | sync |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    rows = [(n, n, 1) for n in OPTIMIZER_NAMES] + [(f"{n}, q=4", n, 4) for n in ("zo_sgd", "zo_sgd_momentum", "lozo")]
    wanted = None if args.rules is None else {_plain(r) for r in ("zo_sgd", *args.rules.split(","))}
    for label, name, queries in rows:
        if wanted is not None and _plain(label) not in wanted:
            continue
        seconds, *rest = measure(model, scorer, batch, name, args.noise, args.repeats, queries)
        base = base or seconds
        print(row(label, seconds, base, *rest), flush=True)
    scorer = None  # its captured graphs' memory pool would count in the LoRA rows' peaks
    lora_rows(model, batch, args, base, wanted)


def lora_rows(model, batch: dict, args, base: float, wanted: set | None) -> None:
    """MeZO on LoRA adapters of `model`, in the model's dtype and then in float32 (peft's), each on a fresh scorer."""
    for adapters in ("model", "float32"):
        if wanted is not None and _plain(LORA_ROWS[adapters]) not in wanted:
            continue
        gc.collect()
        torch.cuda.empty_cache()
        print(f"# resident before the LoRA row: {torch.cuda.memory_allocated() / 2**20:.0f} MiB", flush=True)
        lora_model, wrapper = add_lora(model, dtype=adapters)
        scorer = scoring_model(lora_model, batch, args.fast_forward)
        seconds, *rest = measure(lora_model, scorer, batch, "zo_sgd", args.noise, args.repeats)
        print(row(f"zo_sgd, LoRA r 8 (q,v), {adapters} adapters", seconds, base, *rest), flush=True)
        del scorer, lora_model
        model = wrapper.unload()  # the base model again, for the next row's adapters


if __name__ == "__main__":
    main()
