"""Page-locked host memory of exactly the size asked for.

torch's pinned allocator (`pin_memory=True`, `Tensor.pin_memory()`) rounds every block up to the next power of two
and caches it: a 32B model's MLP weights (283 MB each) take 512 MB, and its host memory was 1.8 x the weights (docs/
benchmarks.md, "Models larger than the GPU"). A `HostArena` instead allocates ordinary host memory and registers it
with CUDA (`cudaHostRegister`, as torch.distributed.checkpoint's staging does): the copies stay asynchronous (the
memory is page-locked; `Tensor.is_pinned()` says so) and the host holds the weights' bytes, plus 64 bytes of
alignment a tensor and two pages a buffer.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

import torch
from torch import Tensor

ALIGN = 64  # bytes: every tensor starts on a cache line (and on its element size)
PAGE = os.sysconf("SC_PAGE_SIZE")
Register = Callable[[Tensor], None]


def _cuda_register(buffer: Tensor) -> None:
    code = int(torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), buffer.numel(), 0))
    if code != 0:
        raise RuntimeError(f"cudaHostRegister of {buffer.numel() / 2**30:.2f} GiB of host memory failed (error {code})")


def _cuda_unregister(buffers: list[Tensor]) -> None:
    for buffer in buffers:  # before the buffers are freed: memory must not go back to the system registered
        torch.cuda.cudart().cudaHostUnregister(buffer.data_ptr())
    buffers.clear()


def layout(tensors: list[Tensor]) -> tuple[list[int], int]:
    """Byte offsets of `tensors` packed one after another, each aligned to `ALIGN`, and the bytes in all."""
    offsets, end = [], 0
    for t in tensors:
        start = -(-end // ALIGN) * ALIGN
        offsets.append(start)
        end = start + t.numel() * t.element_size()
    return offsets, end


class HostArena:
    """Page-locked host buffers sized to their tensors; unregistered when the arena is collected (views still
    alive then become ordinary memory, still valid).

    Args:
        register: makes a host buffer page-locked (default: `cudaHostRegister`); the tests pass a no-op.
        unregister: undoes `register` for a list of buffers (default: `cudaHostUnregister`).
    """

    def __init__(self, register: Register = _cuda_register, unregister=_cuda_unregister):
        self._buffers: list[Tensor] = []
        self._register = register
        self._finalizer = weakref.finalize(self, unregister, self._buffers)
        self._finalizer.atexit = False  # at exit CUDA may be gone; the process's memory goes anyway

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b in self._buffers)

    def _buffer(self, nbytes: int) -> Tensor:
        # whole pages of its own: CUDA registers by page and refuses a page registered twice, so a buffer never
        # shares one with another allocation (at most two pages more per buffer; buffers are per unit)
        size = -(-max(nbytes, 1) // PAGE) * PAGE
        raw = torch.empty(size + PAGE, dtype=torch.uint8)
        start = -raw.data_ptr() % PAGE
        buffer = raw[start : start + size]
        self._register(buffer)
        self._buffers.append(buffer)
        return buffer

    @staticmethod
    def _view(buffer: Tensor, start: int, like: Tensor) -> Tensor:
        return buffer[start : start + like.numel() * like.element_size()].view(like.dtype).view(like.shape)

    def copy_in(self, tensors: list[Tensor]) -> list[Tensor]:
        """Copies of `tensors` (CPU or GPU) in one new page-locked buffer, in the same order."""
        offsets, total = layout(tensors)
        buffer = self._buffer(total)
        return [self._view(buffer, start, t).copy_(t) for t, start in zip(tensors, offsets, strict=True)]

    def empty_like(self, t: Tensor) -> Tensor:
        """An uninitialised page-locked host tensor of `t`'s shape and dtype."""
        return self._view(self._buffer(t.numel() * t.element_size()), 0, t)
