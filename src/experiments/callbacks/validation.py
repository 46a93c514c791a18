"""Validation always happens at the end of training, whatever `trainer.check_val_every_n_epoch`
says: a 300-epoch run validating every 500 epochs would otherwise end without a validation loss,
a best checkpoint or a place in the sweep's ranking."""

from __future__ import annotations

import lightning.pytorch as pl


class ValidateLastEpoch(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.current_epoch + 1 == trainer.max_epochs
        if last and trainer.check_val_every_n_epoch not in (None, 1):
            trainer.check_val_every_n_epoch = 1  # read by the loop when the epoch ends
