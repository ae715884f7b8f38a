"""benchmarks/forward_budget.py: loss against forward passes, from logged counts or a rule's fixed count."""

import pytest

from tests.test_compare import _grid, _write_curves


def _argv(tmp_path, *extra):
    task_dir = str(tmp_path / "out" / "sst2")
    return ["forward_budget", task_dir, "const@0.001", "linear@0.001", "--out", str(tmp_path / "f.png"), *extra]


def test_each_series_reaches_its_forward_count_and_tail_loss(tmp_path, monkeypatch, capsys):
    from benchmarks.forward_budget import main

    grid = _grid(tmp_path)
    for run in grid.runs():  # linear logs 3 forwards a step; const predates the count
        counted = run.method == "linear"
        forwards = {s: 3.0 * (s + 1) for s in range(50)} if counted else None
        _write_curves(run, {s: (0.8 if s < 44 else 0.4) + run.seed / 100 for s in range(50)}, {}, {}, forwards=forwards)
    monkeypatch.setattr("sys.argv", _argv(tmp_path, "--per-step", "const=2"))
    main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["const@0.001", "forwards", "100", "last-10%", "loss", "0.4100", "±", "0.0100"]
    assert lines[1].split()[:3] == ["linear@0.001", "forwards", "150"]
    assert (tmp_path / "f.png").is_file()


def test_a_run_without_counts_needs_its_fixed_count(tmp_path, monkeypatch):
    from benchmarks.forward_budget import main

    for run in _grid(tmp_path).runs():
        _write_curves(run, {s: 1.0 for s in range(20)}, {}, {})
    monkeypatch.setattr("sys.argv", _argv(tmp_path))
    with pytest.raises(SystemExit, match="const@0.001: no train/forwards logged; give its fixed count"):
        main()
