"""Sharded ZO (FSDP2, 2 CPU processes over gloo) takes exactly the unsharded steps: z is indexed by element."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.scripts.sharded_zo import train
from zolightning.models import load_causal_lm
from zolightning.optim import ZOSGD

SCRIPT = Path(__file__).parent / "scripts" / "sharded_zo.py"


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_two_shards_give_the_unsharded_weights_bitwise(tmp_path, weight_decay):
    out = tmp_path / "sharded.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(SCRIPT), str(out)]
    result = subprocess.run(
        [*command, "--steps", "3", "--weight-decay", str(weight_decay)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = torch.load(out)
    model = load_causal_lm("tiny-llama", dtype="float64")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, 3, weight_decay, all_reduce=False)
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]) or p.ndim == 1  # the steps moved the weights
        assert torch.equal(sharded[name], p), name


def test_sharded_parameters_need_counter_based_noise():
    import torch.distributed as dist

    pytest.importorskip("torch.distributed.tensor")
    if not dist.is_available():
        pytest.skip("no torch.distributed")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{Path(__file__).parent / '.gloo_init'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        weight = torch.nn.Parameter(distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)]))
        with pytest.raises(ValueError, match="noise='philox'"):
            ZOSGD([weight], lr=0.1, noise="generator")
    finally:
        dist.destroy_process_group()
        (Path(__file__).parent / ".gloo_init").unlink(missing_ok=True)
