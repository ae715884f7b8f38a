"""Sharded ZO at scale without model files: Llama shapes with random weights, built on the meta device and
materialised shard by shard (FSDP2), then timed ZO steps (issue #13).

    torchrun --nproc_per_node 2 -m benchmarks.sharded_scale --shape 8b --steps 10      # sharded over 2 GPUs
    python -m benchmarks.sharded_scale --shape 8b --steps 10                            # one GPU, unsharded
    torchrun --nproc_per_node 2 -m benchmarks.sharded_scale --shape tiny --steps 2      # CPU (gloo) check

Prints one JSON line (rank 0): the step time, its parts measured alone (the two sharded forwards, the three
shard passes; issue #13 asks step ≤ 1.3 × their sum), peak memory per GPU beside its parts (this rank's
weights, the largest gathered layer, the peak of a forward alone: the step should add nothing to it), and the
losses of each step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

from zolightning.optim import ZOOptimizer
from zolightning.optim.engine.shards import local_shard, shard_model

# hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings
SHAPES = {
    "tiny": (64, 128, 2, 4, 2, 256, False),
    "1b": (2048, 8192, 16, 32, 8, 128256, True),  # Llama-3.2-1B
    "8b": (4096, 14336, 32, 32, 8, 128256, False),  # Llama-3-8B
    "13b": (5120, 13824, 40, 40, 40, 32000, False),  # Llama-2-13B
    "70b": (8192, 28672, 80, 64, 8, 128256, False),  # Llama-3-70B
}


def config_for(shape: str) -> LlamaConfig:
    hidden, inter, layers, heads, kv, vocab, tied = SHAPES[shape]
    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=vocab,
        tie_word_embeddings=tied,
        max_position_embeddings=4096,
    )


def build(shape: str, dtype: torch.dtype, device: torch.device, mesh) -> LlamaForCausalLM:
    """Meta-device model, sharded (if a mesh is given), then materialised with N(0, 0.02) weights, unit norms."""
    config = config_for(shape)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)
    if mesh is not None:
        shard_model(model, mesh)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = local_shard(p)[0]
            if name.endswith("norm.weight"):
                local.fill_(1.0)
            else:
                local.copy_(torch.randn(local.shape, generator=generator, device=device) * 0.02)
        with torch.device(device):  # its buffers were left empty by to_empty
            model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    model.requires_grad_(False)
    return model.eval()


def largest_layer_bytes(model: LlamaForCausalLM) -> int:
    """The biggest all-gather of a forward: one decoder layer or the root's own weights (embedding, head)."""
    layers = [sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in model.model.layers]
    in_layers = {id(p) for layer in model.model.layers for p in layer.parameters()}
    root = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in in_layers)
    return max(layers + [root])


def timed(fn, device: torch.device, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = parser.parse_args()

    distributed = "WORLD_SIZE" in os.environ
    cuda = torch.cuda.is_available()
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    mesh = None
    if distributed:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (world,))
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    model = build(args.shape, dtype, device, mesh)
    build_seconds = time.perf_counter() - start
    vocab = model.config.vocab_size
    generator = torch.Generator(device=device).manual_seed(rank)
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=generator, device=device)

    def closure() -> torch.Tensor:
        logits = model(input_ids=ids).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        if distributed:
            dist.all_reduce(loss, op=dist.ReduceOp.AVG)
        return loss

    optimizer = ZOOptimizer(model.parameters(), lr=1e-6, eps=1e-3, seed=0, noise="philox")
    weight_bytes = sum(local_shard(p)[0].numel() * p.element_size() for p in model.parameters())
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        forward_seconds = timed(closure, device)
        forward_peak = torch.cuda.max_memory_allocated(device) if cuda else 0
        scales = [1.0] * len(optimizer.param_groups[0]["params"])
        pass_seconds = timed(
            lambda: optimizer.engine.perturb(12345, 0.0, scales), device
        )  # one pass, weights unchanged
        losses, step_times = [], []
        for _ in range(args.steps):
            step_times.append(timed(lambda: losses.append(float(optimizer.step(closure).loss)), device, repeats=1))
    peak = torch.cuda.max_memory_allocated(device) if cuda else 0
    steady = sorted(step_times[1:] or step_times)[len(step_times[1:] or step_times) // 2]
    report = {
        "shape": args.shape,
        "dtype": args.dtype,
        "world": world,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "batch": [args.batch, args.seq],
        "build_seconds": round(build_seconds, 2),
        "step_seconds": round(steady, 4),
        "forward_seconds": round(forward_seconds, 4),
        "pass_seconds": round(pass_seconds, 4),
        "step_over_parts": round(steady / (2 * forward_seconds + 3 * pass_seconds), 3),
        "local_weight_gib": round(weight_bytes / 2**30, 3),
        "largest_gathered_layer_gib": round(largest_layer_bytes(model) / 2**30, 3),
        "forward_peak_gib": round(forward_peak / 2**30, 3),
        "peak_gib": round(peak / 2**30, 3),
        "peak_over_forward_peak": round(peak / forward_peak, 3) if forward_peak else None,
        "losses": [round(x, 5) for x in losses],
    }
    if rank == 0:
        print(json.dumps(report), flush=True)
    if distributed:
        dist.barrier()
        if dist.get_backend() == "gloo":  # its teardown can abort an exit after the work is done (SIGABRT)
            sys.stdout.flush()
            os._exit(0)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
