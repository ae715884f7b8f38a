"""`--trainer.strategy zo_offload`: one device, the model's weights in host memory, streamed block by block.

A strategy, not a module option, because it decides where the model lives (Lightning's `model_to_device`): every
module goes to the device except the decoder blocks' (and embeddings', head's) weights, which stay in pinned host
memory and travel with `BlockStreamer`. The module then builds a `StreamedZOOptimizer` (it asks for `streamer`).
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import SingleDeviceStrategy, StrategyRegistry

from zolightning.offload.streamer import BlockStreamer
from zolightning.offload.units import find_units


def _indexed(device: str | torch.device | None) -> torch.device:
    """The compute device with its index: Lightning sets the device up with torch.cuda.set_device, which refuses a
    bare "cuda" (the default, and what a user may write)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class ZOOffloadStrategy(SingleDeviceStrategy):
    """ZO fine-tuning of a model larger than the GPU: weights in host memory, each unit on the GPU only while a
    forward is inside it (`offload/`).

    Args:
        device: the compute device (default: the current CUDA device, else the CPU, where nothing moves).
        prefetch: units uploaded ahead of the computing one (GPU memory ≈ (prefetch + 1) units' weights).
    """

    strategy_name = "zo_offload"

    def __init__(self, device: str | torch.device | None = None, prefetch: int = 1, **kwargs):
        super().__init__(device=_indexed(device), **kwargs)
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.prefetch = prefetch
        self.streamer: BlockStreamer | None = None

    def model_to_device(self) -> None:
        if self.streamer is None:
            units = find_units(self.lightning_module.model)
            self.streamer = BlockStreamer(units, self.root_device, self.prefetch)
        self.streamer.place(self.model)  # everything but the streamed weights (buffers, metrics) on the device
        self.streamer.install()

    def _flush(self) -> None:
        for optimizer in self.optimizers:
            if hasattr(optimizer, "flush"):
                optimizer.flush()

    def lightning_module_state_dict(self) -> dict:
        self._flush()  # the host weights get the last step's update before they are read
        return super().lightning_module_state_dict()

    def on_train_end(self) -> None:
        self._flush()
        super().on_train_end()

    @classmethod
    def register_strategies(cls, strategy_registry: StrategyRegistry) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="ZO on one GPU, weights streamed from host")


if ZOOffloadStrategy.strategy_name not in StrategyRegistry:
    ZOOffloadStrategy.register_strategies(StrategyRegistry)
