"""The benchmark of record: `zolightning fit` itself, timed as a user lives it, beside the isolated step.

    python -m benchmarks.fit_throughput --model $GGUF --data-dir $DATA --cases sst2-bf16 sst2-fp32 boolq-bf16
    python -m benchmarks.fit_throughput --model $GGUF --data-dir $DATA --cases squad-val shared4

Each fit case launches `python -m zolightning fit` with the task's config (the default path: `noise: auto`,
`fast_forward: auto`) for `--steps` steps, validating at the middle and the end, and reports from its log and
TensorBoard events: wall seconds from launch to the first step (model loading and compilation included),
the fit's own first-step seconds and compile seconds, steady steps/s and examples/s after the first step
(validation excluded), seconds per validation, peak GPU memory, recompiles and eagerly scored batches after
warm-up. Then, in this process, the isolated step at the fit's most frequent training shape: ZOSGD (philox,
sync=False) with the compiled, planned forward on a random batch of that shape, timed back to back.

Special cases: `squad-val` is `zolightning validate` on SQuAD's 500 dev rows (generation eval);
`shared4` runs four SST-2 bf16 fits on one GPU at once and reports when each made its first step.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

FIT_CASES = {  # name: (config, precision, dtype)
    "sst2-bf16": ("configs/sst2/mezo.yaml", "bf16-true", "bfloat16"),
    "sst2-fp32": ("configs/sst2/mezo.yaml", "32-true", "float32"),
    "boolq-bf16": ("configs/boolq/mezo.yaml", "bf16-true", "bfloat16"),
}
PATTERNS = {
    "compile_s": r"scoring forward compiled in ([\d.]+) s",
    "first_step_s": r"first step done ([\d.]+) s after the fit started",
    "steps_per_s": r"trained to step \d+: ([\d.]+) steps/s",
    "val_s": r"validation at step \d+ took ([\d.]+) s",
    "plan": r"compiling the scoring forward for (rows .*shapes\))",
    "path": r"(ZO path on .*)",
}


@dataclass
class Launched:
    name: str
    process: subprocess.Popen
    start: float
    lines: list[str] = field(default_factory=list)
    first_step_wall: float | None = None

    def read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)
            if self.first_step_wall is None and "first step done" in line:
                self.first_step_wall = time.perf_counter() - self.start

    def found(self, key: str) -> list[str]:
        return [m.group(1) for line in self.lines for m in [re.search(PATTERNS[key], line)] if m]


def launch(name: str, command: list[str]) -> tuple[Launched, threading.Thread]:
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    run = Launched(name, process, time.perf_counter())
    reader = threading.Thread(target=run.read, daemon=True)
    reader.start()
    return run, reader


def fit_command(args, case: str, logs: Path, steps: int, extra: list[str] = ()) -> list[str]:
    config, precision, dtype = FIT_CASES[case]
    return [
        sys.executable, "-m", "zolightning", "fit", "--config", config, "--model.model", args.model,
        "--data.data_dir", args.data_dir, "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", str(max(steps // 2, 1)), "--trainer.precision", precision,
        "--model.dtype", dtype, "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(logs), "--trainer.logger.init_args.name", case, *extra,
    ]  # fmt: skip


def events(run_dir: Path) -> dict[str, list[float]]:
    from benchmarks.read_curves import scalars

    return {tag: [v for _, v in sorted(curve.items())] for tag, curve in scalars(run_dir).items()}


def finish(run: Launched, reader: threading.Thread, timeout: float) -> int:
    try:
        code = run.process.wait(timeout)
    except subprocess.TimeoutExpired:
        run.process.terminate()
        code = run.process.wait(30)
    reader.join(10)
    if code != 0:
        print(f"{run.name}: exit {code}\n" + "".join(run.lines[-25:]), file=sys.stderr)
    return code


def fit_case(args, case: str, logs: Path) -> dict:
    launched_at = time.strftime("%H:%M:%S")
    run, reader = launch(case, fit_command(args, case, logs, args.steps, args.fit_args.split()))
    code = finish(run, reader, args.timeout)
    if args.log_dir:  # the fit's own log lines (timestamps of each phase), progress bars left out
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)
        lines = [line for line in run.lines if re.match(r"\d\d:\d\d:\d\d ", line)]
        (Path(args.log_dir) / f"{case}.log").open("a").write(f"launched {launched_at}\n" + "".join(lines))
    curves = events(sorted((logs / case).glob("version_*"))[-1])
    steps_per_s = float((run.found("steps_per_s") or ["nan"])[0])
    val = [float(v) for v in run.found("val_s")]
    return {
        "case": case,
        "exit": code,
        "path": (run.found("path") or ["?"])[0],
        "plan": (run.found("plan") or ["(eager)"])[0],
        "launch_to_first_step_s": run.first_step_wall,
        "first_step_s": float((run.found("first_step_s") or ["nan"])[0]),
        "compile_s": float((run.found("compile_s") or ["0"])[0]),
        "steps_per_s": steps_per_s,
        "step_ms": 1e3 / steps_per_s,  # the whole run after step 1: step-graph captures and first replays included
        # steady: the median logging interval (perf/step_seconds, 10 steps each), the first two left out
        "steady_step_ms": 1e3 * statistics.median(curves.get("perf/step_seconds", [float("nan")] * 3)[2:]),
        "val_s": statistics.mean(val) if val else float("nan"),
        "peak_gib": max(curves.get("perf/peak_mem_gib", [float("nan")])),
        "recompiles": (curves.get("perf/recompiles") or [float("nan")])[-1],
        "eager_batches": (curves.get("perf/eager_batches") or [float("nan")])[-1],
    }


def isolated_step_ms(args, case: str) -> tuple[float, float, tuple[int, int]]:
    """Our step at the case's most frequent training shape, in this process, with the same dtype and plan:
    (ms queued kernel by kernel, ms replayed as a step graph, the shape)."""
    import torch

    from benchmarks.step_time import random_batch
    from benchmarks.timing import timed
    from zolightning.data import TaskDataModule
    from zolightning.forward.fast_forward import FastScoringModel
    from zolightning.forward.scoring import batch_loss
    from zolightning.forward.shape_plan import plan_shapes
    from zolightning.models import load_causal_lm
    from zolightning.optim import ZOOptimizer

    config, _, dtype = FIT_CASES[case]
    task = Path(config).parent.name
    data = TaskDataModule(task=task, tokenizer=args.model, data_dir=args.data_dir)
    data.setup()
    plan = plan_shapes(data.scoring_shapes())
    train = next(s for s in data.scoring_shapes() if s.name == "train")
    shape = Counter(plan.bucket(train.rows, w) for w in train.widths).most_common(1)[0][0]
    model = load_causal_lm(args.model, dtype=dtype).cuda()
    scorer = FastScoringModel(model, plan=plan)
    scorer.trunk.warm_up(torch.device("cuda"), progress=lambda line: None)
    batch = random_batch(model.config.vocab_size, shape[0], shape[1])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = ZOOptimizer(params, lr=1e-9, eps=1e-3, seed=0, noise="philox", sync=False)

    def steps():
        for _ in range(5):
            if optimizer.step_graphs is not None:
                optimizer.step_graphs.bind(batch)
            optimizer.step(lambda: batch_loss(scorer, batch)[0])

    eager = timed(steps, 20) / 5 * 1e3
    optimizer.capture_steps(pool=scorer.trunk.pool)  # the step as a fit replays it: one CUDA graph
    return eager, timed(steps, 20) / 5 * 1e3, shape


def squad_validation(args, logs: Path) -> dict:
    command = [
        sys.executable, "-m", "zolightning", "validate", "--config", "configs/squad/mezo.yaml",
        "--model.model", args.model, "--data.data_dir", args.data_dir, "--data.eval_during_fit", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(logs),
    ]  # fmt: skip
    if args.squad_eval_batch:
        command += ["--data.eval_batch_size", str(args.squad_eval_batch)]
    run, reader = launch("squad-val", command)
    code = finish(run, reader, args.timeout)
    val = run.found("val_s")
    batch = args.squad_eval_batch or "config's"
    case = f"squad-val (500 dev rows, generation, eval batch {batch})"
    return {"case": case, "exit": code, "val_s": float(val[0]) if val else None}


def shared_fits(args, logs: Path, count: int = 4) -> dict:
    runs = [launch(f"shared{i}", fit_command(args, "sst2-bf16", logs / f"shared{i}", 100)) for i in range(count)]
    codes = [finish(run, reader, args.timeout) for run, reader in runs]
    return {"case": f"{count} SST-2 bf16 fits on one GPU", "exits": codes,
            "launch_to_first_step_s": [run.first_step_wall for run, _ in runs],
            "compile_s": [float(next(iter(run.found("compile_s")), "nan")) for run, _ in runs]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model name or .gguf path (the tokenizer matters)")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--cases", nargs="+", default=["sst2-bf16", "sst2-fp32", "boolq-bf16"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--timeout", type=float, default=400, help="seconds per launched process")
    parser.add_argument("--no-isolated", action="store_true", help="skip the isolated step measurement")
    parser.add_argument("--squad-eval-batch", type=int, help="squad-val: override the config's eval_batch_size")
    parser.add_argument("--fit-args", default="", help="more fit flags for each case: '--model.step_graphs false'")
    parser.add_argument("--log-dir", help="append each fit's log lines to <log-dir>/<case>.log")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="fit_throughput_"))
    for case in args.cases:
        if case == "squad-val":
            print(squad_validation(args, logs), flush=True)
        elif case == "shared4":
            print(shared_fits(args, logs), flush=True)
        else:
            row = fit_case(args, case, logs)
            if not args.no_isolated and row["exit"] == 0:
                row["isolated_step_ms"], row["isolated_graph_step_ms"], row["isolated_shape"] = isolated_step_ms(
                    args, case
                )
                row["steady_fit_step_over_isolated"] = row["steady_step_ms"] / row["isolated_step_ms"]
                row["steady_fit_step_over_isolated_graph"] = row["steady_step_ms"] / row["isolated_graph_step_ms"]
            print(row, flush=True)


if __name__ == "__main__":
    main()
