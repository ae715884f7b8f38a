"""Peak GPU memory of a ZO step with gradient accumulation: k micro-batches of B against one batch of kB and one of B.

    python -m benchmarks.accumulation_memory --shape smollm2 --batch 16 --micro 4 --seq 512

Prints one JSON line: each setting's peak memory above the weights and its step time (the same seeded weights, the
same rows: the accumulated step scores them in k pieces, `modules/micro_batches.py`).
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import LlamaForCausalLM

from benchmarks.offload_scale import lm_batch
from benchmarks.sharded_scale import SHAPES, config_for, synced
from zolightning.forward.scoring import batch_loss
from zolightning.modules.micro_batches import mean_objective
from zolightning.optim import ZOSGD, ZOOptimizer


def measure(model, batches: list[dict], device: torch.device, steps: int = 3) -> dict:
    optimizer = ZOOptimizer(list(model.parameters()), ZOSGD(), lr=1e-6, eps=1e-3, noise="philox")
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    times, losses = [], []

    def step() -> None:
        out = optimizer.step(lambda: mean_objective(lambda b: batch_loss(model, b)[0], batches))
        losses.append(float(out.loss_plus))

    with torch.no_grad():
        for _ in range(steps):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times.append(synced(step, device))
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else 0
    return {"peak_above_weights_gib": round(peak / 2**30, 3), "step_seconds": round(sorted(times)[len(times) // 2], 4),
            "first_loss_plus": losses[0]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--micro", type=int, default=4, help="micro-batch size (batch / micro micro-batches)")
    parser.add_argument("--seq", type=int, default=512)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config_for(args.shape)).to(torch.bfloat16).eval().requires_grad_(False)
    vocab, k = model.config.vocab_size, args.batch // args.micro
    whole = lm_batch(vocab, args.batch, args.seq, 32, device)
    pieces = split(whole, k)
    report = {"shape": args.shape, "seq": args.seq, "batch": args.batch, "micro": args.micro,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}  # fmt: skip
    report[f"one_batch_of_{args.batch}"] = measure(model, [whole], device)
    report[f"{k}_micro_batches_of_{args.micro}"] = measure(model, pieces, device)
    report[f"one_batch_of_{args.micro}"] = measure(model, pieces[:1], device)
    print(json.dumps(report), flush=True)


def split(batch: dict, k: int) -> list[dict]:
    """k LM batches of consecutive rows (their scored positions re-indexed)."""
    rows = batch["input_ids"].shape[0] // k
    out = []
    for i in range(k):
        keep = (batch["pred_rows"] >= i * rows) & (batch["pred_rows"] < (i + 1) * rows)
        part = {key: batch[key][i * rows : (i + 1) * rows] for key in ("input_ids", "attention_mask")}
        part |= {"pred_rows": batch["pred_rows"][keep] - i * rows, "pred_cols": batch["pred_cols"][keep]}
        out.append({"kind": "lm", **part, "pred_tokens": batch["pred_tokens"][keep]})
    return out


if __name__ == "__main__":
    main()
