"""`zolightning predict`: one JSON line per row (its id, the chosen candidate or generated answer, the scores).

    zolightning predict --config configs/sst2/mezo.yaml --ckpt_path last             # the eval split
    zolightning predict --config ... --ckpt_path CKPT --data.predict_file rows.jsonl  # rows of your own

The lines go to `<run folder>/predictions.jsonl` (or `PredictionWriter(path=...)`); each rank of a multi-device
run writes its own file (`predictions.rank1.jsonl`, ...), rows named by their index in the file they came from.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

log = logging.getLogger(__name__)


def candidate_predictions(batch: dict, scores: torch.Tensor) -> list[dict]:
    """Lines for a scored batch: the chosen candidate (index and text), every candidate's score, the gold index."""
    scores = scores.float().cpu()
    chosen = scores.argmax(dim=-1).tolist()
    lines = []
    for i, row in enumerate(batch["rows"].tolist()):
        texts = batch["candidates"][i]
        line = {"row": row, "prediction": chosen[i], "answer": texts[chosen[i]], "gold": int(batch["gold"][i])}
        line["scores"] = [round(s, 6) for s in scores[i, : len(texts)].tolist()]
        lines.append(line)
    return lines


def generated_predictions(batch: dict, answers: list[str]) -> list[dict]:
    """Lines for a decoded batch: the generated answer and the gold answers."""
    rows = batch["rows"].tolist()
    return [{"row": r, "answer": a, "references": refs} for r, a, refs in zip(rows, answers, batch["references"])]


class PredictionWriter(BasePredictionWriter):
    """Writes each predicted batch's lines as they come (a long predict run keeps what it has done)."""

    def __init__(self, path: str | None = None):
        super().__init__(write_interval="batch")
        self.path = path
        self._file = None

    def _target(self, trainer: L.Trainer) -> Path:
        base = Path(self.path) if self.path else Path(trainer.log_dir or trainer.default_root_dir) / "predictions.jsonl"
        if trainer.world_size > 1 and trainer.global_rank > 0:
            base = base.with_suffix(f".rank{trainer.global_rank}.jsonl")
        return base

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        target = self._target(trainer)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._file = target.open("w")
        log.info("writing predictions to %s", target)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        for line in prediction:
            self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())
            self._file.close()
            log.info("predictions written: %s", self._file.name)
            self._file = None
