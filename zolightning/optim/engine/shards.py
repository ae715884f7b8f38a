"""The part of a parameter this process holds, and where it starts in the full tensor.

Under FSDP2 (`fully_shard`) every parameter is a DTensor sharded on dim 0 over a 1-D mesh, split as
`torch.chunk` splits: ceil(rows / N) rows per rank, the last ranks holding fewer (or none). Counter-based noise
makes a sharded ZO step exact: element j of tensor k gets z = f(seed, k, j) whichever process holds it, so each
rank perturbs and updates its rows with the z the unsharded model would get, given the flat index of its first
element.

Every forward must all-gather the current shards: FSDP2 keeps the *root* module's parameters unsharded after a
forward unless told otherwise (it expects a backward next), and a ZO step would then score stale weights. Shard
the root with `fully_shard(model, reshard_after_forward=True)` (tests/scripts/sharded_zo.py does).
The fused pass takes the offsets (multiples of 4; others take the PyTorch reference pass). Learned block variance
works sharded: each block's (sum, sum of squares) is added across the shard group (`shard_group`), so every rank
feeds the replicated networks the full tensors' statistics.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # torch built without distributed support: nothing is ever sharded
    DTensor = Replicate = Shard = None


def is_sharded(p: Tensor) -> bool:
    return DTensor is not None and isinstance(p, DTensor)


def local_shard(p: Tensor) -> tuple[Tensor, int]:
    """(the local tensor, the flat index of its first element in the full tensor); plain tensors: (p, 0).

    Placements: one Shard(0) (FSDP2), optionally beside Replicate ones (HSDP: replicated across nodes)."""
    if not is_sharded(p):
        return p, 0
    sharded = [i for i, pl in enumerate(p.placements) if not isinstance(pl, Replicate)]
    if not sharded:
        return p.to_local(), 0
    if len(sharded) != 1 or not (isinstance(p.placements[sharded[0]], Shard) and p.placements[sharded[0]].dim == 0):
        raise ValueError(f"sharded ZO supports dim-0 sharding over one mesh dimension (FSDP2), got {p.placements}")
    world, rank = p.device_mesh.size(sharded[0]), p.device_mesh.get_local_rank(sharded[0])
    rows = p.shape[0]
    first_row = min(rank * math.ceil(rows / world), rows)
    return p.to_local(), first_row * (p.numel() // rows if rows else 0)


def shard_group(p: Tensor):
    """The process group p's rows are spread over (None for a plain or fully replicated tensor)."""
    if not is_sharded(p):
        return None
    sharded = [i for i, pl in enumerate(p.placements) if not isinstance(pl, Replicate)]
    return p.device_mesh.get_group(sharded[0]) if sharded else None


def shard_model(model: nn.Module, mesh) -> None:
    """FSDP2 over `mesh` (1-D: sharded; 2-D: replicated over the first dimension, sharded over the second):
    each decoder layer is a unit, so are untied input embeddings and LM head (each gathered only while it computes,
    not through the whole forward as the root's weights are), the root holds the rest; every forward gathers the
    current shards."""
    from torch.distributed.fsdp import fully_shard

    trunk = getattr(model, getattr(model, "base_model_prefix", ""), model)
    for layer in getattr(trunk, "layers", []):
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    for unit in separate_embeddings(model):
        fully_shard(unit, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)


def separate_embeddings(model: nn.Module) -> list[nn.Module]:
    """The input embedding and the LM head when they share no weight (tied ones stay with the root)."""
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    units = [get() for get in (get_in, get_out) if get is not None]
    units = [unit for unit in units if unit is not None and not isinstance(unit, nn.ModuleList)]
    if len(units) == 2 and units[0].weight is units[1].weight:
        return []
    return units
