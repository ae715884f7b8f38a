"""`HostArena` (offload/host_memory.py): exact-sized host buffers, tensors packed and aligned, registration undone
when the arena goes. On the CPU registration is a recorded no-op; tests/test_gpu.py registers for real."""

from __future__ import annotations

import gc

import pytest
import torch

from zolightning.offload.host_memory import ALIGN, PAGE, HostArena, layout


def _tensors():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(3, 5, generator=g), torch.randn(7, generator=g).to(torch.bfloat16), torch.tensor(2.5),
            torch.randint(0, 9, (4, 3), generator=g), torch.empty(0)]  # fmt: skip


def _recording_arena():
    registered, unregistered = [], []
    arena = HostArena(register=lambda b: registered.append(b.data_ptr()),
                      unregister=lambda buffers: unregistered.extend(b.data_ptr() for b in buffers))  # fmt: skip
    return arena, registered, unregistered


def test_layout_packs_tensors_aligned_without_overlap():
    tensors = _tensors()
    offsets, total = layout(tensors)
    ends = [o + t.numel() * t.element_size() for o, t in zip(offsets, tensors)]
    assert all(o % ALIGN == 0 for o in offsets)
    assert all(end <= nxt for end, nxt in zip(ends, offsets[1:]))
    assert total == ends[-1] < sum(t.numel() * t.element_size() for t in tensors) + ALIGN * len(tensors)


def test_copies_hold_the_values_in_one_buffer_of_their_bytes():
    arena, registered, _ = _recording_arena()
    tensors = _tensors()
    copies = arena.copy_in(tensors)
    for t, c in zip(tensors, copies):
        assert c.dtype == t.dtype and c.shape == t.shape and torch.equal(c, t)
    assert arena.nbytes == -(-layout(tensors)[1] // PAGE) * PAGE and len(registered) == 1
    copies[0].add_(1.0)  # views of one buffer, yet independent tensors
    assert torch.equal(copies[1], tensors[1]) and torch.equal(copies[3], tensors[3])


def test_empty_like_is_a_registered_buffer_of_the_tensors_bytes():
    arena, registered, _ = _recording_arena()
    out = arena.empty_like(torch.zeros(6, 2, dtype=torch.float16))
    assert out.shape == (6, 2) and out.dtype == torch.float16 and arena.nbytes == PAGE
    assert registered == [out.data_ptr()]


def test_buffers_own_whole_pages():
    # CUDA registers by page: a page shared by two registered buffers would be refused the second time
    arena, registered, _ = _recording_arena()
    for n in (1, 100, PAGE, PAGE + 1):
        arena.copy_in([torch.zeros(n, dtype=torch.uint8)])
    assert all(ptr % PAGE == 0 for ptr in registered)
    assert arena.nbytes == PAGE * (1 + 1 + 1 + 2)


def test_buffers_are_unregistered_when_the_arena_goes_and_views_stay_valid():
    arena, registered, unregistered = _recording_arena()
    copies = arena.copy_in(_tensors())
    del arena
    gc.collect()
    assert unregistered == registered
    assert torch.equal(copies[2], torch.tensor(2.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cudaHostRegister needs CUDA")
def test_registered_buffers_are_page_locked():
    (copy,) = HostArena().copy_in([torch.ones(1000)])
    assert copy.is_pinned()
