"""Models larger than the GPU: weights in host memory, streamed block by block (`--trainer.strategy zo_offload`)."""

from zolightning.offload.strategy import ZOOffloadStrategy

__all__ = ["ZOOffloadStrategy"]
