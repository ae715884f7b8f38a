"""Sharded ZO at scale without model files: Llama shapes with random weights, built on the meta device and
materialised shard by shard (FSDP2), then timed ZO steps (issue #13).

    torchrun --nproc_per_node 2 -m benchmarks.sharded_scale --shape 8b --steps 10      # sharded over 2 GPUs
    python -m benchmarks.sharded_scale --shape 8b --steps 10                            # one GPU, unsharded
    torchrun --nproc_per_node 2 -m benchmarks.sharded_scale --shape tiny --steps 2      # CPU (gloo) check
    python -m benchmarks.sharded_scale --shape 70b --fake-world 8 --steps 2 --seq 512   # rank 0 of 8, on one GPU

`--fake-world N`: torch.distributed's fake process group stands for N ranks: this process is rank 0, holds a
1/N shard and computes what rank 0 computes, while collectives do nothing (the gathered layers hold garbage, so
the losses mean nothing and steps may be skipped as non-finite). Memory and compute per rank are real; the
all-gather time is not there, and is added on paper (`--link-gbps`, NVLink's per-GPU bandwidth) as an estimate.
Beside the peak it prints the formula: this rank's weights + the largest gathered layer + activations (the peak
of a one-layer model of the same widths on the same batch, minus its weights, measured first).

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
    "smollm2": (576, 1536, 30, 9, 3, 49152, True),  # SmolLM2-135M
    "1b": (2048, 8192, 16, 32, 8, 128256, True),  # Llama-3.2-1B
    "8b": (4096, 14336, 32, 32, 8, 128256, False),  # Llama-3-8B
    "13b": (5120, 13824, 40, 40, 40, 32000, False),  # Llama-2-13B
    "32b": (5120, 27648, 64, 40, 8, 152064, False),  # Qwen2.5-32B's widths in a Llama block (no q/k/v bias)
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


def fake_group(args, device: torch.device) -> dict:
    """Measure the activations first (a one-layer model, no group), then start the fake group of N ranks."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    activations = activation_bytes(args.shape, getattr(torch, args.dtype), args.batch, args.seq, device)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=args.fake_world)
    return {"fake_world": args.fake_world, "activations_gib": round(activations / 2**30, 3)}


def activation_bytes(shape: str, dtype: torch.dtype, batch: int, seq: int, device: torch.device) -> int:
    """Peak of a scoring forward of a one-layer model of the shape's widths, minus its weights."""
    config = config_for(shape)
    config.num_hidden_layers = 1
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)
    model.to_empty(device=device)
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    if device.type != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    peak = torch.cuda.max_memory_allocated(device) - start  # the weights were allocated before `start`
    del model, logits
    torch.cuda.empty_cache()
    return peak


def fake_group_formula(report: dict, model, args) -> dict:
    """The per-rank formula beside the measured peak, and the all-gather time of a step on paper."""
    formula = report["local_weight_gib"] + report["largest_gathered_layer_gib"] + report["activations_gib"]
    full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    gathered = full_bytes * (args.fake_world - 1) / args.fake_world  # what a rank receives per forward
    gather_seconds = 2 * gathered / (args.link_gbps * 1e9)  # two forwards a step
    return {
        "formula_gib": round(formula, 3),
        "peak_over_formula": round(report["peak_gib"] / formula, 3) if report["peak_gib"] else None,
        "all_gather_seconds_estimate": round(gather_seconds, 4),
        "step_seconds_with_all_gather_estimate": round(report["step_seconds"] + gather_seconds, 4),
    }


def largest_layer_bytes(model: LlamaForCausalLM) -> int:
    """The biggest all-gather of a forward: one decoder layer or the root's own weights (embedding, head)."""
    layers = [sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in model.model.layers]
    in_layers = {id(p) for layer in model.model.layers for p in layer.parameters()}
    root = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in in_layers)
    return max(layers + [root])


def synced(fn, device: torch.device) -> float:
    """Seconds `fn` takes, the GPU's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def timed(fn, device: torch.device, repeats: int = 3) -> float:
    times = sorted(synced(fn, device) for _ in range(repeats))
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--fake-world", type=int, default=0, help="stand for rank 0 of this many (fake group)")
    parser.add_argument("--link-gbps", type=float, default=450.0, help="per-GPU all-gather bandwidth (estimate)")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    extra = {}
    if args.fake_world:
        extra = fake_group(args, torch.device("cuda" if cuda else "cpu"))
    distributed = "WORLD_SIZE" in os.environ or bool(args.fake_world)
    if distributed and not args.fake_world:
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
        **extra,
    }
    if args.fake_world:
        report |= fake_group_formula(report, model, args)
    if rank == 0:
        print(json.dumps(report), flush=True)
    if distributed:
        dist.barrier()
        if dist.get_backend() in ("gloo", "fake"):  # its teardown can abort an exit after the work is done (SIGABRT)
            sys.stdout.flush()
            os._exit(0)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
