"""Feed zolightning bad, hostile and interrupted inputs on the tiny model (CPU) and tabulate what each one got.

    python -m benchmarks.reliability_probe --data-dir ../shared/data --out docs/reliability.md

Every case runs the real command in its own process and records its exit code and the last line it printed to
stderr; a case passes when it exits as expected, prints one `error:` line where it refuses, and runs no attacker
code (the payload checkpoints create a marker file when unpickled). The table is written to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TINY = ["--config", "configs/tiny/sst2_mezo.yaml", "--trainer.enable_progress_bar", "false"]


class Payload:
    """Unpickling this runs a shell command that creates `marker`: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@dataclass
class Case:
    name: str
    command: list[str]  # after `python -m zolightning`
    expect: int  # exit code
    group: str
    marker: Path | None = None  # must not exist afterwards
    check: object = None  # optional callable(Result) -> str | None (a problem)
    signal_after: str | None = None  # send SIGTERM once this text shows in stderr
    note: str = ""


@dataclass
class Result:
    code: int
    last_line: str
    stderr: str
    problems: list[str] = field(default_factory=list)


def run_case(case: Case, timeout: float = 300) -> Result:
    command = [sys.executable, "-m", "zolightning", *case.command]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if case.signal_after is None:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
        code, stderr = done.returncode, done.stderr
    else:
        code, stderr = _run_and_signal(command, env, case.signal_after, timeout)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    result = Result(code, lines[-1] if lines else "", stderr)
    if code != case.expect:
        result.problems.append(f"exit {code}, expected {case.expect}")
    if case.expect == 2 and not result.last_line.startswith("error: "):
        result.problems.append("no one-line error")
    if case.marker is not None and case.marker.exists():
        result.problems.append("ATTACKER CODE RAN")
    if case.check is not None and (problem := case.check(result)):
        result.problems.append(problem)
    return result


def _run_and_signal(command, env, text: str, timeout: float) -> tuple[int, str]:
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"probe-{os.getpid()}-{time.monotonic_ns()}.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and text not in log.read_text() and process.poll() is None:
            time.sleep(0.2)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        code = process.wait(timeout)
    output = log.read_text()
    log.unlink()
    return code, output


def _write_rows(path: Path, content: bytes) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        (path / f"{split}.jsonl").write_bytes(content)


