"""The shaped directions' passes (HiZOO's √Σ ⊙ z, LOZO's U Vᵀ) as one Triton launch per dtype over every weight.

The tensor-by-tensor path of `shaped.py` draws each tensor's direction into a buffer and adds it: a few launches
per tensor per pass, several hundred per SmolLM2 step, which on the compiled forward cost 10-36 × MeZO's step
(docs/runs/optimizer_family_h100_fast.md). Here each pass is the perturbation pass of `fused.py` with another
direction D:

    base = round(w − pre·D_old)        the weight with its current perturbation removed
    w ← mult·base + alpha·D_new

- HiZOO: D = √Σ ⊙ z with Σ read per element (float32). The update pass also refreshes Σ in place,
  Σ ← min((1 − α) Σ + α·c·z²/Σ, Σ_max), and moves along the refreshed D_new; the other passes have D_new = D_old.
- LOZO: D = U Vᵀ for matrices (row r, column c of the (shape[0], rest) view: Σ_k U[r, k] V[c, k]), z for the
  others. U and V are drawn beforehand into flat float32 buffers (`fill_normals`), as `shaped.py` draws them.

z is the one noise definition of `fused.py` (same seed, tensor key and element index), so both paths move along
the same directions; in float32 they agree to rounding, in bf16 this path recovers θ exactly where the other
accumulates a rounding per pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from zolightning.optim.kernels import fused
from zolightning.optim.kernels.fused_rules import addresses
from zolightning.optim.kernels.philox import ROUNDS

HIZOO, LOWRANK = 0, 1
PER_TENSOR = ("sigmas", "us", "vs", "columns", "lowrank")


def usable(params: Sequence[Tensor]) -> bool:
    """Whether these passes can run on these weights (those of the fused perturbation pass)."""
    return fused.usable(params)


if fused.triton is not None:
    import triton
    import triton.language as tl

    from zolightning.optim.kernels.fused import narrow, normals, program_block

    @triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
    def _shaped_kernel(
        pointers, program_tensor, program_start, numels, keys, sigmas, us, vs, columns, lowrank,
        pre, alpha, mult, refresh, seed_lo, seed_hi,
        DTYPE: tl.constexpr, MODE: tl.constexpr, UPDATE: tl.constexpr, RANK: tl.constexpr, BLOCK: tl.constexpr,
        FAST: tl.constexpr, ROUNDS: tl.constexpr, BY_BITS: tl.constexpr,
    ):  # fmt: skip
        t, start, weights, offsets, inside = program_block(
            pointers, program_tensor, program_start, numels, DTYPE, BLOCK
        )
        q = start // 4 + tl.arange(0, BLOCK // 4).to(tl.int64)
        key = tl.load(keys + t).to(tl.uint32)
        if MODE == 0:  # HiZOO
            z = normals(seed_lo.to(tl.uint32), seed_hi.to(tl.uint32), q, key, FAST, ROUNDS)
            sigma_at = tl.load(sigmas + t).to(tl.pointer_type(tl.float32)) + offsets
            sigma = tl.load(sigma_at, mask=inside, other=1.0)
            old = tl.sqrt(sigma) * z
            new = old
            if UPDATE:  # refresh = (α, curvature c, Σ_max); α = 0 leaves Σ as it was (a skipped step)
                smooth = tl.load(refresh)
                estimate = z * z / sigma * tl.load(refresh + 1)
                sigma = tl.minimum(sigma * (1.0 - smooth) + estimate * smooth, tl.load(refresh + 2))
                tl.store(sigma_at, sigma, mask=inside)
                new = tl.sqrt(sigma) * z
        else:  # LOZO
            if tl.load(lowrank + t) != 0:
                # one 64-bit division per program; per element a 32-bit one (a 64-bit division is a long
                # software routine on the GPU, and ran on every element of every pass)
                width = tl.load(columns + t)
                first_row = start // width
                local = (start - first_row * width).to(tl.int32) + tl.arange(0, BLOCK)
                width32 = width.to(tl.int32)
                below = local // width32
                column = local - below * width32
                row = first_row + below
                u = tl.load(us + t).to(tl.pointer_type(tl.float32))
                v = tl.load(vs + t).to(tl.pointer_type(tl.float32))
                old = tl.zeros([BLOCK], dtype=tl.float32)
                for k in tl.static_range(RANK):
                    u_k = tl.load(u + row * RANK + k, mask=inside, other=0.0)
                    old += u_k * tl.load(v + column * RANK + k, mask=inside, other=0.0)
            else:
                old = normals(seed_lo.to(tl.uint32), seed_hi.to(tl.uint32), q, key, FAST, ROUNDS)
            new = old
        w = tl.load(weights + offsets, mask=inside, other=0.0).to(tl.float32)
        base = narrow(w - tl.load(pre + t) * old, DTYPE, BY_BITS).to(tl.float32)
        value = tl.load(mult + t) * base + tl.load(alpha + t) * new
        tl.store(weights + offsets, narrow(value, DTYPE, BY_BITS), mask=inside)


def _launch(params, seed: int, pre, alpha, mult, mode: int, tables: dict, update: bool = False) -> None:
    keys = list(range(len(params)))
    for dtype, plan in fused.plan_for(params, keys, ()).items():
        chosen = [i for i, p in enumerate(params) if p.dtype == dtype]
        whole = len(chosen) == len(params)
        per_tensor = [v if whole else v.index_select(0, plan.index) for v in (pre, alpha, mult)]
        picked = {  # the per-tensor tables, this dtype's rows
            name: table if whole else table.index_select(0, plan.index)
            for name, table in tables.items()
            if name in PER_TENSOR
        }
        _shaped_kernel[(plan.programs,)](
            plan.pointers, plan.program_tensor, plan.program_start, plan.numels, plan.keys,
            picked.get("sigmas", plan.pointers), picked.get("us", plan.pointers), picked.get("vs", plan.pointers),
            picked.get("columns", plan.numels), picked.get("lowrank", plan.numels),
            *(v.float().contiguous() for v in per_tensor), tables.get("refresh", pre),
            seed & 0xFFFFFFFF, seed >> 32,
            DTYPE=fused.TL_DTYPES[dtype], MODE=mode, UPDATE=update, RANK=tables.get("rank", 1), BLOCK=fused.BLOCK,
            FAST=not fused.INTERPRET, ROUNDS=ROUNDS, BY_BITS=fused.by_bits(dtype), num_warps=8,
        )  # fmt: skip


def hizoo_pass(
    params: Sequence[Tensor],
    sigmas: Sequence[Tensor],
    seed: int,
    pre: Tensor,
    alpha: Tensor,
    mult: Tensor,
    refresh: Tensor | None = None,
) -> None:
    """In place: tensor i <- mult_i round(w − pre_i √Σ_i z_i) + alpha_i √Σ'_i z_i; with `refresh` (float32
    [α, c, Σ_max] on the device) Σ' is Σ refreshed in place, else Σ' = Σ. Σ_i: float32, shaped like tensor i."""
    tables = {"sigmas": addresses(sigmas, pre.device)}
    if refresh is not None:
        tables["refresh"] = refresh.float().contiguous()
    _launch(params, seed, pre, alpha, mult, HIZOO, tables, update=refresh is not None)


class LowRankTables:
    """Where each tensor's U and V live: views of two flat float32 buffers, made once (their launch tables are
    cached by the views' identity). Tensors of fewer than 2 dimensions get no factors (they move along z)."""

    def __init__(self, params: Sequence[Tensor], rank: int):
        device = params[0].device
        self.rank = rank
        self.matrices = [i for i, p in enumerate(params) if p.dim() >= 2]
        self.vectors = [i for i, p in enumerate(params) if p.dim() < 2]
        self.vector_index = torch.tensor(self.vectors, dtype=torch.int64, device=device)
        self.is_matrix = torch.tensor([float(p.dim() >= 2) for p in params], device=device)
        rows = [params[i].shape[0] for i in self.matrices]
        columns = [params[i].numel() // params[i].shape[0] for i in self.matrices]
        self.u_flat = torch.zeros(sum(rows) * rank, device=device)
        self.v_flat = torch.zeros(sum(columns) * rank, device=device)
        self.u = _views(self.u_flat, [(m, rank) for m in rows])
        self.v = _views(self.v_flat, [(c, rank) for c in columns])
        width, flags = [1] * len(params), [0] * len(params)
        u_at, v_at = [p.data_ptr() for p in params], [p.data_ptr() for p in params]  # unused for vectors
        for i, c, u, v in zip(self.matrices, columns, self.u, self.v):
            width[i], flags[i], u_at[i], v_at[i] = c, 1, u.data_ptr(), v.data_ptr()
        self._zeros, self._ones = torch.zeros(len(rows), device=device), torch.ones(len(rows), device=device)
        self.tables = {
            "us": torch.tensor(u_at, dtype=torch.int64, device=device),
            "vs": torch.tensor(v_at, dtype=torch.int64, device=device),
            "columns": torch.tensor(width, dtype=torch.int64, device=device),
            "lowrank": torch.tensor(flags, dtype=torch.int64, device=device),
            "rank": rank,
        }

    def fill(self, factors: list[Tensor], seed: int) -> None:
        """Draw `factors` (self.u or self.v) from `seed`: factor i gets the normals of tensor key matrices[i]."""
        fused.shift(factors, self.matrices, seed, self._zeros, self._ones, self._zeros)  # mult 0: w <- z


def _views(flat: Tensor, shapes: list[tuple[int, int]]) -> list[Tensor]:
    out, start = [], 0
    for m, r in shapes:
        out.append(flat[start : start + m * r].view(m, r))
        start += m * r
    return out


def lowrank_pass(
    params: Sequence[Tensor], factors: LowRankTables, seed: int, pre: Tensor, alpha: Tensor, mult: Tensor
) -> None:
    """In place: tensor i <- mult_i round(w − pre_i D_i) + alpha_i D_i, D_i = U_i V_iᵀ (matrices, from the factor
    buffers as filled) or z_i (from `seed`)."""
    _launch(params, seed, pre, alpha, mult, LOWRANK, factors.tables)
