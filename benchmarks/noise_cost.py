"""Where the fused pass's time goes: variants of its noise on Llama-1B-sized bf16 weights (CUDA + Triton).

    python -m benchmarks.noise_cost

Each variant is the pass of `zolightning/optim/fused.py` (pointer table, one read and one write per weight)
with its noise changed: fewer Philox rounds, another uniform conversion, no Box-Muller, no Philox, two
steps' noise in one pass (what a two-pass step schedule needs), two steps sharing one Philox call with
16-bit uniforms. Only the shipped variant ("10 rounds, fast") is the library's noise; the others measure
what the alternatives would buy (docs/benchmarks.md).
"""

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

import zolightning.optim.kernels.fused as f
from zolightning.optim.kernels.fused import box_muller_jit, philox_jit, uniform_jit


@triton.jit
def _unif(x, BITS: tl.constexpr):
    if BITS:  # 23-bit uniforms by a bit trick (no int -> float conversion), exact by Sterbenz
        return ((x >> 9) | 0x3F800000).to(tl.float32, bitcast=True) - 0.99999994039535522
    else:
        return uniform_jit(x)


@triton.jit
def _bm(u0, u1, BM: tl.constexpr):
    if BM:
        return box_muller_jit(u0, u1, True)
    else:
        return u0 * 2.0 - 1.0, u1 * 2.0 - 1.0


@triton.jit
def _z4(k0, k1, q, key, ROUNDS: tl.constexpr, BITS: tl.constexpr, BM: tl.constexpr):
    c0 = (q & 0xFFFFFFFF).to(tl.uint32)
    c1 = (q >> 32).to(tl.uint32)
    c2 = tl.zeros_like(c0) + key
    if ROUNDS > 0:
        x0, x1, x2, x3 = philox_jit(k0, k1, c0, c1, c2, tl.zeros_like(c0), ROUNDS)
    else:  # a cheap hash instead (cost of Box-Muller alone)
        x0 = c0 * 0x9E3779B9 ^ k0
        x1 = c0 * 0x85EBCA6B ^ k1
        x2 = c0 * 0xC2B2AE35 ^ c2
        x3 = c0 * 0x27D4EB2F ^ k0
    n0, n1 = _bm(_unif(x0, BITS), _unif(x1, BITS), BM)
    n2, n3 = _bm(_unif(x2, BITS), _unif(x3, BITS), BM)
    return n0, n1, n2, n3


@triton.jit
def _unif16(x, hi: tl.constexpr):
    if hi:
        return ((x >> 16) | 0).to(tl.float32) * (1.0 / 65536.0) + (0.5 / 65536.0)
    else:
        return (x & 0xFFFF).to(tl.float32) * (1.0 / 65536.0) + (0.5 / 65536.0)


@triton.jit
def lab_kernel(
    pointers,
    program_tensor,
    program_start,
    numels,
    keys,
    pre,
    alpha,
    post,
    seed_lo,
    seed_hi,
    DTYPE: tl.constexpr,
    ROUNDS: tl.constexpr,
    BITS: tl.constexpr,
    BM: tl.constexpr,
    TWO: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(program_tensor + pid)
    start = tl.load(program_start + pid)
    n = tl.load(numels + t)
    weights = tl.load(pointers + t).to(tl.pointer_type(DTYPE))
    key = tl.load(keys + t).to(tl.uint32)
    k0 = seed_lo.to(tl.uint32)
    k1 = seed_hi.to(tl.uint32)
    q = start // 4 + tl.arange(0, BLOCK // 4).to(tl.int64)
    offsets = start + tl.arange(0, BLOCK).to(tl.int64)
    inside = offsets < n
    w = tl.load(weights + offsets, mask=inside, other=0.0).to(tl.float32)
    if TWO == 3:  # paired steps: one Philox call, 16-bit uniforms, 4 normals for each of two steps
        c0 = (q & 0xFFFFFFFF).to(tl.uint32)
        c1 = (q >> 32).to(tl.uint32)
        c2 = tl.zeros_like(c0) + key
        x0, x1, x2, x3 = philox_jit(k0, k1, c0, c1, c2, tl.zeros_like(c0), ROUNDS)
        a0, a1 = _bm(_unif16(x0, 0), _unif16(x1, 0), BM)
        a2, a3 = _bm(_unif16(x2, 0), _unif16(x3, 0), BM)
        b0, b1 = _bm(_unif16(x0, 1), _unif16(x1, 1), BM)
        b2, b3 = _bm(_unif16(x2, 1), _unif16(x3, 1), BM)
        z = tl.interleave(tl.interleave(a0, a2), tl.interleave(a1, a3))
        z2 = tl.interleave(tl.interleave(b0, b2), tl.interleave(b1, b3))
        base = (w - tl.load(pre + t) * z).to(DTYPE).to(tl.float32)
        value = (base + tl.load(alpha + t) * z).to(DTYPE)
        value = (value.to(tl.float32) + tl.load(post + t) * z2).to(DTYPE)
    else:
        n0, n1, n2, n3 = _z4(k0, k1, q, key, ROUNDS, BITS, BM)
        z = tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))
        base = (w - tl.load(pre + t) * z).to(DTYPE).to(tl.float32)
        value = (base + tl.load(alpha + t) * z).to(DTYPE)
        if TWO:
            m0, m1, m2, m3 = _z4(k0 + 1, k1, q, key, ROUNDS, BITS, BM)
            z2 = tl.interleave(tl.interleave(m0, m2), tl.interleave(m1, m3))
            value = (value.to(tl.float32) + tl.load(post + t) * z2).to(DTYPE)
    tl.store(weights + offsets, value, mask=inside)


