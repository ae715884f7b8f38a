"""Kernel launches and host reads per ZO step, every rule, on the CPU (Triton's interpreter): a regression of the
engine's work shows here before a GPU is available.

    TRITON_INTERPRET=1 python -m benchmarks.launch_counts                     # this checkout
    TRITON_INTERPRET=1 PYTHONPATH=OLD python -m benchmarks.launch_counts      # another checkout's zolightning

Each rule steps a few weight tensors (float32, philox noise, fused passes, `sync=False` where the rule allows it, as
in a GPU fit) with a closure that returns a tensor. Counted per step after one warm-up step: launches of each
Triton kernel (the fused passes), and host reads of tensor values (`item`, `tolist`, `float`, `bool`, `int`):
on a GPU each of those waits for the device. The closure's own work is not counted (it is the same for every rule).
"""

from __future__ import annotations

import collections
import contextlib
import os

import torch

STEPS = 3
QUERY_SETTINGS = (("zo_sgd", 1), ("zo_sgd_momentum", 1), ("zo_sgd_sign", 1), ("zo_sgd_conserve", 1), ("zo_adam", 1),
                  ("hizoo", 1), ("lozo", 1), ("zo_sgd", 4), ("zo_sgd_momentum", 4), ("lozo", 4))  # fmt: skip
HOST_READS = ("item", "tolist", "__float__", "__bool__", "__int__")


@contextlib.contextmanager
def counting(counts: collections.Counter, active: list[bool]):
    """Count Triton launches (by kernel name) and host reads of tensors while `active[0]` is True."""
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counted_run(self, *args, **kwargs):
        if active[0]:
            counts[f"launch {self.fn.__name__}"] += 1
        return run(self, *args, **kwargs)

    def reader(name):
        def read(tensor, *args, **kwargs):
            if active[0]:
                counts[f"host read {name.strip('_')}"] += 1
            return originals[name](tensor, *args, **kwargs)

        return read

    InterpretedFunction.run = counted_run
    for name in HOST_READS:
        setattr(torch.Tensor, name, reader(name))
    try:
        yield
    finally:
        InterpretedFunction.run = run
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def build(name: str, params, queries: int):
    import zolightning.optim as optim

    options = {"lr": 1e-3, "eps": 1e-3, "seed": 1, "noise": "philox", "queries": queries, "sync": False}
    return optim.build_zo_optimizer(name, params, **options)  # rules that read g on the host keep sync=True


def measure(name: str, queries: int) -> collections.Counter:
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(64, 48, generator=generator), torch.randn(48, generator=generator), torch.randn(16, 64)]
    target = [torch.randn(p.shape, generator=generator) for p in params]
    optimizer = build(name, params, queries)
    counts: collections.Counter = collections.Counter()
    active = [False]

    def closure():
        was, active[0] = active[0], False  # the closure's work is the forward's, not the engine's
        loss = sum(((p - t) ** 2).sum() for p, t in zip(params, target))
        active[0] = was
        return loss

    with counting(counts, active):
        optimizer.step(closure)  # warm-up: tables built, states allocated
        active[0] = True
        for _ in range(STEPS):
            optimizer.step(closure)
        active[0] = False
    return collections.Counter({key: value / STEPS for key, value in counts.items()})


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1 (the fused kernels on CPU tensors)")
    import zolightning.optim as optim

    print(f"# zolightning.optim from {os.path.dirname(optim.__file__)}")
    print("| rule | q | launches / step | host reads / step | by kind |")
    print("|---|---|---|---|---|")
    for name, queries in QUERY_SETTINGS:
        counts = measure(name, queries)
        launches = sum(v for k, v in counts.items() if k.startswith("launch"))
        reads = sum(v for k, v in counts.items() if k.startswith("host read"))
        kinds = ", ".join(f"{k} {v:g}" for k, v in sorted(counts.items()))
        print(f"| {name} | {queries} | {launches:g} | {reads:g} | {kinds} |")


if __name__ == "__main__":
    main()
