"""K runs of one model class trained as one LightningModule, over the same batches.

Their weights are the K rows of one flat parameter. Each step computes all K forward passes
(batched where that is exact, experiments.population.stacked), the K losses, and one backward of
their sum, which gives each row its own gradient; PopulationOptimizer then applies each replica's own optimizer. A replica whose loss is
no longer finite is marked diverged at that step, with the reason a single run would give, and
keeps its weights from then on; no other replica's numbers depend on it.

Each replica keeps a model of its own (`replica(i)`), built from its job's config with its seed as
a single run builds it: it gives the starting weights, holds the replica's torchmetrics objects
and answers for the replica's figures and fitted parameters.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from experiments.callbacks.interruption import Interruption
from experiments.core import speedups
from experiments.core.state import RunState
from experiments.models.base import (
    TRAIN_EPOCH,
    ExperimentModule,
    build_scheduler,
    resumed_outputs,
    start_train_epoch,
    train_epoch_record,
)
from experiments.population.optim import PopulationOptimizer
from experiments.population.stacked import (
    add_to_means,
    batched_form,
    one_by_one_losses,
    one_by_one_outputs,
)

log = logging.getLogger("experiments")


class PopulationModule(speedups.FastHookNames, pl.LightningModule):
    def __init__(
        self,
        models: list[ExperimentModule],
        optimizers: list[Callable[..., torch.optim.Optimizer]],
        schedulers: list[dict[str, Any] | None],
        states: list[RunState],
        loggers: list[list[Any]],
        fail_fast: bool = False,
        exact: bool = True,
    ) -> None:
        super().__init__()
        self.models = (
            models  # a plain list: their weights live in `flat`, not in this module's state
        )
        self.optimizer_factories = optimizers
        self.scheduler_configs = schedulers
        self.states = states
        self.run_loggers = loggers
        self.fail_fast = fail_fast
        self.exact = exact
        named = list(models[0].named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.flat = nn.Parameter(
            torch.stack(
                [torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models]
            )
        )
        self.directions = models[0].metric_directions()
        self.schedules: list[Any] = []
        self._has_path: bool | None = None
        self._batched: tuple[Any, Any] | None = (
            None  # the model's batched formulas, where they are exact (population.stacked)
        )
        self.tested: set[int] = set()  # replicas whose weights the test uses (not diverged)
        self._train_outputs: list[tuple[Tensor, Tensor, Tensor]] | None = []
        self._last_logged_step = -1
        # each stage's running sums for every replica's mean loss (add_losses)
        self._loss_means: dict[str, tuple[Tensor, Tensor]] = {}
        self._resumed_epoch: dict[str, Any] | None = None
        self._in_epoch = False
        self.diverged_step = torch.full((len(models),), -1, dtype=torch.long)
        self.diverged_epoch = torch.full((len(models),), -1, dtype=torch.long)
        self.diverged_loss = torch.zeros(len(models))

    @property
    def size(self) -> int:
        return len(self.models)

    # -- the K models as one computation ---------------------------------------------------------

    def stacked_params(self) -> dict[str, Tensor]:
        params, offset = {}, 0
        for name, shape in zip(self.names, self.shapes):
            n = shape.numel()
            params[name] = self.flat[:, offset : offset + n].view(self.size, *shape)
            offset += n
        return params

    def stacked_forward(self, x: Tensor) -> Tensor:
        model, params = self.models[0], self.stacked_params()
        if self._batched is not None:
            return self._batched[0](model, params, x)
        return one_by_one_outputs(model, params, x)

    def stacked_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if self._batched is not None:
            return self._batched[1](outputs, targets)
        return one_by_one_losses(self.models[0], outputs, targets)

    def replica(self, index: int) -> ExperimentModule:
        """Run `index`'s own model, holding its current weights."""
        model = self.models[index]
        with torch.no_grad():
            offset = 0
            for p in model.parameters():
                n = p.numel()
                p.copy_(self.flat[index, offset : offset + n].view(p.shape))
                offset += n
        return model

    def line_points(self) -> list[tuple[float, float]] | None:
        """Each run's (w, b), for lines of one weight and one bias; None for other models."""
        if self._has_path is None:
            fitted = getattr(self.models[0], "fitted_parameters", None)
            self._has_path = (
                fitted is not None
                and self.flat.shape[1] == 2
                and isinstance(fitted().get("weight"), float)
            )
        return self.flat.detach().tolist() if self._has_path else None

    def running(self) -> list[int]:
        return [i for i, s in enumerate(self.states) if s.status == "running"]

    # -- optimizers and schedules ------------------------------------------------------------------

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = PopulationOptimizer(self.flat, list(self.shapes), self.optimizer_factories)
        self.schedules = [
            None
            if not config
            else {
                **config,
                "scheduler": build_scheduler(config["scheduler"], replica, self.trainer),
            }
            for config, replica in zip(self.scheduler_configs, optimizer.replicas)
        ]
        return optimizer

    @property
    def population_optimizer(self) -> PopulationOptimizer:
        return self.trainer.optimizers[0]

    def step_schedules(self, interval: str, plateau: bool, index: int) -> None:
        """Each replica's own schedule, stepped where Lightning steps a single run's."""
        stepped = False
        for i, config in enumerate(self.schedules):
            if (
                not config
                or self.states[i].status != "running"
                or config.get("interval", "epoch") != interval
            ):
                continue
            scheduler = config["scheduler"]
            if (
                isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) != plateau
                or (index + 1) % int(config.get("frequency", 1)) != 0
            ):
                continue
            with warnings.catch_warnings():
                # torch cannot see the vectorised step and would warn
                warnings.simplefilter("ignore")
                if plateau:
                    value = self.states[i].metrics.get(
                        config.get("monitor") or self.states[i].monitor
                    )
                    if value is not None and value.final is not None:
                        scheduler.step(value.final)
                else:
                    scheduler.step()
                stepped = True
        if stepped:
            self.population_optimizer.settings_changed()

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Each replica's gradient clipped on its own, as torch.nn.utils.clip_grad_norm_ does for one run."""
        grad = self.flat.grad
        if not gradient_clip_val or grad is None:
            return
        if gradient_clip_algorithm == "value":
            grad.clamp_(-gradient_clip_val, gradient_clip_val)
            return
        norms = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
        grad.mul_(torch.clamp(gradient_clip_val / (norms + 1e-6), max=1.0))

    # -- training ----------------------------------------------------------------------------------

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        outputs = self.stacked_forward(inputs)
        losses = self.stacked_loss(outputs, targets)
        self.watch(losses)
        self._finite_losses = (
            self.global_step,
            losses.detach(),
        )  # read only if a later one diverges
        if self._train_outputs is not None:
            self._train_outputs.append((losses.detach(), outputs.detach(), targets))
        return losses.sum()

    def watch(self, losses: Tensor) -> None:
        """Note each replica whose loss just stopped being finite; on the CPU at once, on an
        accelerator (where reading a value waits for it) every few steps."""
        optimizer = self.population_optimizer
        finite = torch.isfinite(losses.detach())
        if losses.device.type == "cpu" and finite.all():  # the usual step: nothing to note
            return
        fresh = ~finite & ~optimizer.frozen
        step = torch.full_like(self.diverged_step, self.global_step)
        self.diverged_step = torch.where(fresh, step, self.diverged_step)
        self.diverged_epoch = torch.where(
            fresh, torch.full_like(step, self.current_epoch), self.diverged_epoch
        )
        self.diverged_loss = torch.where(fresh, losses.detach(), self.diverged_loss)
        optimizer.frozen |= fresh
        if losses.device.type != "cpu":
            optimizer.any_frozen = (
                True  # the weights of a frozen row are kept without reading the mask
            )
            if self.global_step % self.trainer.log_every_n_steps:
                return
        if fresh.any() or losses.device.type != "cpu":
            self.report_divergence()

    def report_divergence(self) -> None:
        steps = self.diverged_step.tolist()
        rows = [i for i in self.running() if steps[i] >= 0]
        if not rows:
            return
        self.population_optimizer.any_frozen = True
        epochs, values = self.diverged_epoch.tolist(), self.diverged_loss.tolist()
        step, last = getattr(self, "_finite_losses", (None, None))
        last = [None] * len(steps) if last is None else last.tolist()
        for i in rows:
            if last[i] is not None and math.isfinite(last[i]):
                self.states[i].last_finite_loss = (step, last[i])
            self.stop_run(
                i,
                "diverged",
                f"train loss became {values[i]} at epoch {epochs[i] + 1}, step {steps[i] + 1}",
                epochs[i],
                steps[i],
            )
        if self.fail_fast:
            # The others stop at this step's boundary, as SIGTERM stops them, with a last.ckpt that resumes exactly.
            reason = f"fail_fast=true ({self.states[rows[0]].run_dir.name} diverged)"
            next(c for c in self.trainer.callbacks if isinstance(c, Interruption)).request_stop(
                reason
            )

    def stop_run(
        self,
        index: int,
        status: str,
        reason: str,
        epoch: int | None = None,
        step: int | None = None,
    ) -> None:
        """Run `index` ends here (diverged, or pruned by its Optuna trial): its weights stay as they
        are, the others go on."""
        optimizer = self.population_optimizer
        optimizer.freeze([index])
        optimizer.any_frozen = True
        state = self.states[index]
        state.epochs = self.current_epoch if epoch is None else epoch
        state.steps = self.global_step if step is None else step
        state.epoch_seconds = list(state.epoch_seconds)  # no longer the population's shared list
        state.end(status, reason)
        if self.trainer.is_global_zero:
            state.write()
        log.info("%s %s: %s", state.run_dir.name, status, reason, extra={"run_dir": state.run_dir})

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._schedule_states = checkpoint.get("population.schedules")
        self._resumed_epoch = checkpoint.get(TRAIN_EPOCH)
        self._last_logged_step = (self._resumed_epoch or {}).get("last_logged_step", -1)

    def on_train_start(self) -> None:
        # resumed: the epoch it continues, mid-epoch or at its end
        if self._resumed_epoch is not None:
            self._train_outputs, self._in_epoch = (
                resumed_outputs(self.trainer, self._resumed_epoch),
                self._resumed_epoch["mid_epoch"],
            )
            self._resumed_epoch = None
        for config, state in zip(self.schedules, getattr(self, "_schedule_states", None) or []):
            if config and state:
                config["scheduler"].load_state_dict(state)
        self.population_optimizer.settings_changed()  # a resumed schedule, or a resumed optimizer's settings

    def on_fit_start(self) -> None:
        self._batched = batched_form(self.models[0], self.device, self.exact)
        self.diverged_step = self.diverged_step.to(self.device)
        self.diverged_epoch = self.diverged_epoch.to(self.device)
        self.diverged_loss = self.diverged_loss.to(self.device, self.flat.dtype)
        for model in self.models:
            model.to(self.device)
        data = (
            self.trainer.datamodule.hparams_initial if self.trainer.datamodule is not None else {}
        )
        for model, loggers in zip(self.models, self.run_loggers):
            for logger in loggers:  # as Lightning logs a single run's
                logger.log_hyperparams({**model.hparams_initial, **data})
        for loggers in self.run_loggers:  # each waits for its writer: all of them write meanwhile
            for logger in loggers:
                logger.save()

    def on_train_epoch_start(self) -> None:
        self._train_outputs = start_train_epoch(self.trainer, self._last_logged_step)
        self._in_epoch = True

    def train_epoch_record(self, index: int) -> dict[str, Any]:
        """Run `index`'s part of the epoch's training outputs, as its single run's checkpoint keeps them."""
        record = train_epoch_record(
            self.trainer, self._last_logged_step, self._train_outputs, self._in_epoch
        )
        if record["outputs"] is not None:
            record["outputs"] = [
                (losses[index], outputs[index], targets)
                for losses, outputs, targets in record["outputs"]
            ]
        return record

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Each scheduled run's learning rate, as Lightning's LearningRateMonitor logs a single
        run's: before the step, on the steps whose logs are due."""
        trainer = self.trainer
        if not any(self.schedules) or (
            (self.global_step + 1) % trainer.log_every_n_steps and not trainer.should_stop
        ):
            return
        replicas = self.population_optimizer.replicas
        for i in self.running():
            if self.schedules[i]:
                for logger in self.run_loggers[i]:
                    logger.log_metrics(
                        {"train/lr": replicas[i].param_groups[0]["lr"]}, self.global_step
                    )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.step_schedules("step", plateau=False, index=batch_idx)
        if batch_idx + 1 == self.trainer.num_training_batches:
            self.step_schedules("epoch", plateau=False, index=self.current_epoch)

    def on_train_epoch_end(self) -> None:
        self._in_epoch = False
        if self.population_optimizer.frozen.device.type != "cpu":
            self.report_divergence()
        if self._train_outputs:
            losses, outputs, targets = zip(*self._train_outputs)
            sizes = torch.tensor([len(t) for t in targets], device=losses[0].device)
            losses, outputs, targets = (
                torch.stack(losses, 1),
                torch.cat(outputs, 1),
                torch.cat(targets),
            )
            self._train_outputs = None
            self._last_logged_step = self.global_step
            rows = self.running()
            self.add_losses("train", losses.repeat_interleave(sizes, dim=1))
            if self.output_metrics:
                for i in rows:
                    self.models[i].update_output_metrics("train", outputs[i], targets)
            self.log_runs(self.compute_metrics("train", rows), rows)
        self.step_schedules("epoch", plateau=True, index=self.current_epoch)

    @property
    def output_metrics(self) -> bool:
        """Whether the models have metrics besides the loss (extra_metrics)."""
        return len(self.models[0].train_metrics) > 1

    def add_losses(self, stage: str, losses: Tensor) -> None:
        """Every replica's per-sample losses [replicas, samples] into its stage's mean loss, all
        replicas at once (stacked.add_to_means: each mean is its own MeanMetric's)."""
        dtype = self.models[0].train_metrics["loss"].mean_value.dtype  # the state's own
        self._loss_means[stage] = add_to_means(self._loss_means.get(stage), losses, dtype)

    def compute_metrics(self, stage: str, rows: list[int]) -> dict[str, Tensor]:
        """Each replica's metrics of a stage as columns over the population, then reset: the mean
        loss of all replicas at once (add_losses), the others from each replica's own
        torchmetrics objects, so each is what a single run computes."""
        names = list(getattr(self.models[0], f"{stage}_metrics"))
        values = {
            f"{stage}/{name}": torch.full((self.size,), math.nan, dtype=torch.float64)
            for name in names
        }
        if stage in self._loss_means:
            total, count = self._loss_means.pop(stage)
            means = (total / count).to("cpu", torch.float64)
            values[f"{stage}/loss"][rows] = means[rows]
        for i in rows:
            for name, metric in getattr(self.models[i], f"{stage}_metrics").items():
                if name != "loss":
                    values[f"{stage}/{name}"][i] = metric.compute().item()
                    metric.reset()
        return values

    def log_runs(self, values: dict[str, Tensor], rows: list[int]) -> None:
        """Each run's metrics to its own loggers, as Lightning logs a single run's epoch-end values."""
        if not rows:
            return
        columns = {name: tensor.tolist() for name, tensor in values.items()}
        testing = any(name.startswith("test/") for name in values)
        # Lightning logs a fit's epoch-end values at the last step taken, and the test after the fit at the next.
        step = self.global_step if testing else max(self.global_step - 1, 0)
        shown: dict[str, float] = {}
        for i in rows:
            metrics = {name: column[i] for name, column in columns.items()}
            for logger in self.run_loggers[i]:
                logger.log_metrics({**metrics, "epoch": self.current_epoch}, step)
            for name, value in metrics.items():
                if not name.startswith("test/") and math.isfinite(value):
                    better = self.directions.get(name, False)
                    shown[name] = (
                        value if name not in shown else (max if better else min)(shown[name], value)
                    )
        if not testing:
            for name, value in shown.items():
                self.log(f"best {name}", value, prog_bar=True, logger=False)
            self.log("running", float(len(self.running())), prog_bar=True, logger=False)

    # -- validation and test ----------------------------------------------------------------------

    def evaluation_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        inputs, targets = batch
        outputs = self.stacked_forward(inputs)
        losses = self.stacked_loss(outputs, targets)
        self.add_losses(stage, losses.unsqueeze(1).expand(-1, len(targets)))
        if self.output_metrics:
            for i in self.rows_for(stage):
                self.models[i].update_output_metrics(stage, outputs[i], targets)

    def rows_for(self, stage: str) -> list[int]:
        return sorted(self.tested) if stage == "test" else self.running()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.evaluation_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.evaluation_step(batch, "test")

    def end_evaluation(self, stage: str) -> None:
        rows = self.rows_for(stage)
        self.log_runs(self.compute_metrics(stage, rows), rows)

    def on_validation_epoch_end(self) -> None:
        self.end_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self.end_evaluation("test")


