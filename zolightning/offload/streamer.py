"""Weights in host memory, each unit streamed to the GPU when a forward enters it and back when it leaves.

Every unit's parameters live in pinned host memory (`p.data` is the host tensor). `acquire(unit)` makes a unit
resident: its tensors (and its rule state, `states`) are copied up on the upload stream, the compute stream waits
for that copy only, and `p.data` points at the GPU copy. `release(unit, changed)` copies changed tensors back on the
download stream (full duplex: uploads and downloads use separate streams) and points `p.data` at the host again;
the GPU copy is freed once the copy has read it. While unit i computes, the next units in the order the first
forward entered them are already being uploaded (`prefetch`), so copies hide behind compute.

On the CPU (tests, or no GPU) nothing moves: the same calls keep the weights where they are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from zolightning.offload.host_memory import HostArena
from zolightning.offload.units import Runner, Unit, install

States = Callable[[nn.Parameter], dict]  # a parameter's rule state (tensors travel with it)


class BlockStreamer:
    """Moves units between pinned host memory and `device`, `prefetch` units ahead of the compute.

    Args:
        units: the model's units (`units.find_units`).
        device: where units compute; a CPU device streams nothing.
        prefetch: units uploaded ahead of the one computing (GPU memory: about prefetch + 1 units' weights).
    """

    def __init__(self, units: list[Unit], device: torch.device, prefetch: int = 1):
        self.units, self.device, self.prefetch = units, torch.device(device), prefetch
        self.streams = self.device.type == "cuda"
        self.states: States = lambda p: {}
        self.runner: Runner | None = None  # who runs a unit's call (a streamed optimizer); None: stream it as is
        self.order: list[Unit] = []  # units in the order forwards enter them, learned from the first one
        self._uploads: dict[Unit, tuple[dict, object]] = {}  # unit -> ({tensor: GPU copy}, copy-done event)
        self._resident: dict[Unit, dict] = {}
        self._host: dict[Tensor, Tensor] = {}  # GPU copy -> its host tensor, while resident
        self._ready: dict[int, object] = {}  # id(host tensor) -> event after its last download
        if self.streams:
            self.up, self.down = torch.cuda.Stream(self.device), torch.cuda.Stream(self.device)
            self.arena = HostArena()  # the units' host memory (and their rule state's), page-locked

    # ---- host memory ------------------------------------------------------------------------------------
    def to_host(self) -> None:
        """Put every unit's parameters in pinned host memory (one unit at a time: host peak ≈ the weights + a unit)."""
        if not self.streams:
            return
        for unit in self.units:  # one buffer a unit, of exactly its bytes (`HostArena`: no power-of-two rounding)
            moving = [p for p in unit.tensors if not (p.data.device.type == "cpu" and p.data.is_pinned())]
            for p, host in zip(moving, self.arena.copy_in([p.data for p in moving]), strict=True):
                p.data = host

    def place(self, module: nn.Module) -> None:
        """Move `module` to the device, all but the units' weights, which go to (or stay in) pinned host memory:
        they stand aside as empty tensors while the module moves, then point at their host memory again."""
        self.to_host()
        hosts = {p: p.data for unit in self.units for p in unit.tensors}
        for p in hosts:
            p.data = torch.empty(0, dtype=p.dtype)
        module.to(self.device)
        for p, host in hosts.items():
            p.data = host

    def host_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for unit in self.units for p in unit.tensors)

    def install(self) -> None:
        """Route every unit's forward through `call`."""
        install(self.units, self.call)

    def call(self, unit: Unit, forward, args: tuple, kwargs: dict):
        if self.runner is not None:
            return self.runner(unit, forward, args, kwargs)
        self.acquire(unit)
        try:
            return forward(*args, **kwargs)
        finally:
            self.release(unit, changed=False)

    # ---- moving units -----------------------------------------------------------------------------------
    def _travelling(self, unit: Unit) -> list[tuple[object, object]]:
        """(holder, key) of every tensor that moves with the unit: its parameters' data and their rule state."""
        out: list[tuple[object, object]] = [(p, "data") for p in unit.tensors]
        for p in unit.tensors:
            state = self.states(p)
            out += [(state, name) for name, value in state.items() if torch.is_tensor(value) and value.dim() > 0]
        return out

    @staticmethod
    def _get(holder, key) -> Tensor:
        return holder.data if key == "data" else holder[key]

    @staticmethod
    def _set(holder, key, value: Tensor) -> None:
        if key == "data":
            holder.data = value
        else:
            holder[key] = value

    def _upload(self, unit: Unit) -> None:
        copies = {}
        with torch.cuda.stream(self.up):
            for holder, key in self._travelling(unit):
                host = self._get(holder, key)
                ready = self._ready.get(id(host))
                if ready is not None:  # its last download must land before it goes up again
                    self.up.wait_event(ready)
                copies[(id(holder), key)] = host.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.up)
        self._uploads[unit] = (copies, done)

    def _busy(self, unit: Unit) -> bool:
        tensors = {id(p) for p in unit.tensors}
        return any(tensors & {id(p) for p in other.tensors} for other in [*self._resident, *self._uploads])

    def acquire(self, unit: Unit) -> None:
        """Make `unit` resident (uploading it now if it was not prefetched) and start the next uploads."""
        if unit in self._resident:
            raise RuntimeError(f"unit {unit.name} entered twice at once")
        if unit not in self.order:
            self.order.append(unit)
        if not self.streams:
            self._resident[unit] = {}
            return
        if unit not in self._uploads:
            self._upload(unit)
        copies, done = self._uploads.pop(unit)
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(done)
        resident = {}
        for holder, key in self._travelling(unit):
            gpu = copies.get((id(holder), key))
            if gpu is None:  # a state the rule created since the upload was issued: not yet on the host
                continue
            gpu.record_stream(compute)  # allocated on the upload stream, read on the compute stream
            resident[(id(holder), key)] = self._get(holder, key)
            self._set(holder, key, gpu)
        self._resident[unit] = resident
        self._prefetch_after(unit)

    def _prefetch_after(self, unit: Unit) -> None:
        if unit not in self.order:
            return
        at = self.order.index(unit)
        for ahead in range(1, self.prefetch + 1):
            nxt = self.order[(at + ahead) % len(self.order)]
            if nxt is unit or nxt in self._uploads or self._busy(nxt):
                continue
            self._upload(nxt)

    def release(self, unit: Unit, changed: bool) -> None:
        """Send `unit` back to host memory: its tensors (and rule state) copied down if `changed`."""
        hosts = self._resident.pop(unit)
        if not self.streams:
            return
        compute = torch.cuda.current_stream(self.device)
        self.down.wait_stream(compute)
        with torch.cuda.stream(self.down):
            for holder, key in self._travelling(unit):
                gpu = self._get(holder, key)
                host = hosts.get((id(holder), key))
                if host is None:  # a state created while resident: its pinned host home is made now
                    host = self.arena.empty_like(gpu)
                if changed or (id(holder), key) not in hosts:
                    host.copy_(gpu, non_blocking=True)
                    gpu.record_stream(self.down)
                self._set(holder, key, host)
            done = torch.cuda.Event()
            done.record(self.down)
        for holder, key in self._travelling(unit):
            self._ready[id(self._get(holder, key))] = done

    def synchronize(self) -> None:
        """Wait for every copy: host tensors then hold the current weights (checkpoints read them)."""
        if self.streams:
            self.down.synchronize()
            self.up.synchronize()
        for unit in list(self._uploads):  # prefetched copies may be stale after host-side changes
            self._uploads.pop(unit)
