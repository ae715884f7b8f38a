"""Whole-step CUDA graphs (`optim/step_graphs.py`): what runs on the CPU. The captures themselves are checked on
the GPU (tests/test_gpu.py); here the device inputs they replay with (seed, lr and weight-decay buffers) must give
the eager steps bit for bit, layouts must name what a graph serves, and the module must say when it cannot capture."""

import textwrap
from types import SimpleNamespace

import torch

from tests.zo_factory import make_optimizer
from zolightning.forward.fast_path import step_graph_refusal
from zolightning.optim.engine.step_graphs import layout

_INTERPRETED = textwrap.dedent(
    """
    import torch
    from torch.optim.lr_scheduler import LambdaLR
    from zolightning.optim import ZOOptimizer
    from zolightning.optim.kernels import fused

    # the kernel reads its seed from memory (a replayed graph): same z as the seed passed by value
    seed, one = (5 << 32) | 123, torch.ones(2)
    by_value, from_memory = ([torch.zeros(fused.BLOCK + 9), torch.zeros(33)] for _ in range(2))
    fused.shift(by_value, [0, 1], seed, 0 * one, one, one)
    fused.shift(from_memory, [0, 1], torch.tensor(seed), 0 * one, one, one)
    assert all(torch.equal(a, b) for a, b in zip(by_value, from_memory))

    # a ZOSGD stepping through the step graphs' device buffers (on the CPU nothing is captured) takes the eager
    # steps bit for bit: two groups, weight decay on one, an lr schedule changing lr every step, a skipped step
    def run(graphs):
        torch.manual_seed(0)
        a, b = torch.nn.Parameter(torch.randn(300, 20)), torch.nn.Parameter(torch.randn(20))
        target = torch.randn(20)
        groups = [{"params": [a]}, {"params": [b], "weight_decay": 0.0}]
        optimizer = ZOOptimizer(groups, lr=1e-2, eps=1e-3, weight_decay=0.1, seed=7, noise="philox", sync=False)
        schedule = LambdaLR(optimizer, lambda step: 1.0 - step / 10)
        if graphs:
            optimizer.capture_steps()
        losses = []
        for step in range(6):
            nan = step == 3
            closure = lambda: torch.tensor(float("nan")) if nan else ((a.sum(0) + b - target) ** 2).mean()
            if graphs:
                optimizer.step_graphs.bind({"x": target})
            out = optimizer.step(closure)
            schedule.step()
            losses.append(out.loss)
        assert optimizer.num_skipped == 1 and optimizer.consecutive_skipped == 0
        if graphs:
            assert optimizer.step_graphs.eager_steps == 6 and optimizer.step_graphs.captured == 0
        return torch.stack(losses), a.detach().clone(), b.detach().clone()

    eager, buffered = run(False), run(True)
    assert torch.equal(eager[0].nan_to_num(), buffered[0].nan_to_num())
    assert torch.equal(eager[1], buffered[1]) and torch.equal(eager[2], buffered[2])
    print("step buffers agree")
    """
)


def test_steps_through_the_graph_buffers_equal_eager_steps(run_interpreted):
    run_interpreted(_INTERPRETED, "step buffers agree")


def test_a_layout_names_shapes_dtypes_and_values_of_a_batch():
    batch = {"kind": "classification", "input_ids": torch.zeros(4, 32, dtype=torch.long), "gold": torch.zeros(4)}
    same = {"kind": "classification", "input_ids": torch.ones(4, 32, dtype=torch.long), "gold": torch.ones(4)}
    assert layout(batch) == layout(same)
    assert layout(batch) != layout(batch | {"input_ids": torch.zeros(4, 64, dtype=torch.long)})
    assert layout(batch) != layout(batch | {"gold": torch.zeros(4, dtype=torch.float64)})
    assert layout(batch) != layout(batch | {"kind": "lm"})
    assert layout(batch | {"references": [["a"]]}) is None  # unhashable: never captured


def _module(**overrides):
    trunk = SimpleNamespace(replays=True, eager_reason=None)
    settings = dict(
        hparams={"step_graphs": True, "objective": "loss"},
        device=torch.device("cuda"),
        trainer=SimpleNamespace(world_size=1),
        _fast_scorer=SimpleNamespace(trunk=trunk),
        micro_batches_per_step=1,
    )
    settings.update(overrides)
    module = SimpleNamespace(**settings)
    module.hparams = SimpleNamespace(**module.hparams, get=module.hparams.get)
    return module


def test_the_module_says_why_steps_are_not_captured():
    from zolightning.optim import ZOOptimizer

    params = [torch.nn.Parameter(torch.zeros(4))]
    mezo = ZOOptimizer(params, noise="philox", sync=False)
    assert step_graph_refusal(_module(), mezo) is None
    assert step_graph_refusal(_module(device=torch.device("cpu")), mezo) == "not on CUDA"
    assert "step_graphs=false" in step_graph_refusal(_module(hparams={"step_graphs": False, "objective": "loss"}), mezo)
    assert "more than one" in step_graph_refusal(_module(trainer=SimpleNamespace(world_size=2)), mezo)
    assert "decodes" in step_graph_refusal(_module(hparams={"step_graphs": True, "objective": "f1"}), mezo)
    assert "planned" in step_graph_refusal(_module(_fast_scorer=None), mezo)
    assert "accumulate" in step_graph_refusal(_module(micro_batches_per_step=4), mezo)
    assert "zo_sgd" in step_graph_refusal(_module(), ZOOptimizer(params, noise="philox", sync=True))
    adam = make_optimizer("zo_adam", params, noise="philox", sync=False)
    assert "zo_sgd" in step_graph_refusal(_module(), adam)


def test_a_batch_is_padded_to_its_planned_shape_before_a_step_graph_sees_it():
    from zolightning.forward.fast_forward import CompiledTrunk
    from zolightning.forward.shape_plan import ShapePlan

    trunk = CompiledTrunk(torch.nn.Identity(), ShapePlan(rows=(2, 4), lengths=(8, 16)))
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids > 0).long(), "gold": torch.tensor([0, 1])}
    planned = trunk.planned(batch)
    assert planned["input_ids"].shape == (2, 8) and torch.equal(planned["input_ids"][:, :3], ids)
    assert planned["attention_mask"][:, 3:].sum() == 0 and planned["gold"] is batch["gold"]
    assert trunk.planned(planned) is planned  # already at a planned shape
    wide = {"input_ids": torch.ones(2, 40, dtype=torch.long), "attention_mask": torch.ones(2, 40, dtype=torch.long)}
    assert trunk.planned(wide) is wide  # outside the plan: left to the eager path
    rows = trunk.planned({"input_ids": torch.ones(3, 8, dtype=torch.long), "attention_mask": torch.ones(3, 8)})
    assert rows["input_ids"].shape == (4, 8) and rows["attention_mask"][3, 0] == 1  # a padding row sees one token
