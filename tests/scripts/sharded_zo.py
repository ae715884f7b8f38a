"""Run by tests/test_sharded.py under torchrun: ZO steps on a tiny Llama sharded with FSDP2 (gloo, CPU).

python -m torch.distributed.run --nproc_per_node 2 tests/scripts/sharded_zo.py OUT.pt --steps 3 [--weight-decay W]
    [--learned]   (learned block variance from seeded random networks)
    [--rules zo_sgd,zo_adam:2,...]   (each rule, with its query count after a colon, from fresh weights)
Each rank scores the same fixed batch (the losses then agree across ranks); rank 0 saves the full weights (with
--rules: a dict of them by rule).
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from zolightning.models import load_causal_lm
from zolightning.optim import RULES, ZOOptimizer
from zolightning.optim.engine.shards import shard_model


def fixed_batch() -> dict:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 250, (4, 12), generator=generator)
    return {"input_ids": ids}


def loss_of(model, batch) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"]).logits.double()
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten())


def learned_variance(model):
    """Block scales from seeded random networks: the same on every rank and in the unsharded run."""
    from zolightning.variance import BlockVarianceNets
    from zolightning.variance.blocks import describe_blocks
    from zolightning.variance.learned import LearnedVariance

    blocks = describe_blocks(model, 4)
    nets = BlockVarianceNets(len(blocks), generator=torch.Generator().manual_seed(3))
    return LearnedVariance(nets, blocks, normalize=True, cuda_graph=False)


RULE_OPTIONS = {"lozo": {"rank": 2, "interval": 2}, "hizoo": {"hessian_smooth": 0.1}}


def train(model, steps: int, weight_decay: float, all_reduce: bool, learned: bool = False, rule: str = "zo_sgd",
          queries: int = 1) -> None:  # fmt: skip
    optimizer = ZOOptimizer(
        model.parameters(),
        RULES[rule](**RULE_OPTIONS.get(rule, {})),
        queries=queries,
        lr=1e-2,
        eps=1e-3,
        seed=5,
        noise="philox",
        weight_decay=weight_decay,
        block_scales=learned_variance(model) if learned else None,
    )
    batch = fixed_batch()

    def closure():
        loss = loss_of(model, batch)
        if all_reduce:  # losses averaged across ranks, as data parallel does
            dist.all_reduce(loss, op=dist.ReduceOp.AVG)
        return loss

    with torch.no_grad():
        for _ in range(steps):
            optimizer.step(closure)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--learned", action="store_true")
    parser.add_argument("--replicas", type=int, default=1, help="hybrid: replicated over this many groups")
    parser.add_argument("--model", default="tiny-llama", help="tiny-llama-untied: embedding and head sharded apart")
    parser.add_argument("--rules", default="", help="comma-separated rule[:queries] list, each from fresh weights")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    if args.replicas > 1:  # HSDP: sharded within a group, replicated across groups (as across nodes)
        mesh = init_device_mesh("cpu", (args.replicas, world // args.replicas), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh("cpu", (world,))
    results = {}
    for entry in args.rules.split(",") if args.rules else ["zo_sgd"]:
        rule, _, queries = entry.partition(":")
        model = load_causal_lm(args.model, dtype="float64")
        shard_model(model, mesh)  # as zo_fsdp shards it: layers (and untied embedding, head) as units, the root
        train(model, args.steps, args.weight_decay, True, args.learned, rule, int(queries or 1))
        results[entry] = {name: p.full_tensor() for name, p in model.named_parameters()}
    if dist.get_rank() == 0:
        torch.save(results if args.rules else results["zo_sgd"], args.out)
    dist.barrier()  # every rank is done with gloo
    # A normal exit can abort while gloo's threads are torn down ("terminate called without an active
    # exception", SIGABRT, about one run in ten here): the work is saved, so leave without the teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
