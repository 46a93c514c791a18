"""Stop a run whose training loss stops being a finite number (seed 002's SGD on raw readings does)."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class Diverged(RuntimeError):
    """The loss became NaN or infinite; the message says when."""


class DivergenceGuard(Callback):
    def __init__(self, check_every_n_steps: int = 1):
        self.check_every_n_steps = check_every_n_steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step % self.check_every_n_steps:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not math.isfinite(value := loss.item()):
            raise Diverged(f"train loss became {value} at epoch {trainer.current_epoch + 1}, step {trainer.global_step}")
