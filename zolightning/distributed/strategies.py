"""Data-parallel training for forward-only (ZO) optimizers.

Lightning's `ddp` wraps the model in torch DDP, which allocates gradient buckets the size of the
model (a second copy of it, for a method sold on memory) that a ZO model never fills. ZO data
parallelism needs only: the process group, a data shard per rank, identical starting weights, and the
loss averaged across ranks inside the closure. This strategy keeps all of DDPStrategy except the
wrapper (Lightning's documented extension point, `configure_ddp`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, StrategyRegistry

from zolightning.checkpoints.safety import check_sharded_checkpoint


class ZODDPStrategy(DDPStrategy):
    """DDP without the DistributedDataParallel wrapper: weights broadcast from rank 0, no gradient buckets."""

    strategy_name = "zo_ddp"

    def configure_ddp(self) -> None:
        # Ranks must start from identical weights; DDP's constructor would broadcast them, so do it here.
        broadcast_weights(self.model)

    @classmethod
    def register_strategies(cls, strategy_registry: StrategyRegistry) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="DDP for forward-only ZO training")
        strategy_registry.register("zo_ddp_spawn", cls, description="ZO DDP started by spawning", start_method="spawn")


def broadcast_weights(module: torch.nn.Module) -> None:
    """Every parameter and buffer from rank 0 to the others (once, before step 1)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        torch.distributed.broadcast(tensor.data, src=0)


class ZOFSDPStrategy(ModelParallelStrategy):
    """Sharded ZO: Lightning's FSDP2 strategy (`ModelParallelStrategy`); the module shards itself over the mesh
    in `configure_model` (`ZOFineTuneModule.shard`), every rank perturbs and updates only its shards."""

    strategy_name = "zo_fsdp"

    # torch's distributed optimizer-state helpers initialise empty states with a gradient step (step(None)),
    # which a ZO optimizer refuses; its state (ZOSGD's: counters, seed, noise) is small and rides in the
    # checkpoint's metadata file instead, while the weights go through the distributed checkpoint.
    def optimizer_state(self, optimizer) -> dict:
        return optimizer.state_dict()

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        checkpoint = dict(checkpoint)
        checkpoint["zo_optimizer_states"] = checkpoint.pop("optimizer_states", [])
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        # Lightning's own loader of a distributed checkpoint folder (no public API does this part): the one private
        # name zolightning imports, from a pinned Lightning (tests/test_sharded.py resumes through it)
        from lightning.fabric.strategies.model_parallel import _load_checkpoint

        path = Path(self.broadcast(checkpoint_path))
        if path.is_dir() and weights_only is not False:  # torch would unpickle the folder's metadata unchecked
            check_sharded_checkpoint(path, overrule="--weights_only false")
        strict = self.lightning_module.strict_loading
        metadata = _load_checkpoint(
            path=path, state={"state_dict": self.model}, strict=strict, weights_only=weights_only
        )
        for optimizer, state in zip(self.optimizers, metadata.pop("zo_optimizer_states", [])):
            optimizer.load_state_dict(state)
        return metadata

    def load_optimizer_state_dict(self, checkpoint: dict) -> None:
        pass  # loaded with the checkpoint above

    @classmethod
    def register_strategies(cls, strategy_registry: StrategyRegistry) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="FSDP2-sharded forward-only ZO training")


for _strategy in (ZODDPStrategy, ZOFSDPStrategy):
    if _strategy.strategy_name not in StrategyRegistry:
        _strategy.register_strategies(StrategyRegistry)

# Names a user may pass for data parallelism or sharding, and what ZO training uses instead.
ZO_STRATEGY_FOR = {
    "ddp": "zo_ddp",
    "ddp_spawn": "zo_ddp_spawn",
    "ddp_find_unused_parameters_true": "zo_ddp",
    "fsdp": "zo_fsdp",
    "model_parallel": "zo_fsdp",
}
SUPPORTED_STRATEGIES = ("auto", "single_device", "ddp / zo_ddp (data parallel)", "fsdp / zo_fsdp (sharded, FSDP2)")


def refuse_unsupported(strategy: str) -> None:
    """Strategies built around gradients (DeepSpeed ZeRO, FSDP1's CPU offload) cannot run a ZO step."""
    if strategy.startswith("deepspeed") or strategy == "fsdp_cpu_offload":
        raise ValueError(
            f"strategy {strategy!r} is built around gradients and optimizer states, which ZO training has none "
            f"of; supported: {', '.join(SUPPORTED_STRATEGIES)}"
        )
