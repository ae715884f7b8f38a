"""The part of a parameter this process holds, and where it starts in the full tensor.

Under FSDP2 (`fully_shard`) every parameter is a DTensor sharded on dim 0 over a 1-D mesh, split as
`torch.chunk` splits: ceil(rows / N) rows per rank, the last ranks holding fewer (or none). Counter-based noise
makes a sharded ZO step exact: element j of tensor k gets z = f(seed, k, j) whichever process holds it, so each
rank perturbs and updates its rows with the z the unsharded model would get, given the flat index of its first
element.

Every forward must all-gather the current shards: FSDP2 keeps the *root* module's parameters unsharded after a
forward unless told otherwise (it expects a backward next), and a ZO step would then score stale weights. Shard
the root with `fully_shard(model, reshard_after_forward=True)` (tests/scripts/sharded_zo.py does).
Not yet: the fused kernel with offsets (shards take the PyTorch reference pass), learned block variance (its
block statistics need a reduction across ranks), the Lightning strategy (issue #13).
"""

from __future__ import annotations

import math

from torch import Tensor


def is_sharded(p: Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(p, DTensor)


def local_shard(p: Tensor) -> tuple[Tensor, int]:
    """(the local tensor, the flat index of its first element in the full tensor); plain tensors: (p, 0)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(p, DTensor):
        return p, 0
    placements = p.placements
    if all(isinstance(pl, Replicate) for pl in placements):
        return p.to_local(), 0
    if len(placements) != 1 or not (isinstance(placements[0], Shard) and placements[0].dim == 0):
        raise ValueError(f"sharded ZO supports dim-0 sharding on a 1-D mesh (FSDP2), got placements {placements}")
    world, rank = p.device_mesh.size(0), p.device_mesh.get_local_rank(0)
    rows = p.shape[0]
    first_row = min(rank * math.ceil(rows / world), rows)
    return p.to_local(), first_row * (p.numel() // rows if rows else 0)
