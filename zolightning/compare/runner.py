"""Run a grid's fits as subprocesses, several per device, resuming what a cut left behind.

Each run owns `run_dir/`: `tb/` (TensorBoard events, `config.yaml`, `checkpoints/`), `fit.log` (its output)
and `status.json` (`running` with the fit's pid while it runs, its outcome once it exits). A run whose status
says `done`, or `running` with a live fit on this machine (another runner's), is not started again; a run
that was stopped (SIGTERM/Ctrl-C, or the grid's own stop) resumes from its `last.ckpt`; a failed run is left
alone unless `retry_failed` is set. SIGTERM/SIGINT to the runner are passed on once to every fit, which saves
its step and exits (zolightning's GracefulStop); the runner then waits for them and stops.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zolightning.compare.grid import Grid, RunSpec
from zolightning.compare.locks import RunLock, alive

STOPPED_CODES = {128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT}


def read_status(run: RunSpec) -> dict | None:
    """The run's status.json; a `running` one whose fit is gone (its runner was killed) reads `interrupted`."""
    path = run.run_dir / "status.json"
    if not path.is_file():
        return None
    status = json.loads(path.read_text())
    if status.get("state") == "running" and not _alive(status.get("pid"), status.get("host")):
        status["state"] = "interrupted"
    return status


def _alive(pid: int | None, host: str | None) -> bool:
    # another machine's fit: its runner is not here to finish it
    return host == socket.gethostname() and alive(pid)


_ERROR_LINE = re.compile(r"[\w.]*(Error|Exception)\b.*|(\S+: )?error: .*")  # a traceback's last line, a CLI refusal


def last_error(log_path: Path, limit: int = 200) -> str | None:
    """The last error of a fit's log (why it failed, e.g. out of GPU memory) with its indented continuation
    lines, on one line shortened to `limit`."""
    if not log_path.is_file():
        return None
    lines = log_path.read_text(errors="replace").splitlines()[-400:]
    starts = [i for i, line in enumerate(lines) if _ERROR_LINE.fullmatch(line)]
    if not starts:
        return None
    error = [lines[starts[-1]]]
    for line in lines[starts[-1] + 1 :]:
        if not line[:1].isspace():
            break
        error.append(line.strip())
    return " ".join(error)[:limit]


def fit_command(run: RunSpec, extra_args: Sequence[str] = ()) -> list[str]:
    """The `zolightning fit` call of a run: its config, its options, its log folder, and a resume if cut."""
    command = [sys.executable, "-m", "zolightning", "fit", "--config", str(run.config), *run.args, *extra_args]
    command += [
        "--trainer.logger.class_path=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.init_args.save_dir={run.run_dir}",
        "--trainer.logger.init_args.name=",
        "--trainer.logger.init_args.version=tb",
    ]
    last = run.log_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        command += ["--ckpt_path", str(last)]
    return command


def progress(run: RunSpec) -> str:
    """The run's progress as step N/M: N from its logged training loss, M from the grid's max_steps if set."""
    from zolightning.compare.results import read_scalars

    try:
        step = max(read_scalars(run.log_dir).get("train/loss", {}), default=-1) + 1
    except Exception:  # events being written: the next status will read them
        return "step ?"
    return f"step {step}/{run.max_steps or '?'}"


@dataclass
class _Running:
    run: RunSpec
    process: subprocess.Popen
    device: int | None
    started: float
    resumed: bool
    lock: RunLock


