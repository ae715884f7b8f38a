"""Peak GPU memory and time of one meta-training step vs one plain first-order fine-tuning step, same batch.

    python -m benchmarks.meta_memory --model smollm2-135m-instruct --data-dir ../shared/data [--task copa] \
        [--horizons 1,8]

First-order fine-tuning = forward, backward, gradient clipping, SGD with momentum (the LM half of a meta
step, on its own). Meta-training step = what `MetaVarianceModule.training_step` does: the networks' sigma,
L+- at theta +- eps c sigma z (functional, no autograd), the look-ahead loss L(theta') backpropagated to the
networks, then the same first-order step; with a horizon K, the meta step unrolls K ZO steps over K batches
(variance/meta.py) and backpropagates the mean loss after them. All are measured at steady state (momentum buffers
allocated); one JSON line per horizon.
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.timing import peak_mib, timed, to_device
from zolightning.data import TaskDataModule
from zolightning.forward.scoring import batch_loss
from zolightning.models import load_causal_lm
from zolightning.optim.engine.noise import NoiseSource, step_seed
from zolightning.variance.blocks import describe_blocks, trainable_named_parameters
from zolightning.variance.meta import unrolled_meta_step
from zolightning.variance.networks import BlockVarianceNets


def _loss(model, batch):
    return batch_loss(model, batch)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--task", default="copa")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--horizons", default="1", help="comma-separated K of the unrolled meta step")
    args = parser.parse_args()
    device = torch.device("cuda")
    data = TaskDataModule(args.task, tokenizer=args.model, data_dir=args.data_dir, batch_size=args.batch_size)
    data.setup()
    horizons = [int(k) for k in args.horizons.split(",")]
    loader = iter(data.train_dataloader())
    batches = [to_device(next(loader), device) for _ in range(max(horizons))]
    batch = batches[0]
    model = load_causal_lm(args.model).to(device)
    named = trainable_named_parameters(model)
    names, params = [n for n, _ in named], [p for _, p in named]
    nets = BlockVarianceNets(len(params), generator=torch.Generator().manual_seed(0)).to(device)
    sizes = torch.tensor(
        [b.effective_size for b in describe_blocks(model, args.batch_size)], dtype=torch.float64, device=device
    )
    opt_lm = torch.optim.SGD(params, lr=1e-6, momentum=0.8)
    opt_nets = torch.optim.SGD(nets.parameters(), lr=1e-3)
    noise = NoiseSource()
    losses_prev, sigma_prev = torch.zeros(2, device=device), torch.ones(len(params), device=device)

    def first_order_step():
        loss = _loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt_lm.step()
        opt_lm.zero_grad(set_to_none=True)

    def meta_training_step(horizon: int):
        opt_nets.zero_grad()
        unrolled_meta_step(model, names, params, nets, (losses_prev, sigma_prev), sizes, _loss, batches[:horizon],
                           1e-3, 1e-6, [step_seed(0, k) for k in range(horizon)], noise)  # fmt: skip
        opt_nets.step()
        first_order_step()

    first_order_step()  # momentum buffers exist from here on, as during training
    weights = sum(p.numel() * p.element_size() for p in params) / 2**20
    fo_peak = peak_mib(first_order_step)
    fo_s = timed(first_order_step, args.repeats)
    for horizon in horizons:
        meta_peak = peak_mib(lambda: meta_training_step(horizon))  # noqa: B023 (called at once)
        meta_s = timed(lambda: meta_training_step(horizon), args.repeats)  # noqa: B023
        report = {"model": args.model, "task": args.task, "batch": list(batch["input_ids"].shape), "horizon": horizon,
                  "weights_mib": round(weights, 1), "first_order_peak_mib": round(fo_peak, 1),
                  "meta_peak_mib": round(meta_peak, 1), "meta_over_first_order_peak": round(meta_peak / fo_peak, 3),
                  "first_order_step_ms": round(fo_s * 1e3, 1), "meta_step_ms": round(meta_s * 1e3, 1),
                  "device": torch.cuda.get_device_name()}  # fmt: skip
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
