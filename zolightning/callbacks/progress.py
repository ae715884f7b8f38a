"""The progress bar of a fit counts steps (`step 120/20000`), not Lightning's epochs: a ZO fit runs for
`max_steps` over a stream of sampled batches, so its epoch is always 0 and its epoch total -1."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar with `global_step / max_steps` as its count; validation and test bars unchanged."""

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
        bar.initial = trainer.global_step  # a resumed run starts where it stopped
        bar.set_description("step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar, step = self.train_progress_bar, trainer.global_step
        if bar is None or bar.disable or (step % max(self.refresh_rate, 1) and step != bar.total):
            return
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module))  # redraws with the new count
