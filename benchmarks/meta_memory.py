"""Peak GPU memory and time of one meta-training step vs one plain first-order fine-tuning step, same batch.

    python -m benchmarks.meta_memory --model smollm2-135m-instruct --data-dir ../shared/data [--task copa]

First-order fine-tuning = forward, backward, gradient clipping, SGD with momentum (the LM half of a meta
step, on its own). Meta-training step = what `MetaVarianceModule.training_step` does: the networks' sigma,
L+- at theta +- eps c sigma z (functional, no autograd), the look-ahead loss L(theta') backpropagated to the
networks, then the same first-order step. Both are measured at steady state (momentum buffers allocated).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.timing import peak_mib, timed, to_device
from zolightning.data import TaskDataModule
from zolightning.forward.scoring import batch_loss
from zolightning.models import load_causal_lm
from zolightning.optim.engine.noise import NoiseSource, step_seed
from zolightning.variance.blocks import describe_blocks, trainable_named_parameters
from zolightning.variance.learned import block_statistics
from zolightning.variance.meta import meta_step
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
    args = parser.parse_args()
    device = torch.device("cuda")
    data = TaskDataModule(args.task, tokenizer=args.model, data_dir=args.data_dir, batch_size=args.batch_size)
    data.setup()
    batch = to_device(next(iter(data.train_dataloader())), device)
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

    def meta_training_step():
        mean, variance = block_statistics(params)
        features = torch.cat(
            [mean[:, None], variance[:, None], losses_prev.expand(len(params), 2), sigma_prev[:, None]], dim=1
        )
        result = meta_step(
            model, names, params, nets, features, sizes, _loss, batch, 1e-3, 1e-6, step_seed(0, 0), noise
        )
        opt_nets.zero_grad()
        result.meta_loss.backward()
        opt_nets.step()
        first_order_step()

    first_order_step()  # momentum buffers exist from here on, as during training
    weights = sum(p.numel() * p.element_size() for p in params) / 2**20
    fo_peak = peak_mib(first_order_step)
    meta_peak = peak_mib(meta_training_step)
    fo_s, meta_s = timed(first_order_step, args.repeats), timed(meta_training_step, args.repeats)
    print(f"model {args.model} fp32, {args.task} batch {args.batch_size} x {tuple(batch['input_ids'].shape)} tokens")
    print("| quantity | value |\n|---|---|")
    print(f"| weights | {weights:.1f} MiB |")
    print(f"| first-order fine-tuning step peak (weights + grads + momentum + activations) | {fo_peak:.1f} MiB |")
    print(f"| meta-training step peak (look-ahead meta step + first-order step) | {meta_peak:.1f} MiB |")
    print(f"| meta / first-order peak | {meta_peak / fo_peak:.3f} |")
    print(f"| first-order step (median) | {fo_s * 1e3:.1f} ms |")
    print(f"| meta-training step (median) | {meta_s * 1e3:.1f} ms |")


if __name__ == "__main__":
    main()
