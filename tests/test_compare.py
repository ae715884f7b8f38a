"""The comparison harness: grid files, the resumable runner, the table, paired statistics and plots."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ttest_rel
from torch.utils.tensorboard import SummaryWriter

from zolightning.compare import Grid, GridError, GridRunner
from zolightning.compare.cli import main as compare_main
from zolightning.compare.results import read_scalars, summarize, table
from zolightning.compare.runner import fit_command, last_error, read_status

REPO = Path(__file__).resolve().parents[1]
TINY = "configs/tiny/{task}_mezo.yaml"


def _grid(tmp_path, **overrides) -> Grid:
    raw = {
        "name": "t",
        "out_dir": str(tmp_path / "out"),
        "tasks": ["sst2"],
        "methods": {"const": {"config": TINY}, "linear": {"config": TINY, "args": {"model.lr_schedule": "linear"}}},
        "lrs": [1e-3],
        "seeds": [0, 1, 2],
        "args": {"trainer.max_steps": 4, "model.lr_schedule": "constant"},
        "baseline": "const",
    }
    raw.update(overrides)
    return Grid.from_dict(raw, tmp_path / "grid.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "compare").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_grid_loads_and_names_existing_configs(path, monkeypatch):
    monkeypatch.chdir(REPO)
    grid = Grid.load(path)
    grid.check_configs()
    assert len(grid.seeds) >= 3 and grid.runs()


def test_a_grid_expands_into_seeded_runs_with_the_methods_options_last(tmp_path):
    runs = _grid(tmp_path).runs()
    assert [r.run_id for r in runs[:4]] == [
        "sst2/const/lr0.001/seed0",
        "sst2/const/lr0.001/seed1",
        "sst2/const/lr0.001/seed2",
        "sst2/linear/lr0.001/seed0",
    ]
    flags = dict(zip(runs[4].args[::2], runs[4].args[1::2]))
    assert flags["--model.lr_schedule"] == "linear"  # the method's value beats the grid's
    assert flags["--model.lr"] == "0.001" and flags["--trainer.max_steps"] == "4"
    assert flags["--seed_everything"] == flags["--model.zo_seed"] == flags["--data.seed"] == "1"
    assert runs[4].config == Path("configs/tiny/sst2_mezo.yaml")
    assert runs[4].run_dir == tmp_path / "out" / "sst2" / "linear" / "lr0.001" / "seed1"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"tasks": []}, "tasks"),
        ({"colour": 1}, "colour"),
        ({"baseline": "adam"}, "baseline"),
        ({"methods": {"m": {"args": {}}}}, "methods.m"),
        ({"methods": {"m": {"config": TINY, "lr": 1}}}, "methods.m.lr"),
        ({"lrs": ["fast"]}, "lrs"),
        ({"lrs": [-1.0]}, "lrs"),
        ({"parallel": 0}, "parallel"),
    ],
)
def test_a_bad_grid_names_the_file_and_the_key(tmp_path, change, key):
    with pytest.raises(GridError, match=rf"grid\.yaml: key '{key}'"):
        _grid(tmp_path, **change)


def test_a_grid_file_with_a_missing_config_is_refused_before_anything_runs(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("name: t\ntasks: [sst2]\nmethods: {m: {config: 'nowhere/{task}.yaml'}}\nlrs: [1]\nseeds: [0]\n")
    assert compare_main(["run", str(path)]) == 2
    with pytest.raises(GridError, match="no config nowhere/sst2.yaml"):
        Grid.load(path).check_configs()


def test_a_run_with_a_last_checkpoint_resumes_from_it(tmp_path):
    run = _grid(tmp_path).runs()[0]
    assert "--ckpt_path" not in fit_command(run)
    last = run.log_dir / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.touch()
    command = fit_command(run, ["--data.data_dir", "D"])
    assert command[-2:] == ["--ckpt_path", str(last)] and "--data.data_dir" in command
    assert f"--trainer.logger.init_args.save_dir={run.run_dir}" in command


def _write_curves(run, losses, val, evaluation, step_seconds: dict[int, float] | None = None, forwards=None) -> None:
    with SummaryWriter(str(run.log_dir)) as writer:
        curves = (("train/loss", losses), ("val/acc", val), ("eval/acc", evaluation))
        for tag, curve in (*curves, ("perf/step_seconds", step_seconds or {}), ("train/forwards", forwards or {})):
            for step, value in curve.items():
                writer.add_scalar(tag, value, step)


def test_the_table_and_paired_tests_follow_synthetic_curves(tmp_path):
    grid = _grid(tmp_path)
    finals = {"const": [0.50, 0.52, 0.47], "linear": [0.40, 0.45, 0.41]}
    evals = {"const": [0.80, 0.79, 0.81], "linear": [0.83, 0.80, 0.84]}
    for run in grid.runs():
        i, final = run.seed, finals[run.method][run.seed]
        losses = {s: (1.0 if s < 90 else final) for s in range(0, 100, 10)}  # steps 0..99: the last 10% is step 90
        val = {49: 0.74 + i / 100, 99: 0.75}  # best dev: step 99 for seed 0, a tie for seed 1, step 49 for seed 2
        seconds = {9: 5.0, 19: 0.1 + i / 100, 29: 0.1 + i / 100}  # the first interval pays for compilation
        forwards = {49: 100.0, 99: 200.0} if run.method == "const" else {99: 290.0 + 10 * i}  # the last logged count
        _write_curves(run, losses, val, {49: 0.6, 99: evals[run.method][i]}, seconds, forwards)
    results = [summarize(run) for run in grid.runs()]
    assert results[1].figures["step_seconds"] == pytest.approx(0.11)
    assert results[0].steps == 100 and results[0].figures["final_loss"] == pytest.approx(0.50)
    assert results[2].figures["best_val"] == pytest.approx(0.76, abs=1e-6) and results[2].figures[
        "eval_at_best"
    ] == pytest.approx(0.6, abs=1e-6)
    assert results[1].figures["eval_at_best"] == pytest.approx(
        0.6, abs=1e-6
    )  # a tie goes to the first step, as a best checkpoint would
    assert results[0].figures["eval_at_best"] == pytest.approx(0.80, abs=1e-6) == results[0].figures["last_eval"]
    text = table(grid, results)
    assert "| sst2 | linear | 0.001 | 3 | 100 | 0.4200 ± 0.0265 |" in text
    assert text.split("\n")[4].endswith("| 0.110 ± 0.010 | 200 |")  # median step seconds, mean ± std over seeds
    assert text.split("\n")[5].endswith("| 300 ± 10 |")
    expected = ttest_rel(finals["linear"], finals["const"]).pvalue
    delta_eval = 100 * (sum(evals["linear"]) - sum(evals["const"])) / 3
    assert f"| sst2 | 0.001 | linear | 3 | -0.0767 | {expected:.3f} | {delta_eval:+.1f} |" in text


def test_pairs_of_unequal_length_are_left_out(tmp_path):
    grid = _grid(tmp_path, seeds=[0, 1], args={"trainer.max_steps": 100})  # a 50-step run is a cut one
    for run in grid.runs():
        end = 100 if run.method == "const" or run.seed == 0 else 50
        _write_curves(run, {s: 0.5 for s in range(0, end, 10)}, {end - 1: 0.7}, {end - 1: 0.7})
    text = table(grid, [summarize(r) for r in grid.runs()])
    assert "| sst2 | 0.001 | linear | 1 |" in text and "1 pair(s) left out" in text


def test_runs_at_their_own_smaller_max_steps_are_paired_as_equal_budgets(tmp_path):
    methods = {"const": {"config": TINY}, "linear": {"config": TINY, "args": {"trainer.max_steps": 50}}}
    grid = _grid(tmp_path, methods=methods, args={"trainer.max_steps": 100})  # e.g. 3 forwards a step against 2
    assert [r.max_steps for r in grid.runs()] == [100] * 3 + [50] * 3
    for run in grid.runs():
        end = 40 if (run.method, run.seed) == ("linear", 2) else run.max_steps  # cut before its budget
        _write_curves(run, {s: 0.5 for s in range(9, end, 10)}, {end - 1: 0.7}, {end - 1: 0.7})
    text = table(grid, [summarize(r) for r in grid.runs()])
    assert "| sst2 | 0.001 | linear | 2 |" in text and "1 pair(s) left out" in text


def test_runs_cut_before_their_validation_pair_on_loss_and_show_a_dash_for_accuracy(tmp_path):
    grid = _grid(tmp_path)
    for run in grid.runs():
        cut = run.method == "linear"  # trained to the end, stopped during the final validation
        final = 0.4 + run.seed / 100 if cut else 0.5
        _write_curves(run, {s: final for s in range(9, 100, 10)}, {} if cut else {99: 0.7}, {} if cut else {99: 0.7})
    text = table(grid, [summarize(r) for r in grid.runs()])
    assert "| sst2 | linear | 0.001 | 3 | 100 | 0.4100 ± 0.0100 | – | – | – | – |" in text
    assert "| sst2 | 0.001 | linear | 3 | -0.0900 | 0.004 | – | – |" in text and "nan" not in text


def test_the_table_command_writes_results_and_plots(tmp_path):
    grid = _grid(tmp_path)
    for run in grid.runs():
        _write_curves(run, {s: 1 / (s + 1) for s in range(0, 50, 5)}, {24: 0.6, 49: 0.7}, {24: 0.6, 49: 0.7})
        with SummaryWriter(str(run.log_dir)) as writer:
            writer.add_scalar("sigma/attention", 1.0 + run.seed, 9)
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps({**_raw_of(grid)}))
    assert compare_main(["table", str(path)]) == 0
    out = tmp_path / "out"
    assert "mean ± std" in (out / "results.md").read_text()
    assert (out / "sst2_curves.png").stat().st_size > 10_000 and (out / "sst2_sigma.png").is_file()


def test_best_lr_plots_draw_each_method_at_its_best_lr_by_dev(tmp_path, monkeypatch):
    from zolightning.compare import plots
    from zolightning.compare.results import best_lrs

    grid = _grid(tmp_path, lrs=[1e-3, 1e-2])
    best_dev = {("const", 1e-3): 0.6, ("const", 1e-2): 0.7, ("linear", 1e-3): 0.8, ("linear", 1e-2): 0.5}
    for run in grid.runs():
        dev = best_dev[run.method, run.lr]
        _write_curves(run, {s: 0.5 for s in range(0, 50, 5)}, {49: dev}, {49: 1 - dev})  # eval disagrees: not used
    assert best_lrs([summarize(r) for r in grid.runs()]) == {("sst2", "const"): 1e-2, ("sst2", "linear"): 1e-3}
    drawn = []
    monkeypatch.setattr(plots, "seed_band", lambda curves, weight: drawn.append(len(curves)))
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(_raw_of(grid)))
    assert compare_main(["table", str(path), "--best-lr"]) == 0
    assert drawn == [3, 3] * 3  # two lines (3 seeds each) in each of the three panels, not four
    drawn.clear()
    assert compare_main(["table", str(path)]) == 0
    assert drawn == [3] * 4 * 3


def test_per_run_lists_each_runs_figures_and_the_missing_ones(tmp_path, capsys):
    from benchmarks.per_run import main as per_run

    grid = _grid(tmp_path)
    first, *rest = grid.runs()
    _write_curves(first, {s: 0.25 for s in range(0, 50, 5)}, {49: 0.7}, {49: 0.8})
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(_raw_of(grid)))
    assert per_run([str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{first.run_id}: final train loss 0.2500, best dev 70.0, last eval 80.0"
    assert len(lines) == len(rest) + 1 and all(line.endswith(")") and "missing" in line for line in lines[1:])


def test_plots_by_forward_passes_map_each_methods_steps_to_its_count(tmp_path, capsys):
    from zolightning.compare.plots import forwards_axis

    grid = _grid(tmp_path)
    per_step = {"const": 2, "linear": 3}
    for run in grid.runs():
        forwards = {s: per_step[run.method] * (s + 1.0) for s in range(9, 50, 10)}
        _write_curves(run, {s: 1 / (s + 1) for s in range(9, 50, 10)}, {49: 0.7}, {49: 0.7}, forwards=forwards)
    to_x = forwards_axis([read_scalars(r.log_dir) for r in grid.runs() if r.method == "linear"])
    assert to_x(np.array([5.0, 10.0, 50.0])).tolist() == [15.0, 30.0, 150.0]  # 0 before the first count
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(_raw_of(grid)))
    assert compare_main(["table", str(path), "--x", "forwards"]) == 0
    assert (tmp_path / "out" / "sst2_curves.png").is_file()
    uncounted = next(r for r in grid.runs() if r.method == "const")
    for event in uncounted.log_dir.iterdir():
        event.unlink()
    _write_curves(uncounted, {s: 0.5 for s in range(9, 50, 10)}, {49: 0.7}, {49: 0.7})  # logged before the count
    assert compare_main(["table", str(path), "--x", "forwards"]) == 2
    assert "no forward counts (train/forwards) logged by const: plot them by step" in capsys.readouterr().err


def test_window_loss_reads_one_lr_folder_and_refuses_to_mix_several(tmp_path):
    from benchmarks.window_loss import window_means

    grid = _grid(tmp_path, lrs=[1e-3, 1e-2])
    for run in grid.runs():
        _write_curves(run, {s: run.lr * 100 + run.seed for s in range(0, 50, 5)}, {}, {})
    const = tmp_path / "out" / "sst2" / "const"
    assert window_means(const, 10, 40, lr="0.01") == {0: 1.0, 1: 2.0, 2: 3.0}
    assert window_means(const, 10, 40, lr="0.001") == pytest.approx({0: 0.1, 1: 1.1, 2: 2.1})
    with pytest.raises(SystemExit, match=r"name one lr with --lr \(found: 0.001, 0.01\)"):
        window_means(const, 10, 40)
    with pytest.raises(SystemExit, match="stopped at step 45, before the window's end 60"):
        window_means(const, 10, 60, lr="0.01")


def test_window_loss_reads_the_baseline_over_its_own_window(tmp_path, monkeypatch, capsys):
    from benchmarks.window_loss import main

    grid = _grid(tmp_path)
    for run in grid.runs():  # the baseline falls twice as slowly: at steps 20-29 it is where linear is at 10-14
        slope = 0.01 if run.method == "const" else 0.02
        _write_curves(run, {s: 1 - slope * s + run.seed / 100 for s in range(0, 40)}, {}, {})
    argv = ["window_loss", str(tmp_path / "out" / "sst2"), "const", "linear", "--start", "10", "--end", "14"]
    monkeypatch.setattr("sys.argv", [*argv, "--baseline-start", "20", "--baseline-end", "28"])
    main()
    assert "steps 10-14 against the baseline's 20-28: +0.000 ± 0.000" in capsys.readouterr().out


def _raw_of(grid: Grid) -> dict:
    methods = {m.name: {"config": m.config, "args": m.args} for m in grid.methods}
    return {
        "name": grid.name,
        "out_dir": str(grid.out_dir),
        "tasks": list(grid.tasks),
        "methods": methods,
        "lrs": list(grid.lrs),
        "seeds": list(grid.seeds),
        "args": grid.args,
        "baseline": grid.baseline,
        "parallel": 2,
    }


def test_a_tiny_grid_runs_once_and_a_rerun_does_nothing(tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(REPO)
    grid = _with_bad_method(_grid(tmp_path, seeds=[0], parallel=2))
    fit_args = [
        "--data.data_dir",
        str(data_dir),
        "--trainer.limit_val_batches",
        "1",
        "--trainer.log_every_n_steps",
        "2",
    ]
    said: list[str] = []
    assert GridRunner(grid, fit_args, say=said.append).run() == 1
    states = {r.method: read_status(r)["state"] for r in grid.runs()}
    assert states == {"const": "done", "linear": "done", "bad": "failed"}
    assert summarize(grid.runs()[0]).figures["forwards"] == 2 * 4  # MeZO's two a step, counted by the optimizer
    bad = next(r for r in grid.runs() if r.method == "bad")
    assert "cosine" in read_status(bad)["error"]  # why it failed, in its status and in what the runner said
    assert any("failed after" in line and "cosine" in line for line in said)
    again: list[str] = []
    assert GridRunner(grid, fit_args, say=again.append).run() == 1  # the failed run is left alone
    assert again[0].startswith("grid t: 0 run(s) to go")


def test_the_last_error_line_of_a_fit_log_says_why_it_failed(tmp_path):
    log = tmp_path / "fit.log"
    log.write_text(
        '12:00:00 INFO started\nTraceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 514.00 MiB.\n"
    )
    assert last_error(log) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 514.00 MiB."
    assert last_error(log, limit=22) == "torch.OutOfMemoryError"
    log.write_text('usage: zolightning fit [-h]\nerror: Parser key "model.lr":\n  Expected a float. Got: x\nend\n')
    assert last_error(log) == 'error: Parser key "model.lr": Expected a float. Got: x'
    log.write_text("12:00:00 INFO all fine\n")
    assert last_error(log) is None and last_error(tmp_path / "missing.log") is None


def _with_bad_method(grid: Grid) -> Grid:
    raw = _raw_of(grid)
    raw["methods"]["bad"] = {"config": TINY, "args": {"model.lr_schedule": "cosine"}}  # not a schedule: fails
    return Grid.from_dict(raw, grid.source)


def test_sigterm_stops_the_grid_and_the_next_call_resumes_it(tmp_path, data_dir):
    raw = _raw_of(_grid(tmp_path, seeds=[0]))
    raw.update(methods={"const": {"config": TINY}}, args={"trainer.max_steps": 100000})
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(raw))
    fit_args = ["--", "--data.data_dir", str(data_dir), "--trainer.val_check_interval", "50000"]
    command = [sys.executable, "-m", "zolightning", "compare", "run", str(path), *fit_args]
    runner = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    log = tmp_path / "out" / "sst2" / "const" / "lr0.001" / "seed0" / "fit.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "first step done" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.5)
    time.sleep(1.0)
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(60) == 128 + signal.SIGTERM, runner.stdout.read()
    run = Grid.load(path).runs()[0]
    assert read_status(run)["state"] == "stopped"
    import torch

    step = torch.load(run.log_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert step >= 1
    finish = ["--trainer.max_steps", str(step + 2)]
    assert compare_main(["run", str(path), *fit_args, *finish]) == 0
    assert read_status(run) == {
        "state": "done",
        "returncode": 0,
        "seconds": read_status(run)["seconds"],
        "resumed": True,
    }
    assert torch.load(run.log_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == step + 2
    assert not math.isnan(summarize(run).figures["final_loss"])


def test_methods_with_their_own_lrs_are_compared_at_their_best_dev_lr(tmp_path):
    methods = {"const": {"config": TINY, "lrs": [1e-3]}, "linear": {"config": TINY, "lrs": [1e-3, 1e-2]}}
    grid = _grid(tmp_path, methods=methods, lrs=None, seeds=[0, 1])
    assert [r.run_id for r in grid.runs()][2:] == [
        "sst2/linear/lr0.001/seed0",
        "sst2/linear/lr0.001/seed1",
        "sst2/linear/lr0.01/seed0",
        "sst2/linear/lr0.01/seed1",
    ]
    for run in grid.runs():
        dev = 0.8 if run.lr == 1e-2 else 0.7  # lr 1e-2 wins on dev
        _write_curves(run, {s: 0.5 for s in range(0, 100, 10)}, {99: dev + run.seed / 100}, {99: dev})
    text = table(grid, [summarize(r) for r in grid.runs()])
    assert "| sst2 | best by dev: 0.01 vs 0.001 | linear | 2 | +0.0000 | – | +10.0 | – |" in text
    with pytest.raises(GridError, match="key 'lrs'"):
        _grid(tmp_path, methods={"m": {"config": TINY}}, lrs=None)


def test_a_method_at_one_lr_is_paired_with_the_baseline_at_each_of_its_lrs(tmp_path):
    methods = {"const": {"config": TINY, "lrs": [1e-3, 2e-3]}, "linear": {"config": TINY, "lrs": [1e-3]}}
    grid = _grid(tmp_path, methods=methods, lrs=None, seeds=[0, 1])
    for run in grid.runs():
        evaluation = {"const": {1e-3: 0.70, 2e-3: 0.90}, "linear": {1e-3: 0.80}}[run.method][run.lr] + run.seed / 100
        _write_curves(run, {s: 0.5 for s in range(0, 100, 10)}, {99: 0.7}, {99: evaluation})
    text = table(grid, [summarize(r) for r in grid.runs()])
    assert "| sst2 | 0.001 | linear | 2 | +0.0000 | – | +10.0 | – |" in text
    assert "| sst2 | 0.001 vs 0.002 | linear | 2 | +0.0000 | – | -10.0 |" in text


def test_a_methods_best_lr_is_paired_with_the_baselines_other_lrs_too(tmp_path):
    lrs = [1e-3, 2e-3]
    grid = _grid(tmp_path, methods={"const": {"config": TINY, "lrs": lrs}, "linear": {"config": TINY, "lrs": lrs}})
    for run in grid.runs():
        dev = 0.8 if (run.method, run.lr) == ("linear", 2e-3) else 0.7  # linear's best lr by dev is 2e-3
        evaluation = {1e-3: 0.70, 2e-3: 0.90}[run.lr] + (0.05 if run.method == "linear" else 0)
        _write_curves(run, {s: 0.5 for s in range(0, 100, 10)}, {99: dev}, {99: evaluation + run.seed / 100})
    text = table(grid, [summarize(r) for r in grid.runs()])
    assert "| sst2 | 0.002 vs 0.001 | linear | 3 | +0.0000 | – | +25.0 | – |" in text
    assert "0.001 vs 0.002" not in text  # only the best lr's cross rows


def test_runs_are_spread_over_the_devices_with_their_own_cuda_visible_devices(tmp_path, monkeypatch):
    started = []

    class FakeFit:
        def __init__(self, command, env, **kwargs):
            started.append(env["CUDA_VISIBLE_DEVICES"])
            self.returncode, self.pid = None, os.getpid()

        def poll(self):
            self.returncode = 0
            return 0

    monkeypatch.setattr("zolightning.compare.runner.subprocess.Popen", FakeFit)
    grid = Grid.from_dict({**_raw_of(_grid(tmp_path)), "devices": [0, 1], "parallel": 2}, tmp_path / "grid.yaml")
    monkeypatch.chdir(REPO)
    assert GridRunner(grid, say=lambda _: None, poll_seconds=0).run() == 0
    assert len(started) == 6 and sorted(started[:4]) == ["0", "0", "1", "1"]  # 2 fits on each GPU at a time
    assert all(read_status(r)["state"] == "done" for r in grid.runs())


def test_a_running_fit_is_not_started_twice_and_a_gone_one_reads_interrupted(tmp_path, capsys):
    grid = _grid(tmp_path)
    live, gone = grid.runs()[:2]
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    for run, pid in ((live, os.getpid()), (gone, finished.pid)):
        run.run_dir.mkdir(parents=True)
        status = {"state": "running", "pid": pid, "host": socket.gethostname()}
        (run.run_dir / "status.json").write_text(json.dumps(status))
    assert read_status(live)["state"] == "running" and read_status(gone)["state"] == "interrupted"
    pending = GridRunner(grid, say=lambda _: None).pending()
    assert live not in pending and gone in pending  # another runner's live fit is left to it; a gone one reruns
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(_raw_of(grid)))
    assert compare_main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{live.run_id:50s} running (step 0/4)" in out and f"{gone.run_id:50s} interrupted" in out


def test_the_status_line_says_how_far_each_running_fit_is(tmp_path):
    from zolightning.compare.runner import progress

    run = _grid(tmp_path).runs()[0]
    assert progress(run) == "step 0/4"
    _write_curves(run, {0: 1.0, 9: 0.9, 19: 0.8}, {}, {})
    assert progress(run) == "step 20/4"


def test_only_selects_runs_matching_any_of_its_comma_separated_parts(tmp_path):
    grid = _grid(tmp_path)
    picked = GridRunner(grid, only="const/lr0.001/seed0,linear", say=lambda _: None).pending()
    assert [r.run_id for r in picked] == [
        "sst2/const/lr0.001/seed0",
        "sst2/linear/lr0.001/seed0",
        "sst2/linear/lr0.001/seed1",
        "sst2/linear/lr0.001/seed2",
    ]


def _one_run_grid(tmp_path, max_steps: int) -> Path:
    raw = _raw_of(_grid(tmp_path, seeds=[0]))
    raw.update(methods={"const": {"config": TINY}}, args={"trainer.max_steps": max_steps})
    path = tmp_path / "grid.yaml"
    path.write_text(json.dumps(raw))
    return path


def _runner(path: Path, data_dir, *extra: str) -> subprocess.Popen:
    fit_args = ["--", "--data.data_dir", str(data_dir), "--trainer.val_check_interval", "50000", *extra]
    command = [sys.executable, "-m", "zolightning", "compare", "run", str(path), *fit_args]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_runners_on_one_grid_never_run_a_fit_twice(tmp_path, data_dir):
    # before: both started the same fit in the same folder (last-v1.ckpt, every step logged twice)
    path = _one_run_grid(tmp_path, 60)
    first, second = _runner(path, data_dir), _runner(path, data_dir)
    outputs = [first.communicate(timeout=240)[0], second.communicate(timeout=240)[0]]
    run = Grid.load(path).runs()[0]
    assert read_status(run)["state"] == "done" and not (run.run_dir / "lock.json").exists()
    assert (run.run_dir / "fit.log").read_text().count("\n$ ") == 1, outputs  # one fit, one command line
    assert not list(run.log_dir.rglob("last-v1.ckpt"))
    codes = sorted([first.returncode, second.returncode])
    assert codes[0] == 0 and codes[1] in (0, 1), outputs  # 1: the loser saw the run held, still running
    loser = outputs[[first.returncode, second.returncode].index(codes[1])]
    assert codes[1] == 0 or "held by runner" in loser


def test_a_killed_runners_orphaned_fit_is_stopped_and_resumed_by_the_next_runner(tmp_path, data_dir):
    import torch

    path = _one_run_grid(tmp_path, 100000)
    runner = _runner(path, data_dir)
    run = Grid.load(path).runs()[0]
    log = run.run_dir / "fit.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "first step done" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.5)
    runner.kill()  # SIGKILL: no handler passes it on; the fit lives on as an orphan
    runner.wait(30)
    orphan = read_status(run)["pid"]
    assert read_status(run)["state"] == "running" and os.path.exists(f"/proc/{orphan}")
    # before: the next runner skipped the orphan's run and exited 0 with the grid incomplete
    finisher = _runner(path, data_dir, "--trainer.max_steps", "10")  # the orphan is past step 10 or stops there
    out = finisher.communicate(timeout=240)[0]
    assert "its runner" in out and "is gone; stopping its fit" in out, out
    status = read_status(run)
    assert finisher.returncode == 0 and status["state"] == "done" and status["resumed"], out
    step = torch.load(run.log_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step >= 10 and (run.run_dir / "fit.log").read_text().count("\n$ ") == 2


def test_a_runner_exits_non_zero_naming_runs_it_did_not_finish(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    grid = _grid(tmp_path, seeds=[0])
    held = grid.runs()[0]
    held.run_dir.mkdir(parents=True)
    lock = {"runner_pid": 1, "fit_pid": 2, "host": "elsewhere", "started": "now"}
    (held.run_dir / "lock.json").write_text(json.dumps(lock))
    said: list[str] = []
    assert GridRunner(grid, say=said.append, only=held.run_id).run() == 1  # before: 0, the grid incomplete
    assert said[0].startswith("grid t: 0 run(s) to go")
    assert any(f"not done: {held.run_id}" in line and "host elsewhere" in line for line in said), said
    assert (held.run_dir / "lock.json").exists()  # another host's lock is never taken


def test_plot_lines_share_their_methods_colour_and_metrics_read_in_percent(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from zolightning.compare import plots

    styles = plots._styles([("mezo", 1e-5), ("mezo", 3e-5), ("hizoo", 1e-5)], plt)
    assert styles[("mezo", 1e-5)]["color"] == styles[("mezo", 3e-5)]["color"] != styles[("hizoo", 1e-5)]["color"]
    assert styles[("mezo", 1e-5)]["linestyle"] != styles[("mezo", 3e-5)]["linestyle"]
    grid = _grid(tmp_path)
    for run in grid.runs():
        _write_curves(run, {s: 1.0 - s / 200 for s in range(0, 100, 10)}, {49: 0.7, 99: 0.75}, {49: 0.6, 99: 0.8})
    band = (np.array([1.0, 2.0]), np.array([0.5, 0.6]), np.array([0.01, 0.01]))  # a fraction, as logged
    monkeypatch.setattr(plots, "seed_band", lambda curves, weight: band)
    drawn = []
    real_plot = matplotlib.axes.Axes.plot

    def plot(axis, x, y, *args, **kwargs):
        drawn.append(max(y))
        return real_plot(axis, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    plots.plot_task(grid, "sst2", tmp_path / "plots")
    assert drawn == [0.6, 0.6] + [60.0] * 4  # loss as it is (two methods), dev and eval accuracy in percent
