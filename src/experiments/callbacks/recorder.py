"""What a run leaves besides checkpoints, kept up to date from Lightning's hooks by one callback,
RunRecorder, whose parts each have one job: StatusRecord (metrics.json from the first step, status
`running`, to its end: finished, interrupted, diverged or failed, with timing and, for a line, its
weights), ParameterPath (trajectory.json), RunImages (TensorBoard images) and HParamsEntry (the
HParams row). One callback rather than four: Lightning calls every hook of every callback at every
step, which costs more than a step of these models.

`MetricHistory` is the logger every run has, whatever `logger=` says: it turns each logged value
into the run's final and best, the direction taken from the metric itself (torchmetrics'
`higher_is_better`). The parts see the runs a fit serves through a `runs` object: `OneRun` for a
single run; a population has its own (experiments.population.module.PopulationRuns).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from experiments.callbacks.interruption import Interruption
from experiments.core.state import RunState, write_atomically
from experiments.models.base import Diverged


def write_resolved_config(path: Path, config: dict[str, Any]) -> None:
    """The config with every interpolation resolved, beside the composed one in .hydra/."""
    from omegaconf import OmegaConf

    write_atomically(path, OmegaConf.to_yaml(OmegaConf.create(config)))


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
        # epochs completed, as the progress line counts
        epoch = None if epoch is None else int(epoch) + 1
        for name, value in metrics.items():
            # dynamics/...: summarised apart (RunState.dynamics), a gradient norm has no "best"
            if name != "epoch" and not name.startswith("dynamics/"):
                self.state.log_metric(name, float(value), epoch, self.directions.get(name, False))


def shell_path(path: Path) -> str:
    """A path as a shell command line takes it, relative to the working directory when inside it."""
    import shlex

    shown = (
        path.relative_to(Path.cwd())
        if path.is_absolute() and path.is_relative_to(Path.cwd())
        else path
    )
    return shlex.quote(str(shown))


def outcome(exception: BaseException, trainer: pl.Trainer) -> tuple[str, str]:
    """The status and reason a run ends with when `exception` stops it."""
    if isinstance(exception, Diverged):
        return "diverged", str(exception)
    if getattr(exception, "run_status", None):  # an exception that says how the runs it stops end
        return exception.run_status, str(exception)
    if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or isinstance(
        exception, SystemExit
    ):
        by = next(
            (c.interrupted_by for c in trainer.callbacks if getattr(c, "interrupted_by", None)),
            None,
        )
        return (
            "interrupted",
            f"interrupted by {by or ('SIGINT' if isinstance(exception, KeyboardInterrupt) else 'SIGTERM')}",
        )
    return "failed", f"{type(exception).__name__}: {exception}"


class RunStopped(RuntimeError):
    """A run ends here as planned (its Optuna trial pruned it); `run_status` says how, `epochs` at
    which completed epoch."""

    def __init__(self, status: str, reason: str, epochs: int) -> None:
        super().__init__(reason)
        self.run_status = status
        self.epochs = epochs


class OneRun:
    """What the recorder's parts see of a single run: its state and loggers, its model (the
    LightningModule itself), the point of a line of one weight and one bias, and how it stops."""

    def __init__(self, state: RunState, loggers: list[Any]) -> None:
        self.states = [state]
        self.loggers = [loggers]

    def model(self, index: int, pl_module: pl.LightningModule) -> pl.LightningModule:
        return pl_module

    def line_points(self, pl_module: pl.LightningModule) -> list[tuple[float, float]] | None:
        fitted = getattr(pl_module, "fitted_parameters", None)
        weights = fitted() if fitted is not None else {}
        return (
            [(weights["weight"], weights["bias"])]
            if isinstance(weights.get("weight"), float)
            else None
        )

    def stop(
        self, index: int, pl_module: pl.LightningModule, status: str, reason: str, epoch: int
    ) -> None:
        raise RunStopped(status, reason, epoch)

    def parameters(self, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        """Each run's weights by parameter name (the instruments' view, experiments.dynamics)."""
        return [{name: p.detach() for name, p in pl_module.named_parameters()}]

    def gradients(self, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        return [{name: p.grad for name, p in pl_module.named_parameters() if p.grad is not None}]

    def optimizer(self, index: int, trainer: pl.Trainer) -> Any:
        return trainer.optimizers[0]

    def checkpoint_config(self) -> dict[str, Any] | None:
        """Carried by the run's checkpoints, so one alone can be re-tested (plain data only)."""
        return self.states[0].config


