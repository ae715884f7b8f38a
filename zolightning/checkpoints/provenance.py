"""Where a fine-tuned model comes from: recorded in every checkpoint, written into every export's model card."""

from __future__ import annotations

import functools
import importlib.metadata
import subprocess
from pathlib import Path

from zolightning.data.facts import facts_of


@functools.cache  # asked at every checkpoint save; two git calls once per process are enough
def code_version() -> dict:
    """This zolightning's version, and its git commit when it runs from a checkout (None when installed)."""
    try:
        version = importlib.metadata.version("zolightning")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parents[1]
    return {"version": version, "commit": _git_commit(root) if (root / ".git").exists() else None}


def _git_commit(root: Path) -> str | None:
    """The checkout's commit, `-dirty` when its files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10).stdout

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        return (commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no").strip() else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_record(module, trainer) -> dict:
    """What a checkpoint says about its run: code, base model, task, method, step and best score."""
    from zolightning.models.loading import describe_model

    h = module.hparams
    origin, weights = describe_model(h.model)
    task = facts_of(trainer).task
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_score", None)
    return {
        **code_version(),
        "base_model": origin,
        "weights": weights,
        "task": task,
        "method": {k: h.get(k) for k in ("optimizer", "variance", "peft", "lr", "eps", "objective") if k in h},
        "step": trainer.global_step,
        "best": {callback.monitor: float(best)} if best is not None and callback.monitor else {},
    }


def model_card(record: dict, source: str) -> str:
    """A Hugging Face model card (README.md) for an export of checkpoint `source`."""
    method, best = record.get("method", {}), record.get("best", {})
    lines = [
        "---",
        f"base_model: {record.get('base_model')}",
        "library_name: transformers",
        "tags: [zolightning, zeroth-order, mezo]",
        "---",
        f"# {record.get('base_model')} fine-tuned on {record.get('task') or 'a task'} with zolightning",
        "",
        "Fine-tuned with forward passes only (zeroth-order optimization) by "
        f"zolightning {record.get('version')}"
        + (f" (commit {record['commit']})" if record.get("commit") else "")
        + ".",
        "",
        f"- base model: {record.get('base_model')}; the weights trained: {record.get('weights')}",
        f"- task: {record.get('task')}",
        "- method: " + ", ".join(f"{k} {v}" for k, v in method.items()),
        f"- steps: {record.get('step')}",
        "- best score on the dev split: " + (", ".join(f"{k} {v:.4f}" for k, v in best.items()) or "-"),
        f"- exported from: {source}",
    ]
    return "\n".join(lines) + "\n"