class GridRunner:
    """Starts the grid's pending runs into free slots (`parallel` per device) until all have exited."""

    def __init__(
        self,
        grid: Grid,
        extra_args: Sequence[str] = (),
        retry_failed: bool = False,
        only: str | None = None,
        say: Callable[[str], None] = print,
        poll_seconds: float = 1.0,
        status_every: float = 300.0,
    ) -> None:
        self.grid, self.extra_args, self.say = grid, tuple(extra_args), say
        self.retry_failed, self.only = retry_failed, only
        self.poll_seconds, self.status_every = poll_seconds, status_every
        self.running: list[_Running] = []
        self.stop_signal: int | None = None
        self.threads = "1"
        self.held_elsewhere: dict[str, str] = {}  # run id -> the runner that holds it

    def pending(self) -> list[RunSpec]:
        todo = []
        for run in self.selected():
            if self._startable(run):
                todo.append(run)
        return todo

    def _startable(self, run: RunSpec) -> bool:
        """Whether the run still needs a fit: read afresh before every start (another runner may have run it)."""
        status = read_status(run) or {}
        state = status.get("state")
        if state == "done" or (state == "failed" and not self.retry_failed):
            return False
        lock = RunLock(run.run_dir, self.say)
        owner = lock.owner()
        if owner is None and state == "running" and lock.holder() is None:  # a live fit no lock speaks for
            owner = f"its fit {status.get('pid')} (no lock: started by an older runner)"
        if owner is not None:
            self.held_elsewhere[run.run_id] = owner
            return False
        # `running` without a live holder: its runner was killed; an orphaned fit is stopped and resumed
        return True

    def run(self) -> int:
        """Run everything pending; 0 when every run of the grid is done, 1 if some failed, 128+sig if stopped."""
        self.grid.check_configs()
        todo = self.pending()
        total = len(todo)
        slots = [d for d in (self.grid.devices or (None,)) for _ in range(self.grid.parallel)]
        self.threads = str(max(1, (os.cpu_count() or 1) // len(slots)))
        self.say(f"grid {self.grid.name}: {total} run(s) to go, {len(slots)} at a time, in {self.grid.out_dir}")
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        finished, last_status = 0, time.monotonic()
        try:
            while (todo and self.stop_signal is None) or self.running:
                busy = [r.device for r in self.running]
                while todo and self.stop_signal is None and len(self.running) < len(slots):
                    run = todo.pop(0)
                    lock = RunLock(run.run_dir, self.say)
                    if not self._startable(run) or not lock.acquire():
                        self.held_elsewhere.setdefault(run.run_id, lock.owner() or "another runner")
                        continue
                    free = next(d for d in slots if busy.count(d) < slots.count(d))
                    busy.append(free)
                    self._start(run, free, lock)
                for item in self._exited():
                    finished += 1
                    self._record(item, finished, total)
                if time.monotonic() - last_status > self.status_every:
                    last_status = time.monotonic()
                    self._say_status()
                time.sleep(self.poll_seconds)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self._exit_code()

    def _start(self, run: RunSpec, device: int | None, lock: RunLock) -> None:
        self.held_elsewhere.pop(run.run_id, None)
        (run.run_dir / "status.json").unlink(missing_ok=True)
        command = fit_command(run, self.extra_args)
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", self.threads)  # fits sharing a machine must not oversubscribe its cores
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(device)
        log = open(run.run_dir / "fit.log", "a")  # noqa: SIM115 - closed by the child's exit
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        # A session of its own: a signal to the runner's process group must not reach the fit twice.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        lock.record_fit(process.pid)
        running = {"state": "running", "pid": process.pid, "host": socket.gethostname(), "runner_pid": os.getpid()}
        (run.run_dir / "status.json").write_text(json.dumps(running, indent=1) + "\n")
        resumed = "--ckpt_path" in command
        where = "CPU" if device is None else f"GPU {device}"
        self.say(f"start {run.run_id} on {where}{' (resuming from last.ckpt)' if resumed else ''}")
        self.running.append(_Running(run, process, device, time.monotonic(), resumed, lock))

    def _exited(self) -> list[_Running]:
        done = [r for r in self.running if r.process.poll() is not None]
        self.running = [r for r in self.running if r.process.poll() is None]
        return done

    def _record(self, item: _Running, finished: int, total: int) -> None:
        code, seconds = item.process.returncode, time.monotonic() - item.started
        state = "done" if code == 0 else "stopped" if code in STOPPED_CODES else "failed"
        status = {"state": state, "returncode": code, "seconds": round(seconds, 1), "resumed": item.resumed}
        error = last_error(item.run.run_dir / "fit.log") if state == "failed" else None
        if error:
            status["error"] = error
        (item.run.run_dir / "status.json").write_text(json.dumps(status, indent=1) + "\n")
        item.lock.release()
        why = f": {error}" if error else ""
        note = "" if state != "failed" else f" (exit {code}{why}; see {item.run.run_dir / 'fit.log'})"
        self.say(f"[{finished}/{total}] {item.run.run_id}: {state} after {seconds:.0f} s{note}")

    def _say_status(self) -> None:
        now = time.monotonic()
        running = ", ".join(f"{r.run.run_id} ({progress(r.run)}, {now - r.started:.0f} s)" for r in self.running)
        self.say(f"running: {running or 'none'}")

    def _on_signal(self, signum: int, frame) -> None:
        if self.stop_signal is not None:
            return  # one signal per fit: a second would make it stop without saving its step
        self.stop_signal = signum
        self.say(f"{signal.Signals(signum).name}: stopping {len(self.running)} run(s) at the end of their step")
        for item in self.running:
            item.process.send_signal(signal.SIGTERM)

    def _exit_code(self) -> int:
        """128 + the signal if stopped; else 0 only when every run asked for is done, 1 naming those that are not."""
        if self.stop_signal is not None:
            return 128 + self.stop_signal
        states = {r.run_id: (read_status(r) or {}).get("state") or "not started" for r in self.selected()}
        not_done = {run_id: state for run_id, state in states.items() if state != "done"}
        if not not_done:
            return 0
        for run_id, state in not_done.items():
            owner = self.held_elsewhere.get(run_id)
            self.say(f"not done: {run_id}: {state}" + (f" (held by {owner})" if owner else ""))
        self.say(f"{len(not_done)} of {len(states)} run(s) not done; run again to resume them")
        return 1

    def selected(self) -> list[RunSpec]:
        wanted = None if self.only is None else [part for part in self.only.split(",") if part]
        return [r for r in self.grid.runs() if wanted is None or any(part in r.run_id for part in wanted)]
