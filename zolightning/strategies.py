"""Data-parallel training for forward-only (ZO) optimizers.

Lightning's `ddp` wraps the model in torch DDP, which allocates gradient buckets the size of the
model (a second copy of it, for a method sold on memory) that a ZO model never fills. ZO data
parallelism needs only: the process group, a data shard per rank, identical starting weights, and the
loss averaged across ranks inside the closure. This strategy keeps all of DDPStrategy except the
wrapper (Lightning's documented extension point, `configure_ddp`).
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.strategies.ddp import _sync_module_states


class ZODDPStrategy(DDPStrategy):
    """DDP without the DistributedDataParallel wrapper: weights broadcast from rank 0, no gradient buckets."""

    strategy_name = "zo_ddp"

    def configure_ddp(self) -> None:
        # Ranks must start from identical weights; DDP's constructor would broadcast them, so do it here.
        _sync_module_states(self.model)

    @classmethod
    def register_strategies(cls, strategy_registry: StrategyRegistry) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="DDP for forward-only ZO training")
        strategy_registry.register("zo_ddp_spawn", cls, description="ZO DDP started by spawning", start_method="spawn")


if ZODDPStrategy.strategy_name not in StrategyRegistry:
    ZODDPStrategy.register_strategies(StrategyRegistry)

# Names a user may pass for plain data parallelism, and what ZO training uses instead.
ZO_STRATEGY_FOR = {"ddp": "zo_ddp", "ddp_spawn": "zo_ddp_spawn", "ddp_find_unused_parameters_true": "zo_ddp"}
