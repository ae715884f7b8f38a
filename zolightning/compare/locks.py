"""One runner per run folder: a lock file that says who runs a fit, and what a later runner does with it.

`run_dir/lock.json` is created atomically, content and all (a hard link of a finished draft), by the runner that
starts the run's fit, and names that runner, the fit (whose process group it leads: fits start in a session of
their own) and the host. A second runner finds it and reads it:

- held by a live runner (this host), or by another host: the run is not this runner's; it is left alone and
  reported as not done;
- its runner is gone but its fit still runs (the runner was killed with SIGKILL, which no handler sees): an
  orphan; the new runner stops it as a user would (SIGTERM to its process group: the fit saves its step and
  exits), then takes the lock over and resumes the run from its `last.ckpt`;
- its runner and fit are both gone: stale; taken over.

A take-over renames the old lock away first (atomic: of two runners taking over at once, one wins).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

LOCK_NAME = "lock.json"


def alive(pid: int | None) -> bool:
    """Whether a process of this host with this pid exists."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child nobody has reaped yet (a killed runner's fit, under a PID 1 that does not reap)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RunLock:
    """The lock of one run folder, held by this process (the runner) once `acquire` returned True."""

    def __init__(self, run_dir: Path, say=print, stop_seconds: float = 120.0):
        self.path = Path(run_dir) / LOCK_NAME
        self.say, self.stop_seconds = say, stop_seconds
        self.host, self.pid = socket.gethostname(), os.getpid()

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):  # absent, or being written
            return None

    def owner(self) -> str | None:
        """Who else holds the run (a sentence), or None when this runner may take it."""
        holder = self.holder()
        if holder is None or holder.get("runner_pid") == self.pid and holder.get("host") == self.host:
            return None
        if holder.get("host") != self.host:
            return f"runner {holder.get('runner_pid')} on host {holder.get('host')}"
        if alive(holder.get("runner_pid")):
            return f"runner {holder['runner_pid']} (started {holder.get('started', '?')})"
        return None  # stale or orphaned: acquire takes it over

    def acquire(self) -> bool:
        """Take the lock (stopping an orphaned fit first); False when another live runner holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._create():
            return True
        if self.owner() is not None:
            return False
        holder = self.holder() or {}
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{self.pid}")
        try:
            os.replace(self.path, aside)  # whoever moves it first takes over
        except FileNotFoundError:
            return self._create()
        fit = holder.get("fit_pid")
        if alive(fit):
            self.say(f"{self.path.parent}: its runner {holder.get('runner_pid')} is gone; stopping its fit {fit}")
            self._stop(fit)
        aside.unlink(missing_ok=True)
        return self._create()

    def record_fit(self, fit_pid: int) -> None:
        self._write(fit_pid, exclusive=False)

    def release(self) -> None:
        holder = self.holder()
        if holder and holder.get("runner_pid") == self.pid and holder.get("host") == self.host:
            self.path.unlink(missing_ok=True)

    def _create(self) -> bool:
        try:
            self._write(None, exclusive=True)
        except FileExistsError:
            return False
        return True

    def _write(self, fit_pid: int | None, exclusive: bool) -> None:
        """Write the lock whole or not at all: a lock seen half-written (empty) reads as no holder, and another
        runner would take it over (two fits of one run, seen under load). The record goes to a file of this
        runner's first, then is linked (exclusive: fails if a lock exists) or renamed into place."""
        record = {"runner_pid": self.pid, "fit_pid": fit_pid, "host": self.host}
        record["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
        draft = self.path.with_name(f"{LOCK_NAME}.{self.pid}.draft")
        draft.write_text(json.dumps(record, indent=1) + "\n")
        try:
            if exclusive:
                os.link(draft, self.path)
            else:
                os.replace(draft, self.path)
        finally:
            draft.unlink(missing_ok=True)

    def _stop(self, fit_pid: int) -> None:
        """SIGTERM the orphan's process group (it saves its step), SIGKILL it if it outlives `stop_seconds`."""
        for sig, wait in ((signal.SIGTERM, self.stop_seconds), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(fit_pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while alive(fit_pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not alive(fit_pid):
                return
