"""Callbacks that time a run for a test without changing a number it computes: Pace slows each
training step without using the CPU, or holds a fresh run at one step boundary until a signal
stops it (the Slurm time-limit test's job waits there for Slurm's notice, whenever it comes);
SignalAt sends a signal at a given step, in training or in the validation that follows it."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import lightning.pytorch as pl


class Pace(pl.Callback):
    def __init__(
        self, seconds: float = 0.0, hold_at: int | None = None, hold_s: float = 180
    ) -> None:
        self.seconds = seconds  # slept after each training step
        # a run that starts from step 0 waits after this step until a signal asks it to stop
        # (Lightning's trainer.received_sigterm), for hold_s at most; a resumed run never waits
        self.hold_at, self.hold_s = hold_at, hold_s
        self.fresh = True

    def on_train_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.fresh = trainer.global_step == 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        time.sleep(self.seconds)
        if self.fresh and trainer.global_step == self.hold_at:
            until = time.monotonic() + self.hold_s
            while not trainer.received_sigterm and time.monotonic() < until:
                time.sleep(0.05)


class SignalAt(pl.Callback):
    """Sends this process `signum` when training has taken `step` steps, as a scheduler would;
    validating=true: during the second batch of the validation that follows that step."""

    def __init__(self, step: int, signum: int, validating: bool = False) -> None:
        self.step, self.signum, self.validating = step, signum, validating

    def send(self) -> None:
        # a signal nobody handles would end the test's own process: fail the test instead
        assert callable(signal.getsignal(self.signum)), f"nothing handles signal {self.signum}"
        os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and not self.validating:
            self.send()

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int, *args: Any
    ) -> None:
        if (
            self.validating
            and not trainer.sanity_checking
            and trainer.global_step == self.step
            and batch_idx == 1
        ):
            self.send()
