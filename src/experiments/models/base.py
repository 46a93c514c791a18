"""What every model here shares: the optimizer and learning-rate schedule Hydra hands in,
per-stage torchmetrics logged cheaply, and a stop as soon as the training loss is no longer a number."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

from experiments.core import speedups

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
STAGES = ("train", "val", "test")


class Diverged(RuntimeError):
    """The training loss became NaN or infinite; the message says when, `last_finite_loss` the
    last finite training loss seen before, as (step, value)."""

    def __init__(self, message: str, last_finite_loss: tuple[int, float] | None = None) -> None:
        super().__init__(message)
        self.last_finite_loss = last_finite_loss


class ExperimentModule(speedups.FastHookNames, pl.LightningModule):
    """The base of every model here. A subclass provides:
      - `task` ("regression" or "classification", matched against the data's) and `needs` (the
        data it needs, as the sentence for a mismatch says it);
      - `__init__(input_shape, num_outputs, optimizer, scheduler, ...)`: the data sizes it, the
        optimizer and schedule go to this class, its own arguments come from conf/model/;
      - `forward(x)` and `loss(outputs, targets)`;
      - optionally `extra_metrics()`: torchmetrics objects logged as train/, val/ and test/<name>;
      - optionally `fitted_parameters()`: plain numbers the summary and metrics.json show (a line
        of one weight and one bias also draws its path in the sweep's paths.png).

    The training step is the tutorials' loop body (loss of a batch); Lightning's automatic optimization
    does zero_grad, backward and step, and with them gradient clipping, accumulation and the
    learning-rate schedule as the Trainer's settings and `scheduler` ask.

    Metrics are torchmetrics objects per stage, so they aggregate over batches and, with several
    processes, over ranks. A training step only keeps its loss and outputs; they reach the metrics
    in one update at the end of the epoch (a metric update costs more than a step of these models),
    and only in the epochs that are logged: the first, the last, and one whenever
    `log_every_n_steps` steps have passed since the previous one.
    """

    task: str
    needs: str  # the data a model needs, as the error for a mismatch says it

    def __init__(self, optimizer: OptimizerFactory | None, scheduler: dict[str, Any] | None = None):
        super().__init__()
        # Partials, not plain data: kept off the saved hyperparameters so checkpoints load with weights_only=True.
        self.optimizer_factory = optimizer
        self.scheduler_config = (
            scheduler  # Lightning's lr_scheduler dict, its "scheduler" a partial
        )
        for stage in STAGES:  # train_metrics, val_metrics, test_metrics
            metrics = nn.ModuleDict(
                {"loss": MeanMetric(nan_strategy="disable"), **self.extra_metrics()}
            )
            setattr(self, f"{stage}_metrics", metrics)
        self._last_logged_step = -1
        self._train_outputs: list[tuple[Tensor, Tensor, Tensor]] | None = []
        self._resumed_epoch: dict[str, Any] | None = None  # from the checkpoint a run resumes
        self._in_epoch = False  # between an epoch's start and its end

    def extra_metrics(self) -> dict[str, Metric]:
        return {}

    def metric_directions(self) -> dict[str, bool]:
        """Whether a higher value is better, per logged metric (`val/acc`: True), from torchmetrics'
        own `higher_is_better`; the loss is a loss."""
        return {
            f"{stage}/{name}": name != "loss" and bool(metric.higher_is_better)
            for stage in STAGES
            for name, metric in getattr(self, f"{stage}_metrics").items()
        }

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise RuntimeError(
                "This model was built without an optimizer; pass optimizer=partial(torch.optim.X, ...)."
            )
        optimizer = self.optimizer_factory(self.parameters())
        if not self.scheduler_config:
            return optimizer
        config = dict(self.scheduler_config)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                **config,
                "scheduler": build_scheduler(config.pop("scheduler"), optimizer, self.trainer),
            },
        }

    def update_metrics(
        self, stage: str, loss: Tensor, sizes: Tensor | int, outputs: Tensor, targets: Tensor
    ) -> None:
        """Add batches to a stage's metrics: the loss weighted by batch size, the rest from outputs."""
        metrics = getattr(self, f"{stage}_metrics")
        # MeanMetric drops its weights when NaN handling is off (it would hide a diverged loss), so
        # each batch's mean loss counts once per sample: uneven batches and ranks weigh correctly.
        metrics["loss"].update(
            loss.expand(sizes) if loss.ndim == 0 else loss.repeat_interleave(sizes)
        )
        self.update_output_metrics(stage, outputs, targets)

    def update_output_metrics(self, stage: str, outputs: Tensor, targets: Tensor) -> None:
        """A stage's metrics other than the loss (extra_metrics) take the outputs."""
        for name, metric in getattr(self, f"{stage}_metrics").items():
            if name != "loss":
                metric.update(outputs, targets)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        outputs = self(inputs)
        loss = self.loss(outputs, targets)
        self.check_finite(loss)
        self._finite_loss = (self.global_step, loss.detach())  # read only if a later one diverges
        if self._train_outputs is not None:
            self._train_outputs.append((loss.detach(), outputs.detach(), targets))
        return loss

    def check_finite(self, loss: Tensor) -> None:
        # Reading the loss waits for an accelerator, so there it is read only every few steps.
        trainer = self.trainer
        if loss.device.type == "cpu" or self.global_step % trainer.log_every_n_steps == 0:
            bad = not math.isfinite(value := loss.item())
            if trainer.world_size > 1:  # every process stops together, or the others wait forever
                bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
            if bad:
                step, last = getattr(self, "_finite_loss", (None, None))
                raise Diverged(
                    f"train loss became {value} at epoch {self.current_epoch + 1}, step {self.global_step + 1}",
                    None
                    if last is None or not math.isfinite(last := float(last))
                    else (step, last),
                )

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.evaluation_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.evaluation_step(batch, "test")

    def evaluation_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        inputs, targets = batch
        outputs = self(inputs)
        self.update_metrics(stage, self.loss(outputs, targets), len(targets), outputs, targets)

    def log_stage(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        self.log_dict(
            {f"{stage}/{name}": metric.compute() for name, metric in metrics.items()},
            prog_bar=stage != "test",
        )
        for metric in metrics.values():
            metric.reset()

    def on_train_start(self) -> None:
        # resumed: the epoch it continues, mid-epoch or at its end
        if self._resumed_epoch is not None:
            self._train_outputs, self._in_epoch = (
                resumed_outputs(self.trainer, self._resumed_epoch),
                self._resumed_epoch["mid_epoch"],
            )
            self._resumed_epoch = None

    def on_train_epoch_start(self) -> None:
        self._train_outputs = start_train_epoch(self.trainer, self._last_logged_step)
        self._in_epoch = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[TRAIN_EPOCH] = train_epoch_record(
            self.trainer, self._last_logged_step, self._train_outputs, self._in_epoch
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resumed_epoch = checkpoint.get(TRAIN_EPOCH)
        self._last_logged_step = (self._resumed_epoch or {}).get("last_logged_step", -1)

    def on_train_epoch_end(self) -> None:
        self._in_epoch = False
        # A run resumed from a checkpoint taken at validation ends its first epoch without a step.
        if not self._train_outputs:
            return
        losses, outputs, targets = zip(*self._train_outputs)
        sizes = torch.tensor([len(t) for t in targets], device=losses[0].device)
        self.update_metrics(
            "train", torch.stack(losses), sizes, torch.cat(outputs), torch.cat(targets)
        )
        self._train_outputs = None
        self._last_logged_step = self.global_step
        self.log_stage("train")

    def on_validation_epoch_end(self) -> None:
        self.log_stage("val")

    def on_test_epoch_end(self) -> None:
        self.log_stage("test")


TRAIN_EPOCH = "train_epoch"  # checkpoint key: how far the epoch's training metrics have come


def train_epoch_record(
    trainer: pl.Trainer, last_logged_step: int, outputs: list | None, in_epoch: bool
) -> dict[str, Any]:
    """What a checkpoint keeps of the training metrics, so that a resumed run logs them at the
    same steps with the same values as a run never stopped: the step they were last logged at
    and, in a checkpoint taken mid-epoch (an interruption), the outputs of the epoch's batches so
    far. One taken at the validation closing an epoch keeps the state as of that epoch's end."""
    # the epoch's closing validation: it logs its metrics next, if it kept outputs
    if in_epoch and not trainer.training:
        return {
            "last_logged_step": trainer.global_step if outputs else last_logged_step,
            "mid_epoch": False,
            "outputs": None,
        }
    kept = (
        [(loss, out, target.clone()) for loss, out, target in outputs]
        if in_epoch and outputs is not None
        else None
    )
    return {"last_logged_step": last_logged_step, "mid_epoch": in_epoch, "outputs": kept}


def resumed_outputs(trainer: pl.Trainer, record: dict[str, Any]) -> list | None:
    """The buffer of the epoch a resumed run continues (Lightning calls no on_train_epoch_start
    for it): the outputs its checkpoint kept of that epoch's batches, or None."""
    if not record.get("mid_epoch") or record["outputs"] is None:
        return None
    device = trainer.strategy.root_device
    return [tuple(t.to(device) for t in batch) for batch in record["outputs"]]


def start_train_epoch(trainer: pl.Trainer, last_logged_step: int) -> list | None:
    """At an epoch's start: validation at the end of training made sure of, and a list to buffer
    the epoch's training outputs in when its metrics will be logged (None when they will not)."""
    validate_last_epoch(trainer)
    due = (
        trainer.global_step + trainer.num_training_batches - last_logged_step
        >= trainer.log_every_n_steps
    )
    last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
    return [] if due or last_epoch or last_logged_step < 0 else None


def validate_last_epoch(trainer: pl.Trainer) -> None:
    """Validation always happens at the end of training, whatever check_val_every_n_epoch says: a
    300-epoch run validating every 500 epochs would otherwise end without a validation loss, a
    best checkpoint or a place in a sweep's ranking."""
    last = (
        trainer.max_epochs is not None
        and trainer.max_epochs > 0
        and trainer.current_epoch + 1 == trainer.max_epochs
    )
    if last and trainer.check_val_every_n_epoch not in (None, 1):
        trainer.check_val_every_n_epoch = 1  # read by the loop when the epoch ends


def build_scheduler(
    make: Callable[..., Any], optimizer: torch.optim.Optimizer, trainer: pl.Trainer | None
) -> Any:
    """A torch.optim.lr_scheduler from its partial; `total_steps` left null (OneCycleLR) is the
    fit's number of optimizer steps (without a Trainer, a stand-in count to try the settings)."""
    keywords = getattr(make, "keywords", {})
    extra = {}
    if (
        "total_steps" in inspect.signature(make).parameters
        and keywords.get("total_steps") is None
        and keywords.get("epochs") is None
    ):
        extra["total_steps"] = (
            int(trainer.estimated_stepping_batches) if trainer is not None else 100
        )
    return make(optimizer, **extra)
