"""Sharded ZO (FSDP2, 2 CPU processes over gloo) takes exactly the unsharded steps: z is indexed by element."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.scripts.sharded_zo import train
from zolightning.models import load_causal_lm
from zolightning.optim import ZOOptimizer

SCRIPT = Path(__file__).parent / "scripts" / "sharded_zo.py"


SHARDED_CASES = [("tiny-llama", 0.0), ("tiny-llama", 0.1), ("tiny-llama-untied", 0.1)]  # untied: embedding, head apart


@pytest.mark.parametrize(("name", "weight_decay"), SHARDED_CASES)
def test_two_shards_give_the_unsharded_weights_bitwise(tmp_path, name, weight_decay):
    out = tmp_path / "sharded.pt"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(SCRIPT),
        str(out),
    ]
    result = subprocess.run(
        [*command, "--steps", "3", "--weight-decay", str(weight_decay), "--model", name],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = torch.load(out)
    model = load_causal_lm(name, dtype="float64")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, 3, weight_decay, all_reduce=False)
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]) or p.ndim == 1  # the steps moved the weights
        assert torch.equal(sharded[name], p), name


EVERY_RULE = ["zo_sgd", "zo_sgd:2", "zo_sgd_momentum", "zo_sgd_nesterov:2", "zo_sgd_sign", "zo_sgd_conserve",
              "zo_adam:2", "hizoo", "lozo", "lozo:2"]  # fmt: skip


def test_every_rule_sharded_over_two_processes_gives_the_unsharded_weights_bitwise(tmp_path):
    """The engine does every rule's passes on each rank's rows (reference passes on the CPU; float64)."""
    out = tmp_path / "rules.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT)]
    command += [str(out), "--steps", "3", "--weight-decay", "0.1", "--rules", ",".join(EVERY_RULE)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = torch.load(out)
    for entry in EVERY_RULE:
        rule, _, queries = entry.partition(":")
        model = load_causal_lm("tiny-llama", dtype="float64")
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        train(model, 3, 0.1, all_reduce=False, rule=rule, queries=int(queries or 1))
        assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters()), entry
        for name, p in model.named_parameters():
            assert torch.equal(sharded[entry][name], p), (entry, name)


def test_two_shards_with_learned_variance_follow_the_unsharded_run(tmp_path):
    # block statistics are summed across the shard group: the replicated networks see the full tensors'
    # mean and variance (float64 sums instead of var_mean; both round to the networks' float32 inputs)
    out = tmp_path / "sharded.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT)]
    result = subprocess.run(
        [*command, str(out), "--steps", "3", "--learned"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = torch.load(out)
    model = load_causal_lm("tiny-llama", dtype="float64")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, 3, 0.0, all_reduce=False, learned=True)
    isotropic = load_causal_lm("tiny-llama", dtype="float64")
    train(isotropic, 3, 0.0, all_reduce=False)
    moved_differently = False
    for (name, p), (_, q) in zip(model.named_parameters(), isotropic.named_parameters()):
        assert not torch.equal(p, before[name]) or p.ndim == 1
        assert torch.equal(sharded[name], p.detach()), name
        moved_differently |= not torch.allclose(p, q, rtol=1e-9, atol=1e-12)
    assert moved_differently  # the learned scales did act


def test_hybrid_sharding_two_replicas_of_two_shards_gives_the_unsharded_weights(tmp_path):
    # 4 processes, mesh (2 replicas x 2 shards), as 2 nodes of 2 GPUs: rows sharded within a replica group,
    # learned variance's statistics summed over the shard dimension only
    out = tmp_path / "hybrid.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", str(SCRIPT)]
    result = subprocess.run(
        [*command, str(out), "--steps", "2", "--replicas", "2", "--learned"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    hybrid = torch.load(out)
    model = load_causal_lm("tiny-llama", dtype="float64")
    train(model, 2, 0.0, all_reduce=False, learned=True)
    for name, p in model.named_parameters():
        assert torch.equal(hybrid[name], p.detach()), name


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
            ZOOptimizer([weight], lr=0.1, noise="generator")
    finally:
        dist.destroy_process_group()
        (Path(__file__).parent / ".gloo_init").unlink(missing_ok=True)


def _fit(tmp_path: Path, strategy: str, data_dir: Path, devices: int = 2, steps: int = 4, *extra: str) -> Path:
    args = ["--config", "configs/tiny/sst2_mezo.yaml", "--data.data_dir", str(data_dir), "--trainer.devices"]
    args += [str(devices), "--trainer.strategy", strategy, "--trainer.max_steps", str(steps)]
    args += ["--trainer.val_check_interval", str(steps), *extra]
    args += ["--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false", "--model.noise", "philox"]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path / f"{strategy}{devices}")]
    result = subprocess.run(
        [sys.executable, "-m", "zolightning", "fit", *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / f"{strategy}{devices}" / "tiny-sst2-mezo" / "version_0" / "checkpoints" / "last.ckpt"


def test_a_sharded_fit_through_lightning_follows_the_data_parallel_fit_bitwise(tmp_path, data_dir):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    sharded_dir, replicated = _fit(tmp_path, "fsdp", data_dir), _fit(tmp_path, "ddp", data_dir)
    assert sharded_dir.is_dir()  # a distributed checkpoint: one shard per rank
    dcp_to_torch_save(sharded_dir, tmp_path / "sharded.pt")
    sharded = torch.load(tmp_path / "sharded.pt", weights_only=False)["state_dict"]
    expected = torch.load(replicated, weights_only=False)["state_dict"]
    weights = [k for k in expected if k.startswith("model.")]
    assert weights and all(torch.equal(sharded[k], expected[k]) for k in weights)


def test_a_sharded_checkpoint_resumes_on_another_number_of_processes(tmp_path, data_dir):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    two = _fit(tmp_path, "fsdp", data_dir)
    one = _fit(tmp_path, "fsdp", data_dir, 1, 6, "--ckpt_path", str(two))
    for name, path in (("two", two), ("one", one)):
        dcp_to_torch_save(path, tmp_path / f"{name}.pt")
    at_4, at_6 = (torch.load(tmp_path / f"{n}.pt", weights_only=False)["state_dict"] for n in ("two", "one"))
    meta = torch.load(one / "meta.pt", weights_only=False)  # everything but the weights
    assert meta["global_step"] == 6 and meta["zo_optimizer_states"][0]["zo"]["num_steps"] == 6  # ZO state carried
    assert at_4.keys() == at_6.keys() and not all(torch.equal(at_4[k], at_6[k]) for k in at_4)
    from transformers import AutoModelForCausalLM

    from zolightning.cli.export import main as export_main

    assert export_main([str(one), str(tmp_path / "exported")]) == 0  # consolidated into a Hugging Face directory
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    assert all(torch.equal(p, at_6[f"model.{n}"]) for n, p in exported.named_parameters())


@pytest.mark.parametrize("strategy", ["deepspeed_stage_3", "fsdp_cpu_offload"])
def test_strategies_built_on_gradients_are_refused_with_the_supported_ones_named(strategy, capsys):
    from zolightning.cli.main import main

    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", "configs/tiny/sst2_mezo.yaml", "--trainer.strategy", strategy])
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert re.match(r"error: strategy .* supported: auto.*zo_fsdp", lines[-1]), lines


def test_a_sharded_fit_with_learned_variance_follows_the_data_parallel_one(tmp_path, data_dir):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from zolightning.variance import BlockVarianceNets, LearnedOptimizerFile
    from zolightning.variance.blocks import trainable_named_parameters

    named = trainable_named_parameters(load_causal_lm("tiny-llama"))
    nets = BlockVarianceNets(len(named), generator=torch.Generator().manual_seed(0))
    file = tmp_path / "tiny.safetensors"
    LearnedOptimizerFile(nets, [n for n, _ in named], [tuple(p.shape) for _, p in named], [None] * len(named)).save(
        file
    )
    learned = ("--model.variance", "learned", "--model.variance_file", str(file))
    sharded_dir = _fit(tmp_path, "fsdp", data_dir, 2, 4, *learned)
    replicated = _fit(tmp_path, "ddp", data_dir, 2, 4, *learned)
    dcp_to_torch_save(sharded_dir, tmp_path / "sharded.pt")
    sharded = torch.load(tmp_path / "sharded.pt", weights_only=False)["state_dict"]
    expected = torch.load(replicated, weights_only=False)["state_dict"]
    weights = [k for k in expected if k.startswith("model.")]
    for k in weights:  # fp32; the statistics are summed in another order than data parallel's
        torch.testing.assert_close(sharded[k], expected[k], rtol=1e-6, atol=1e-7, msg=k)
    meta = torch.load(sharded_dir / "meta.pt", weights_only=False)
    sigma = meta["zo_optimizer_states"][0]["zo"]["block_scales"]["sigma_prev"]
    assert not torch.allclose(sigma, torch.ones_like(sigma))  # the networks' sigma was used and carried


def _benchmark_on_two_processes(module: str, *args: str) -> dict:
    """Run `python -m module args` under torchrun with two processes; its last JSON line."""
    import json

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", module]
    result = subprocess.run(
        [*command, *args], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


def test_the_scale_benchmark_builds_a_sharded_random_llama_and_steps():
    report = _benchmark_on_two_processes(
        "benchmarks.sharded_scale", "--shape", "tiny", "--steps", "2", "--dtype", "float32"
    )
    assert report["world"] == 2 and len(report["losses"]) == 2 and all(math.isfinite(x) for x in report["losses"])
    assert report["step_seconds"] > 0 and report["forward_seconds"] > 0


def test_the_one_gpu_proof_runs_its_host_staged_gathers_and_compares():
    # the script that proves sharding on one GPU (gloo, two ranks), run on the CPU: same code path, tiny shape
    report = _benchmark_on_two_processes(
        "benchmarks.sharded_on_one_gpu", "--shape", "tiny", "--steps", "2", "--dtypes", "float32"
    )
    assert report["world"] == 2 and report["weights_bitwise_equal"] and report["losses_bitwise_equal_steps"] == 2