def _resumed_to(logs: Path, step: int, result: Result) -> str | None:
    """The resumed run continued the stopped one's folder and ended at `step`."""
    if "--ckpt_path last: resuming" not in result.stderr:
        return "did not say which checkpoint it resumed"
    newest = max(logs.glob("*/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    reached = torch.load(newest, map_location="cpu", weights_only=True)["global_step"]
    return None if reached == step else f"last.ckpt at step {reached}, expected {step}"


def build_cases(work: Path, data: Path) -> list[Case]:
    logs = ["--trainer.logger.init_args.save_dir", str(work / "logs")]
    fit = ["fit", *TINY, "--data.data_dir", str(data), *logs]
    marker = work / "code-ran"
    crafted = work / "crafted.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.0", "evil": Payload(marker)}, crafted)
    (work / "empty.ckpt").write_bytes(b"")
    (work / "truncated.ckpt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    bad = work / "bad_data"
    good_row = b'{"sentence": "fine", "label": 1}\n'
    _write_rows(bad / "utf8" / "sst2", good_row * 40 + b'{"sentence": "caf\xe9", "label": 0}\n')
    _write_rows(bad / "types" / "sst2", good_row * 40 + b'{"sentence": ["a"], "label": 0}\n')
    _write_rows(bad / "json" / "sst2", good_row * 40 + b'{"sentence": "cut')
    _write_rows(bad / "empty" / "sst2", b"")
    short = ["--trainer.max_steps", "1", "--trainer.logger", "false"]
    cases = [
        Case(
            f"crafted checkpoint: {c}",
            [c, *TINY, "--data.data_dir", str(data), "--ckpt_path", str(crafted)],
            2,
            "security",
            marker,
        )
        for c in ("fit", "validate", "test", "predict")
    ]
    cases.append(
        Case("crafted checkpoint: export", ["export", str(crafted), str(work / "exported")], 2, "security", marker)
    )
    cases += [
        Case("lr 1e3 (loss stalls at ln 2)", [*fit, "--model.lr", "1e3"], 1, "learning"),
        Case("lr 1e30", [*fit, "--model.lr", "1e30"], 1, "learning"),
        Case("lr 3e38 (beyond float32)", [*fit, "--model.lr", "3e38"], 2, "learning"),
        Case("lr -1", [*fit, "--model.lr", "-1"], 2, "learning"),
        Case("lr nan", [*fit, "--model.lr", "nan"], 2, "learning"),
        Case("eps 0", [*fit, "--model.eps", "0"], 2, "learning"),
        Case("shipped tiny config, whole budget", fit, 0, "learning"),
    ]
    for kind in ("utf8", "types", "json", "empty"):
        cases.append(Case(f"data: {kind}", ["fit", *TINY, "--data.data_dir", str(bad / kind), *short], 2, "data"))
    cases += [
        Case("data_dir missing", ["fit", *TINY, "--data.data_dir", str(work / "nowhere"), *short], 2, "data"),
        Case("batch larger than the training split", [*fit, "--data.batch_size", "128"], 2, "data"),
        Case("unknown task", [*fit, "--data.task", "sst3"], 2, "config"),
        Case("unknown model", [*fit, "--model.model", "no-such-model"], 2, "config"),
        Case("unknown option", [*fit, "--model.lrr", "1"], 2, "config"),
        Case("strategy built on gradients", [*fit, "--trainer.strategy", "deepspeed_stage_3"], 2, "config"),
        Case("empty checkpoint", [*fit, "--ckpt_path", str(work / "empty.ckpt")], 2, "checkpoints"),
        Case("truncated checkpoint", [*fit, "--ckpt_path", str(work / "truncated.ckpt")], 2, "checkpoints"),
        Case("missing checkpoint", [*fit, "--ckpt_path", str(work / "none.ckpt")], 2, "checkpoints"),
    ]
    fresh = ["--trainer.logger.init_args.save_dir", str(work / "fresh")]
    cases.append(Case("--ckpt_path last with no run yet", [*fit, *fresh, "--ckpt_path", "last"], 2, "checkpoints"))
    long = [*fit, "--trainer.max_steps", "100000", "--trainer.val_check_interval", "100000"]
    stop = Case("SIGTERM during training", long, 128 + signal.SIGTERM, "interruptions", signal_after="first step done")
    stop.check = lambda r: None if "stopped at step" in r.stderr else "no 'stopped at step' line"
    resume = Case(
        "… then --ckpt_path last to step 12",
        [*fit, "--trainer.max_steps", "12", "--ckpt_path", "last"],
        0,
        "interruptions",
    )
    resume.check = lambda r: _resumed_to(work / "logs", 12, r)
    cases += [stop, resume]
    return cases


def table(cases: list[Case], results: list[Result], seconds: float) -> str:
    passed = sum(not r.problems for r in results)
    lines = [
        "# Reliability probe",
        "",
        "Generated by `python -m benchmarks.reliability_probe --data-dir ../shared/data --out docs/reliability.md`"
        f" (tiny model, CPU, {len(cases)} cases in {seconds:.0f} s): each case is the real command in its own"
        " process. Exit codes: 0 done, 1 a run stopped as unhealthy, 2 refused (one `error:` line),"
        " 143 stopped by SIGTERM (checkpoint saved).",
        "",
        f"**{passed} of {len(cases)} cases as expected; attacker code ran "
        f"{sum('ATTACKER CODE RAN' in r.problems for r in results)} times.**",
        "",
        "| group | input | exit | expected | last line on stderr | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for case, result in zip(cases, results):
        line = result.last_line.replace("|", "\\|")[:240]
        verdict = "ok" if not result.problems else "; ".join(result.problems)
        lines.append(f"| {case.group} | {case.name} | {result.code} | {case.expect} | `{line}` | {verdict} |")
    return "\n".join(lines + FOOTER) + "\n"


FOOTER = [
    "",
    "Faults the suite covers that this table does not re-run: SIGKILL while `last.ckpt` is written and ENOSPC in",
    "the writer (tests/test_stopping.py: the previous checkpoint stays intact, `--ckpt_path last` resumes it);",
    "two `compare run` on one grid, a killed runner's orphan fits, the exit code of an incomplete grid",
    "(tests/test_compare.py); data files of random bytes, cut anywhere, rows of any JSON shape, non-UTF-8 and",
    "huge rows (tests/test_data_fuzz.py, hypothesis). GPU: determinism and out-of-memory isolation in",
    "docs/benchmarks.md (Reliability on the GPU).",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, help="a new, empty folder for the cases' files (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reliability.md")
    args = parser.parse_args(argv)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="zolightning-probe-"))
    args.work.mkdir(parents=True, exist_ok=True)
    if any(args.work.iterdir()):  # earlier runs' logs would change what --ckpt_path last finds
        parser.error(f"--work {args.work} is not empty")
    cases = build_cases(args.work, args.data_dir.resolve())
    start, results = time.monotonic(), []
    for case in cases:
        result = run_case(case)
        results.append(result)
        print(json.dumps({"case": case.name, "exit": result.code, "problems": result.problems}), flush=True)
    args.out.write_text(table(cases, results, time.monotonic() - start))
    print(f"wrote {args.out}")
    return 0 if all(not r.problems for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
