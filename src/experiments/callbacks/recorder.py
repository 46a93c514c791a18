"""What a run leaves besides checkpoints, kept up to date from Lightning's hooks by one callback,
RunRecorder, whose parts each have one job: StatusRecord (metrics.json from the first step, status
`running`, to its end: finished, interrupted, diverged or failed, with timing and, for a line, its
weights), ParameterPath (trajectory.json), RunFigures (TensorBoard images) and HParamsEntry (the
HParams row). One callback rather than four: Lightning calls every hook of every callback at every
step, which costs more than a step of these models.

`MetricHistory` is the logger every run has, whatever `logger=` says: it turns each logged value
into the run's final and best, the direction taken from the metric itself (torchmetrics'
`higher_is_better`). One fit may serve several runs (hydra/launcher=vectorized): the parts take
the list of their states, and the module answers `replica(i)` with run i's model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from experiments.models.base import Diverged
from experiments.state import RunState


def write_resolved_config(path: Path, config: dict[str, Any]) -> None:
    """The config with every interpolation resolved, beside the composed one in .hydra/."""
    import os

    from omegaconf import OmegaConf

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    os.replace(tmp, path)


class MetricHistory(Logger):
    """A logger that keeps, for every metric Lightning logs, its final and its best value."""

    def __init__(self, state: RunState, directions: dict[str, bool]) -> None:
        super().__init__()
        self.state = state
        self.directions = directions  # metric name -> higher is better

    @property
    def name(self) -> str:
        return "history"

    @property
    def version(self) -> str:
        return ""

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        epoch = metrics.get("epoch")
        epoch = None if epoch is None else int(epoch) + 1  # epochs completed, as the progress line counts
        for name, value in metrics.items():
            if name != "epoch":
                self.state.log_metric(name, float(value), epoch, self.directions.get(name, False))


def shell_path(path: Path) -> str:
    """A path as a shell command line takes it, relative to the working directory when inside it."""
    import shlex

    shown = path.relative_to(Path.cwd()) if path.is_absolute() and path.is_relative_to(Path.cwd()) else path
    return shlex.quote(str(shown))


def outcome(exception: BaseException, trainer: pl.Trainer) -> tuple[str, str]:
    """The status and reason a run ends with when `exception` stops it."""
    if isinstance(exception, Diverged):
        return "diverged", str(exception)
    if getattr(exception, "run_status", None):  # an exception that says how the runs it stops end
        return exception.run_status, str(exception)
    if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or isinstance(exception, SystemExit):
        by = next((c.interrupted_by for c in trainer.callbacks if getattr(c, "interrupted_by", None)), None)
        return "interrupted", f"interrupted by {by or ('SIGINT' if isinstance(exception, KeyboardInterrupt) else 'SIGTERM')}"
    return "failed", f"{type(exception).__name__}: {exception}"


class StatusRecord:
    """metrics.json of each run this fit serves, written at the start, at every validation, on an
    exception and at the end; and each run's config inside its checkpoints."""

    def __init__(self, states: list[RunState]) -> None:
        self.states = states
        self._clock = [0.0, 0.0, 0.0, 0.0]  # epoch start, validation start, test start, fit start
        self._last_write = 0.0
        self.started = False  # nothing is written before the fit starts: a refused start leaves no trace

    def running(self) -> list[tuple[int, RunState]]:
        return [(i, s) for i, s in enumerate(self.states) if s.status == "running"]

    def write(self, trainer: pl.Trainer, tolerant: bool = False) -> None:
        """metrics.json of every run; `tolerant` while an exception is already on its way (a full
        disk must not hide the error that stopped the run)."""
        if trainer.is_global_zero:
            for state in self.states:
                try:
                    state.write()
                except OSError:
                    if not tolerant:
                        raise
            self._last_write = time.monotonic()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock[0] = self._clock[3] = time.perf_counter()
        self.started = True
        if trainer.is_global_zero:
            for state in self.states:
                write_resolved_config(state.run_dir / "config.resolved.yaml", state.config)
        self.write(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock[0] = time.perf_counter()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock[1] = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock[0] += time.perf_counter() - self._clock[1]  # the epoch's clock skips validation
        if trainer.state.fn == "fit" and time.monotonic() - self._last_write > 1.0:
            self.count(trainer)
            self.write(trainer)  # a killed run still shows how far it got

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = time.perf_counter() - self._clock[0]
        appended: set[int] = set()
        for _, state in self.running():
            if id(state.epoch_seconds) not in appended:  # a population's runs share one list
                state.epoch_seconds.append(seconds)
                appended.add(id(state.epoch_seconds))

    def count(self, trainer: pl.Trainer) -> None:
        for _, state in self.running():
            state.epochs, state.steps = trainer.current_epoch, trainer.global_step
            state.fit_s = time.perf_counter() - self._clock[3]

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Plain data only, so the checkpoint alone can be re-tested and loads with weights_only=True.
        if len(self.states) == 1:
            checkpoint["run_config"] = self.states[0].config

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.count(trainer)
        for i, state in self.running():
            if hasattr(replica := pl_module.replica(i), "fitted_parameters"):
                state.parameters = replica.fitted_parameters()
        self.write(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock[2] = time.perf_counter()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for i, state in self.running():
            state.test_s = time.perf_counter() - self._clock[2]
            if hasattr(replica := pl_module.replica(i), "fitted_parameters"):
                state.best_parameters = replica.fitted_parameters()  # the weights tested: best.ckpt's
            state.end("finished")
        self.write(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not self.started:
            return
        if trainer.state.fn == "fit":
            self.count(trainer)
        status, reason = outcome(exception, trainer)
        epochs = getattr(exception, "epochs", None)  # an epoch whose validation stopped the run is a completed one
        for _, state in self.running():
            state.epochs = state.epochs if epochs is None else epochs
            saved = (state.run_dir / "checkpoints" / "last.ckpt").is_file()
            state.end(status, f"{reason}; resume={shell_path(state.run_dir)} continues from checkpoints/last.ckpt" if status == "interrupted" and saved else reason)
        self.write(trainer, tolerant=True)


HOOKS = (
    "on_fit_start", "on_train_start", "on_train_epoch_start", "on_train_batch_end", "on_train_epoch_end",
    "on_validation_start", "on_validation_end", "on_save_checkpoint", "on_train_end", "on_fit_end",
    "on_test_start", "on_test_end", "on_exception",
)


class RunRecorder(pl.Callback):
    """The callback that records the runs a fit serves: it hands each of Lightning's hooks to the
    parts that have it, in their order."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self.handlers = {hook: [getattr(part, hook) for part in parts if hasattr(part, hook)] for hook in HOOKS}

    @property
    def status(self) -> StatusRecord:
        return next(p for p in self.parts if isinstance(p, StatusRecord))


def _handing_on(hook: str) -> Any:
    def handler(self: RunRecorder, *args: Any) -> None:
        for part in self.handlers[hook]:
            part(*args)

    handler.__name__ = hook
    return handler


for _hook in HOOKS:
    setattr(RunRecorder, _hook, _handing_on(_hook))
