"""Offloaded ZO (`zo_offload`) at scale: random-weight Llama shapes in pinned host memory, streamed to one GPU.

    python -m benchmarks.offload_scale --shape 8b --batch 16 --seq 512 --steps 4 --resident
    python -m benchmarks.offload_scale --shape 32b --batch 16 --seq 512 --steps 3
    python -m benchmarks.offload_scale --shape tiny --steps 2          # CPU: the code path, no timing meaning

Prints one JSON line: the offloaded step time and tokens/s; the physical limits measured in the same run (a
pinned-copy probe's host-to-device and device-to-host bandwidth, up and down alone and at once, and with
`--resident` the two forwards' compute with every weight on the GPU, plus the resident ZO step itself); GPU peak
memory of the offloaded steps and the process's host memory beside the weight bytes; the losses of each step.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn
from transformers import LlamaForCausalLM

from benchmarks.sharded_scale import SHAPES, config_for, synced
from zolightning.forward.scoring import batch_loss, branch_objectives
from zolightning.offload.optimizer import StreamedZOOptimizer
from zolightning.offload.streamer import BlockStreamer
from zolightning.offload.units import find_units, uninstall
from zolightning.optim import ZOSGD, ZOOptimizer


def build_on_host(shape: str, dtype: torch.dtype, device: torch.device) -> LlamaForCausalLM:
    """A meta-device model whose weights are drawn on `device` tensor by tensor into ordinary host memory (host peak:
    the weights; `BlockStreamer.to_host` then moves them unit by unit into exact-sized page-locked buffers, as it
    does a user's model), N(0, 0.02), unit norms; its rotary tables on `device`."""
    config = config_for(shape)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                host = torch.empty(p.shape, dtype=dtype)
                if "norm" in type(module).__name__.lower():
                    host.fill_(1.0)
                else:
                    host.copy_(torch.randn(p.shape, generator=generator, device=device).mul_(0.02))
                setattr(module, name, nn.Parameter(host, requires_grad=False))
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        with torch.device(device):
            model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    return model.eval()


def lm_batch(vocab: int, batch: int, seq: int, answer: int, device: torch.device, seed: int = 1) -> dict:
    """Random token rows scored on their last `answer` tokens (an LM batch in `encoding.collate`'s layout)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=generator)
    rows = torch.arange(batch).repeat_interleave(answer)
    cols = torch.arange(seq - answer - 1, seq - 1).repeat(batch)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pred_rows": rows, "pred_cols": cols,
           "pred_tokens": ids[rows, cols + 1]}  # fmt: skip
    return {"kind": "lm", **{k: v.to(device) for k, v in out.items()}}


def pcie_probe(device: torch.device, gib: float = 1.0) -> dict:
    """GB/s of pinned host <-> device copies: up alone, down alone, and up and down at once on two streams."""
    if device.type != "cuda":
        return {}
    numel = int(gib * 2**30)
    host_up, host_down = (torch.empty(numel, dtype=torch.uint8, pin_memory=True) for _ in range(2))
    gpu_up, gpu_down = (torch.empty(numel, dtype=torch.uint8, device=device) for _ in range(2))
    up_stream, down_stream = torch.cuda.Stream(device), torch.cuda.Stream(device)

    def both():
        with torch.cuda.stream(up_stream):
            gpu_up.copy_(host_up, non_blocking=True)
        with torch.cuda.stream(down_stream):
            host_down.copy_(gpu_down, non_blocking=True)

    for _ in range(2):  # warm
        gpu_up.copy_(host_up)
    up = min(synced(lambda: gpu_up.copy_(host_up, non_blocking=True), device) for _ in range(3))
    down = min(synced(lambda: host_down.copy_(gpu_down, non_blocking=True), device) for _ in range(3))
    duplex = min(synced(both, device) for _ in range(3))
    size = numel / 1e9
    return {"h2d_gbps": round(size / up, 2), "d2h_gbps": round(size / down, 2),
            "duplex_gbps_each_way": round(size / duplex, 2)}  # fmt: skip


def pinned_rounding(shape: str, dtype: torch.dtype) -> dict:
    """The shape's weight bytes beside what they take when each tensor is pinned by torch's allocator, which rounds
    every block up to a power of two (why the streamer has its own `HostArena`). Built on the meta device."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config_for(shape)).to(dtype)
    sizes = [p.numel() * p.element_size() for p in model.parameters()]  # a tied tensor is listed once
    exact, rounded = sum(sizes), sum(1 << (n - 1).bit_length() for n in sizes)
    return {"shape": shape, "weight_gib": round(exact / 2**30, 3), "power_of_two_pinned_gib": round(rounded / 2**30, 3),
            "ratio": round(rounded / exact, 3)}  # fmt: skip


def host_rss_gib() -> float:
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    return kib / 2**20


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def offloaded(model, batch, device, steps: int, prefetch: int) -> tuple[dict, StreamedZOOptimizer]:
    streamer = BlockStreamer(find_units(model), device, prefetch)
    streamer.place(model)
    streamer.install()
    params = list(model.parameters())
    optimizer = StreamedZOOptimizer(params, ZOSGD(), streamer=streamer, lr=1e-6, eps=1e-3, noise="philox")
    losses, times = [], []
    with torch.no_grad():
        for step in range(steps + 1):  # step 0 learns the order units are entered in: not timed
            if step == 1 and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = synced(lambda: losses.append(optimizer.step(lambda: branch_objectives(model, batch)).loss),
                             device)  # fmt: skip
            times.append(seconds)
        optimizer.flush()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    report = {"offload_step_seconds": round(median(times[1:]), 4), "offload_first_step_seconds": round(times[0], 3),
              "offload_gpu_peak_gib": round(peak, 3), "host_rss_gib": round(host_rss_gib(), 2),
              "offload_losses": [round(x, 5) for x in losses]}  # fmt: skip
    if streamer.streams:  # the page-locked bytes the streamer holds (weights, alignment, rule state)
        report["host_arena_gib"] = round(streamer.arena.nbytes / 2**30, 3)
    uninstall(streamer.units)
    return report, optimizer


def resident(model, batch, device, steps: int) -> dict:
    """Every weight on the GPU: the two forwards alone, then the resident ZO step (fused philox passes)."""
    for p in model.parameters():
        p.data = p.data.to(device)
    optimizer = ZOOptimizer(list(model.parameters()), ZOSGD(), lr=1e-6, eps=1e-3, noise="philox")
    with torch.no_grad():
        synced(lambda: batch_loss(model, batch), device)  # warm
        forwards = median([synced(lambda: [batch_loss(model, batch) for _ in range(2)], device) for _ in range(3)])
        times = [synced(lambda: optimizer.step(lambda: batch_loss(model, batch)[0]), device) for _ in range(steps + 1)]
    return {"resident_two_forwards_seconds": round(forwards, 4), "resident_step_seconds": round(median(times[1:]), 4),
            "resident_fused": optimizer.fused}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--answer", type=int, default=32, help="scored tokens at the end of each row")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--resident", action="store_true", help="also time the model with every weight on the GPU")
    parser.add_argument(
        "--pinned-rounding",
        action="store_true",
        help="only print the weights' bytes and what torch's pinned allocator would take (no GPU)",
    )
    args = parser.parse_args()
    if args.pinned_rounding:
        print(json.dumps(pinned_rounding(args.shape, getattr(torch, args.dtype))))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    report = {"shape": args.shape, "dtype": args.dtype, "batch": [args.batch, args.seq], "prefetch": args.prefetch,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}  # fmt: skip
    report["host_rss_before_gib"] = round(host_rss_gib(), 2)  # the process before any weight: libraries, CUDA
    start = time.perf_counter()
    model = build_on_host(args.shape, dtype, device)
    report["build_seconds"] = round(time.perf_counter() - start, 1)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    report["weight_gib"] = round(weight_bytes / 2**30, 3)
    batch = lm_batch(model.config.vocab_size, args.batch, args.seq, args.answer, device)
    measured, _ = offloaded(model, batch, device, args.steps, args.prefetch)
    report |= measured
    grown = (report["host_rss_gib"] - report["host_rss_before_gib"]) * 2**30  # what the weights and steps added
    report["host_rss_over_weights"] = round(grown / weight_bytes, 3)
    report |= pcie_probe(device)  # after the offloaded steps: its pinned buffers stay cached in the process
    tokens = args.batch * args.seq
    report["offload_tokens_per_sec"] = round(tokens / report["offload_step_seconds"], 1)
    if "h2d_gbps" in report:  # the weight bytes up and back, at the probe's bandwidths: one way after the other
        report["pcie_seconds"] = round(weight_bytes / 1e9 / report["h2d_gbps"] + weight_bytes / 1e9 /
                                       report["d2h_gbps"], 4)  # fmt: skip
        report["pcie_duplex_seconds"] = round(weight_bytes / 1e9 / report["duplex_gbps_each_way"], 4)
    print(json.dumps(report), flush=True)  # the offloaded half survives a resident run that does not fit
    if args.resident:
        report |= resident(model, batch, device, args.steps)
        report["resident_tokens_per_sec"] = round(tokens / report["resident_step_seconds"], 1)
        report["offload_over_resident"] = round(report["offload_step_seconds"] / report["resident_step_seconds"], 3)
        if "pcie_seconds" in report:
            bound = max(report["pcie_seconds"], report["resident_two_forwards_seconds"])
            report["offload_over_limit"] = round(report["offload_step_seconds"] / bound, 3)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
