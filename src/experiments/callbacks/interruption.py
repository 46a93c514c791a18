"""Ctrl-C (SIGINT) and SIGTERM, a cluster's usual notice, stop training at the next step boundary,
where the weights are consistent, and checkpoints/last.ckpt is written there so that
`resume=<run dir>` continues exactly where it stopped. A second Ctrl-C stops at once, without it.

Lightning's own SIGTERM handler marks the trainer and its loop raises SIGTERMException between
two steps; SIGINT is routed to the same handler, and so is a Slurm job's time-limit notice
(SIGUSR2, whose submitit handler would requeue and exit in the middle of a step: it runs once
the run is recorded, experiments.core.signals). A signal during a validation inside the fit
waits for the validation's end: Lightning would stop in its middle, where no last.ckpt is
written.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException

from experiments.core import signals


class Interruption(pl.Callback):
    """Lightning's OnExceptionCheckpoint saves where the exception was raised, for Ctrl-C possibly
    in the middle of a step; this stops SIGINT at a step boundary as Lightning stops SIGTERM, and
    last.ckpt is written there. Its hooks call on to the next class's (experiments.callbacks.checkpoint.BestAndLastCheckpoint
    combines it with Lightning's ModelCheckpoint)."""

    def __init__(self, save_to: str | None = None) -> None:
        self.save_to = (
            save_to  # where the checkpoint at the interruption goes; None: the caller saves
        )
        self.interrupted_by: str | None = None
        self._previous: dict[int, Any] = {}
        self._lightning_sigterm: Any = None
        self._notice: Any = None  # the scheduler's time-limit handler, once its notice came
        self._validating = False  # inside the fit's validation: a stop waits for its end
        self._deferred: tuple[int, Any] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._validating, self._deferred = False, None
        self._lightning_sigterm = signal.getsignal(signal.SIGTERM)
        for signum, handler in (
            (signal.SIGINT, self._on_sigint),
            (signal.SIGTERM, self._on_sigterm),
        ):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, handler)
        if signals.in_slurm_job():
            self._previous[signals.TIME_LIMIT_NOTICE] = signal.getsignal(signals.TIME_LIMIT_NOTICE)
            signal.signal(signals.TIME_LIMIT_NOTICE, self._on_time_limit_notice)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupted_by is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.interrupted_by = "SIGINT"
        self._stop_at_step_boundary(signum, frame)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.interrupted_by = self.interrupted_by or "SIGTERM"
        self._stop_at_step_boundary(signum, frame)

    def _on_time_limit_notice(self, signum: int, frame: Any) -> None:
        self.interrupted_by = self.interrupted_by or "Slurm's notice of the time limit (SIGUSR2)"
        previous = self._previous.get(signum)  # submitit's, to run once the run is recorded
        self._notice = previous if callable(previous) else None
        self._stop_at_step_boundary(signum, frame)

    def _stop_at_step_boundary(self, signum: int, frame: Any) -> None:
        if self._validating:
            self._deferred = (signum, frame)
        elif callable(self._lightning_sigterm):
            self._lightning_sigterm(signum, frame)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        self._validating = bool(self._previous)  # our handlers are in: the fit's validation
        # a stop asked for in the step just before: after this validation too (speedups trick 7)
        if self._validating and self.interrupted_by is not None and trainer.received_sigterm:
            from experiments.core.speedups import withdraw_stop

            withdraw_stop(trainer)
            self._deferred = (signal.SIGTERM, None)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)  # ModelCheckpoint saves here first
        self._validating = False
        if self._deferred is not None:
            self._stop_at_step_boundary(*self._deferred)
            self._deferred = None

    def request_stop(self, reason: str) -> None:
        """Stop training at the next step boundary, as SIGTERM does, for `reason` (fail_fast=true in
        a population): the checkpoint written there resumes exactly."""
        if self.interrupted_by is None:
            self.interrupted_by = reason
            self._stop_at_step_boundary(signal.SIGTERM, None)

    def saves_last(self, trainer: pl.Trainer, exception: BaseException) -> bool:
        """Whether this exception ends training with a last.ckpt written here (in on_exception,
        which Lightning calls after the other callbacks': a ModelCheckpoint's hooks run last)."""
        return (
            isinstance(exception, SIGTERMException)
            and trainer.state.stage == "train"
            and bool(self.save_to)
        )

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.saves_last(trainer, exception):
            trainer.save_checkpoint(str(self.save_to))
        if isinstance(exception, SIGTERMException) and self._notice is not None:
            signals.hold(self._notice)  # requeue once the run is recorded
        self.restore_handlers()
        super().on_exception(trainer, pl_module, exception)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.restore_handlers()
        super().on_train_end(trainer, pl_module)

    def restore_handlers(self) -> None:
        """Lightning's handlers back, while Lightning's teardown (which runs before a callback's
        `teardown`) can still put back the process's own: a handler restored later would leave
        Lightning's installed for good, and SIGTERM would no longer end a Python or Jupyter
        process that trained (experiments.api)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def saved(self) -> bool:
        return bool(self.save_to) and Path(self.save_to).is_file()
