"""Sharded ZO proven on one GPU: two processes share it over gloo (NCCL refuses two ranks on one device), the
weights sharded with FSDP2 as `zo_fsdp` shards them, the passes the fused Triton kernels with shard offsets; rank 0
then trains the same weights unsharded on the same batches and compares.

Two things differ from a multi-GPU run, both in how shards travel, not in the ZO step: the mesh is built on the gloo
group (`init_device_mesh("cuda")` would start an NCCL group beside it), and FSDP2's all-gathers go through host
memory (gloo gathers host tensors; `HostStagedAllGather`), as do the loss average and the final gather.

    torchrun --nproc_per_node 2 -m benchmarks.sharded_on_one_gpu --shape smollm2 --steps 200 --dtypes float32,bfloat16
    torchrun --nproc_per_node 2 -m benchmarks.sharded_on_one_gpu --shape tiny --steps 3      # CPU: the code path

Prints one JSON line per dtype (rank 0): whether the sharded passes were fused, the largest relative loss difference
over the steps, how many steps' losses were bitwise equal, and the weights' largest absolute difference and
whether all were bitwise equal after the last step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather  # FSDP2's custom-collective hook (not exported)
from transformers import LlamaForCausalLM

from benchmarks.offload_scale import lm_batch
from benchmarks.sharded_scale import SHAPES, config_for
from zolightning.forward.scoring import batch_loss
from zolightning.optim import ZOSGD, ZOOptimizer
from zolightning.optim.engine.shards import shard_model


class HostStagedAllGather(AllGather):
    """FSDP2's all-gather through host memory: gloo gathers host tensors (a proof's speed, not a product's)."""

    def allocate(self, size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor, input_tensor, group, async_op: bool = False):
        host = torch.empty(output_tensor.shape, dtype=output_tensor.dtype)
        dist.all_gather_into_tensor(host, input_tensor.cpu(), group=group)
        output_tensor.copy_(host)  # on the stream FSDP2 gathers on; it records its event after this
        return None


def one_gpu_mesh(device: torch.device) -> DeviceMesh:
    if device.type == "cuda":
        return DeviceMesh.from_group(dist.group.WORLD, "cuda")
    return init_device_mesh("cpu", (dist.get_world_size(),))


def full_weights(model) -> list[torch.Tensor]:
    """Every parameter whole, on rank 0's host (shards gathered as host tensors over gloo)."""
    out = []
    for p in model.parameters():
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, p.to_local().cpu())
        out.append(torch.cat(parts))
    return out


def seeded_model(shape: str, dtype: torch.dtype, device: torch.device) -> LlamaForCausalLM:
    """The same full weights in every process (Hugging Face's initialisation under one seed)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config_for(shape)).to(dtype)
    return model.requires_grad_(False).eval()


def train(model, steps: int, shape: str, device: torch.device, reduce: bool) -> tuple[list[float], bool]:
    optimizer = ZOOptimizer(list(model.parameters()), ZOSGD(), lr=1e-4, eps=1e-3, seed=7, noise="philox")
    vocab, losses = model.config.vocab_size, []

    for step in range(steps):
        batch = lm_batch(vocab, 8, 64, 8, device, seed=step)

        def closure(batch=batch):
            loss = batch_loss(model, batch)[0]
            if reduce:  # what the strategy's reduce does inside the module's closure (on the host: gloo)
                host = loss.detach().cpu()
                dist.all_reduce(host, op=dist.ReduceOp.SUM)
                loss = (host / dist.get_world_size()).to(loss.device)
            return loss

        with torch.no_grad():
            losses.append(float(optimizer.step(closure).loss))
    return losses, optimizer.fused


def compare(dtype_name: str, args, rank: int, device: torch.device, mesh) -> dict | None:
    dtype = getattr(torch, dtype_name)
    sharded = seeded_model(args.shape, dtype, device)
    shard_model(sharded, mesh)
    for module in sharded.modules():
        if isinstance(module, FSDPModule):
            module.set_custom_all_gather(HostStagedAllGather())
    sharded_losses, fused = train(sharded, args.steps, args.shape, device, reduce=True)
    full = full_weights(sharded)  # a collective: every rank takes part
    if rank != 0:
        return None
    plain = seeded_model(args.shape, dtype, device)
    plain_losses, plain_fused = train(plain, args.steps, args.shape, device, reduce=False)
    rel = [abs(a - b) / max(abs(b), 1e-30) for a, b in zip(sharded_losses, plain_losses)]
    diffs = [(a.float() - b.float().cpu()).abs().max().item() for a, b in zip(full, plain.parameters())]
    return {
        "shape": args.shape, "dtype": dtype_name, "steps": args.steps, "world": dist.get_world_size(),
        "backend": dist.get_backend(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "sharded_fused": fused, "unsharded_fused": plain_fused,
        "losses_bitwise_equal_steps": sum(a == b for a, b in zip(sharded_losses, plain_losses)),
        "max_relative_loss_difference": max(rel), "weights_bitwise_equal": all(d == 0 for d in diffs),
        "max_abs_weight_difference": max(diffs), "first_losses": [round(x, 6) for x in sharded_losses[:3]],
        "last_loss": [sharded_losses[-1], plain_losses[-1]],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")  # one GPU for all ranks
    if device.type == "cuda":
        torch.cuda.set_device(device)
    mesh = one_gpu_mesh(device)
    for dtype_name in args.dtypes.split(","):
        report = compare(dtype_name, args, rank, device, mesh)
        if report is not None:
            print(json.dumps(report), flush=True)
        dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # gloo's teardown can abort an exit after the work is done (SIGABRT)


if __name__ == "__main__":
    main()
