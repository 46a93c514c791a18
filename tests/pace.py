"""Callbacks that time a run for a test without changing a number it computes: Pace slows each
training step without using the CPU, so that a tiny run lasts as long as a test needs it to (the
Slurm time-limit test's job outlasts Slurm's notice); SignalAt sends a signal at a given step."""

from __future__ import annotations

import os
import time
from typing import Any

import lightning.pytorch as pl


class Pace(pl.Callback):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds  # slept after each training step

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(self.seconds)


class SignalAt(pl.Callback):
    """Sends this process `signum` when training has taken `step` steps, as a scheduler would."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)