class PopulationRuns:
    """What the recorder's parts see of a population's runs (experiments.callbacks.recorder.OneRun
    for a single run): their states and loggers, each run's own model holding its weights, the
    lines' points, and how one run stops while the others go on."""

    def __init__(self, states: list[RunState], loggers: list[list[Any]]) -> None:
        self.states = states
        self.loggers = loggers

    def model(self, index: int, pl_module: PopulationModule) -> ExperimentModule:
        return pl_module.replica(index)

    def line_points(self, pl_module: PopulationModule) -> list[tuple[float, float]] | None:
        return pl_module.line_points()

    def stop(
        self, index: int, pl_module: PopulationModule, status: str, reason: str, epoch: int
    ) -> None:
        pl_module.stop_run(index, status, reason, epoch=epoch)

    def parameters(self, pl_module: PopulationModule) -> list[dict[str, Tensor]]:
        """Each run's weights by parameter name: views of its row of the population's."""
        stacked = pl_module.stacked_params()
        return [
            {name: value[i].detach() for name, value in stacked.items()}
            for i in range(pl_module.size)
        ]

    def gradients(self, pl_module: PopulationModule) -> list[dict[str, Tensor]]:
        grad, rows = pl_module.flat.grad, []
        for i in range(pl_module.size):
            offset, row = 0, {}
            for name, shape in zip(pl_module.names, pl_module.shapes):
                row[name] = grad[i, offset : offset + shape.numel()].view(shape)
                offset += shape.numel()
            rows.append(row)
        return rows

    def optimizer(self, index: int, trainer: pl.Trainer) -> torch.optim.Optimizer:
        return trainer.optimizers[0].replicas[index]

    def checkpoint_config(self) -> dict[str, Any] | None:
        return None  # each run's own checkpoint file carries its config (experiments.population.checkpoints)
