"""Checkpoints that survive interruption: Lightning's ModelCheckpoint, plus

- last.ckpt is the latest state at every save point and at the end of training (Lightning 2.6
  rewrites it only when the monitored metric improves);
- on SIGINT or SIGTERM, training stops at the next step boundary and checkpoints/last.ckpt is
  written there, so `resume=<run dir>` continues exactly where it stopped (a second Ctrl-C stops
  at once);
- every checkpoint is written to a temporary file beside its target and renamed over it, so a kill
  during the write leaves the previous good checkpoint in place;
- the callback's `state_key`, a repr of its settings that Lightning formats on every hook call (a
  dozen a step), is computed once.
"""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from experiments.config import UserError


def read_checkpoint(path: str | Path, key: str) -> dict[str, Any]:
    """A checkpoint written by experiments.train, loaded as data (weights_only=True); anything else
    is refused with one sentence naming `key`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{key}={path} does not exist; pass a .ckpt file, such as <run dir>/checkpoints/last.ckpt.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises anything from KeyError to UnpicklingError on a file that is not one
        raise UserError(f"{key}={path} is not a checkpoint torch.load can read safely; pass a .ckpt file written by experiments.train.") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "run_config" not in checkpoint:
        raise UserError(f"{key}={path} is not a checkpoint written by experiments.train (it has no state_dict and run_config).")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        # Checkpoints are data: never unpickle arbitrary objects from one.
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class ModelCheckpoint(LightningModelCheckpoint):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.interrupted_by: str | None = None
        self._previous_sigint: Any = None

    @functools.cached_property
    def state_key(self) -> str:
        return super().state_key

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._previous_sigint = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._on_sigint)
        self._sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupted_by is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.interrupted_by = "SIGINT"
        self._stop_at_step_boundary(signum, frame)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.interrupted_by = self.interrupted_by or "SIGTERM"
        self._stop_at_step_boundary(signum, frame)

    def _stop_at_step_boundary(self, signum: int, frame: Any) -> None:
        # Lightning's own SIGTERM handler marks the trainer; its loop then raises
        # SIGTERMException between two steps, where the weights are consistent.
        if callable(self._sigterm):
            self._sigterm(signum, frame)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._refresh_last(trainer)

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):  # skipped if saved at this step
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException) and trainer.state.stage == "train" and self.dirpath:
            trainer.save_checkpoint(os.path.join(self.dirpath, f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None
