"""Host time of one ZO step with the GPU kernels stubbed out (CPU): what a step that reads g on the host adds to
the GPU's time, and what a step that keeps g on the device must stay under.

    python benchmarks/host_time.py new zo_adam                              # this checkout (run from the repo)
    PYTHONPATH=OLD_CHECKOUT python /path/to/benchmarks/host_time.py old zo_adam   # another one (outside the repo)

272 small tensors in two groups (SmolLM2's count), philox noise, the fused passes and rule kernels replaced by
no-ops; the best of 7 rounds of 200 steps. `new`/`old`: where the kernel modules live (after/before #30).
"""

from __future__ import annotations

import importlib
import sys
import time

import torch

KERNELS = {"new": "zolightning.optim.kernels", "old": "zolightning.optim"}


def stub_kernels(layout: str) -> None:
    fused = importlib.import_module(f"{KERNELS[layout]}.fused")
    fused.usable = lambda params: True
    fused.shift = lambda *args, **kwargs: None
    importlib.import_module(f"{KERNELS[layout]}.fused_rules").update = lambda *args, **kwargs: None
    importlib.import_module(f"{KERNELS[layout]}.fused_shaped")._launch = lambda *args, **kwargs: None


def host_ms(name: str) -> float:
    from zolightning.optim import build_zo_optimizer

    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(8, 8, generator=generator) for _ in range(272)]
    groups = [{"params": params[:200]}, {"params": params[200:], "weight_decay": 0.0}]
    optimizer = build_zo_optimizer(name, groups, lr=1e-3, noise="philox", sync=False)
    loss = torch.tensor(1.0)
    for _ in range(20):
        optimizer.step(lambda: loss)
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(200):
            optimizer.step(lambda: loss)
        best = min(best, (time.perf_counter() - start) / 200)
    return 1e3 * best


def main() -> None:
    layout, names = sys.argv[1], sys.argv[2:] or ["zo_sgd", "zo_sgd_momentum", "zo_adam", "lozo"]
    stub_kernels(layout)
    for name in names:
        print(f"{layout} {name}: {host_ms(name):.3f} ms host per step (best of 7)")


if __name__ == "__main__":
    main()