class StatusRecord:
    """metrics.json of each run this fit serves, written at the start, at every validation, on an
    exception and at the end; and each run's config inside its checkpoints."""

    def __init__(self, runs: Any) -> None:
        self.runs = runs
        self.states: list[RunState] = runs.states
        self._clock = [0.0, 0.0, 0.0, 0.0]  # epoch start, validation start, test start, fit start
        self._last_write = 0.0
        # Nothing is written before the fit starts: a refused start leaves no trace.
        self.started = False

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

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if (config := self.runs.checkpoint_config()) is not None:
            checkpoint["run_config"] = config

    def fitted(self, pl_module: pl.LightningModule, index: int) -> dict[str, Any] | None:
        model = self.runs.model(index, pl_module)
        return model.fitted_parameters() if hasattr(model, "fitted_parameters") else None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.count(trainer)
        for i, state in self.running():
            state.parameters = self.fitted(pl_module, i)
        self.write(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock[2] = time.perf_counter()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for i, state in self.running():
            state.test_s = time.perf_counter() - self._clock[2]
            state.best_parameters = self.fitted(pl_module, i)  # the weights tested: best.ckpt's
            state.end("finished")
        self.write(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not self.started:
            return
        if trainer.state.fn == "fit":
            self.count(trainer)
        status, reason = outcome(exception, trainer)
        # An epoch whose validation stopped the run is a completed one.
        epochs = getattr(exception, "epochs", None)
        # the checkpoint callback writes last.ckpt after this hook, at a stop between two steps
        saving = any(
            isinstance(c, Interruption) and c.saves_last(trainer, exception)
            for c in trainer.callbacks
        )
        for _, state in self.running():
            state.epochs = state.epochs if epochs is None else epochs
            last = state.run_dir / "checkpoints" / "last.ckpt"
            if status == "interrupted" and (saving or last.is_file()):
                state.end(
                    status,
                    f"{reason}; resume={shell_path(state.run_dir)} continues from checkpoints/last.ckpt",
                )
            else:
                state.end(status, reason)
            if isinstance(exception, Diverged):
                state.last_finite_loss = exception.last_finite_loss
        self.write(trainer, tolerant=True)


class RunRecorder(pl.Callback):
    """The callback that records the runs a fit serves: each of Lightning's hooks goes to the parts
    that have it, in their order."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts
        self.status = next(p for p in parts if isinstance(p, StatusRecord))
        hooks = [name for name in vars(RunRecorder) if name.startswith("on_")]
        self._handlers = {
            hook: [getattr(p, hook) for p in parts if hasattr(p, hook)] for hook in hooks
        }

    def _call(self, hook: str, *args: Any) -> None:
        for handler in self._handlers[hook]:
            handler(*args)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._call("on_fit_start", trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._call("on_train_start", trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._call("on_train_epoch_start", trainer, pl_module)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._call("on_train_batch_end", trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._call("on_train_epoch_end", trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._call("on_validation_start", trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._call("on_validation_end", trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._call("on_save_checkpoint", trainer, pl_module, checkpoint)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._call("on_train_end", trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._call("on_fit_end", trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._call("on_test_start", trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._call("on_test_end", trainer, pl_module)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._call("on_exception", trainer, pl_module, exception)