def copy_time_ms() -> float:
    """Time of torch's copy of a 1 GiB buffer (2 GiB of traffic)."""
    source = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    return do_bench(lambda: target.copy_(source), rep=150)


VARIANTS = [  # name, Philox rounds (0: a cheap hash), 23-bit uniform trick, Box-Muller, noises per pass (3: paired)
    ("10 rounds, fast (shipped)", 10, 0, 1, 0), ("7 rounds", 7, 0, 1, 0), ("bit-trick uniforms", 10, 1, 1, 0),
    ("7 rounds + bit trick", 7, 1, 1, 0), ("no Box-Muller", 10, 0, 0, 0), ("no Philox", 0, 0, 1, 0),
    ("neither (a hash: ~memory only)", 0, 0, 0, 0),
    ("two steps' z", 10, 0, 1, 1), ("two steps' z, 7 rounds + bits", 7, 1, 1, 1),
    ("two steps, one Philox, 16-bit", 10, 0, 1, 3), ("two steps, one Philox, 16-bit, 7r", 7, 0, 1, 3),
]  # fmt: skip


def main():
    torch.manual_seed(0)
    sizes = [128256 * 2048] + [2048 * 2048, 512 * 2048, 512 * 2048, 2048 * 2048] * 16 + [2048 * 8192] * 48
    params = [torch.randn(n, device="cuda", dtype=torch.bfloat16) for n in sizes]
    total = sum(sizes)
    keys = list(range(len(params)))
    zeros = torch.zeros(len(params), device="cuda")
    small = torch.full((len(params),), 1e-3, device="cuda")
    copy_ms = copy_time_ms() * 4 * total / 2**31
    print(f"{total / 1e9:.2f}G bf16 weights, {torch.cuda.get_device_name()}; one pass at copy speed: {copy_ms:.3f} ms")
    print("| variant | BLOCK, warps | ms per pass | GB/s |\n|---|---|---|---|")
    for block, warps in ((2048, 8), (1024, 4)):
        f.BLOCK = block
        f._plans.clear()
        p = f.plan_for(params, keys)[torch.bfloat16]
        for name, rounds, bits, bm, two in VARIANTS:

            def run(p=p, rounds=rounds, bits=bits, bm=bm, two=two, block=block, warps=warps):
                lab_kernel[(p.programs,)](
                    p.pointers, p.program_tensor, p.program_start, p.numels, p.keys, zeros, small, small, 12345, 0,
                    DTYPE=tl.bfloat16, ROUNDS=rounds, BITS=bits, BM=bm, TWO=two, BLOCK=block, num_warps=warps,
                )  # fmt: skip

            ms = do_bench(run, rep=150)
            print(f"| {name} | {block}, {warps} | {ms:.3f} | {4 * total / (ms * 1e-3) / 1e9:.0f} |")


if __name__ == "__main__":
    main()
