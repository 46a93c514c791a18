"""What every model here shares: the optimizer Hydra hands in, per-stage torchmetrics logged
cheaply, and a stop as soon as the training loss is no longer a number."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
STAGES = ("train", "val", "test")


class Diverged(RuntimeError):
    """The training loss became NaN or infinite; the message says when."""


class ExperimentModule(pl.LightningModule):
    """Subclasses define the network, `task`, `loss(outputs, targets)` and `extra_metrics()`.

    The training step is the seeds' loop body: loss, zero_grad, backward, step (Lightning's manual
    optimization, which also costs a fifth less per step than its automatic one). Gradient
    clipping, set as usual with trainer.gradient_clip_val, is applied there by train().

    Metrics are torchmetrics objects per stage, so they aggregate over batches and, with several
    processes, over ranks. A training step only keeps its loss and outputs; they reach the metrics
    in one update at the end of the epoch (a metric update costs more than a step of these models),
    and only in the epochs that are logged: the first, the last, and one whenever
    `log_every_n_steps` steps have passed since the previous one.
    """

    task: str

    def __init__(self, optimizer: OptimizerFactory | None):
        super().__init__()
        # A partial, not plain data: kept off the saved hyperparameters so checkpoints load with weights_only=True.
        self.optimizer_factory = optimizer
        for stage in STAGES:  # train_metrics, val_metrics, test_metrics
            metrics = nn.ModuleDict({"loss": MeanMetric(nan_strategy="disable"), **self.extra_metrics()})
            setattr(self, f"{stage}_metrics", metrics)
        self._last_logged_step = -1
        self._train_outputs: list[tuple[Tensor, Tensor, Tensor]] | None = []
        self.run_config: dict | None = None  # the composed config, saved in checkpoints by train()
        self.automatic_optimization = False
        self.gradient_clip: tuple[float, str] | None = None  # (value, "norm" or "value"), set by train()
        self.train_epoch_seconds: list[float] = []  # training only, validation excluded, for metrics.json
        self._clock = [0.0, 0.0]  # epoch start, validation start
        self._plain_backward = False  # set in on_fit_start

    def __setattr__(self, name: str, value: object) -> None:
        # Lightning sets _current_fx_name around every hook call, a dozen times a step; nn.Module's
        # __setattr__ checks for parameters and submodules each time, which costs more than the step.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def on_fit_start(self) -> None:
        # manual_backward wraps loss.backward() in the strategy's and precision plugin's hooks:
        # gradient scaling, DDP's reducer, on_before/after_backward. With one device, full
        # precision and no callback on those hooks it adds nothing but a fifth of a step's time.
        from lightning.pytorch.callbacks import Callback
        from lightning.pytorch.plugins.precision import Precision
        from lightning.pytorch.strategies import SingleDeviceStrategy
        from lightning.pytorch.utilities.model_helpers import is_overridden

        trainer = self.trainer
        self._plain_backward = (
            type(trainer.strategy) is SingleDeviceStrategy
            and type(trainer.precision_plugin) is Precision
            and not any(
                is_overridden(hook, hooked, parent)
                for hooked, parent in [(self, pl.LightningModule), *((c, Callback) for c in trainer.callbacks)]
                for hook in ("on_before_backward", "on_after_backward")
            )
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Plain data only, so the checkpoint alone can be re-tested and loads with weights_only=True.
        if self.run_config is not None:
            checkpoint["run_config"] = self.run_config

    def extra_metrics(self) -> dict[str, Metric]:
        return {}

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            raise RuntimeError("This model was built without an optimizer; pass optimizer=partial(torch.optim.X, ...).")
        return self.optimizer_factory(self.parameters())

    def update_metrics(self, stage: str, loss: Tensor, sizes: Tensor | int, outputs: Tensor, targets: Tensor) -> None:
        """Add batches to a stage's metrics: the loss weighted by batch size, the rest from outputs."""
        metrics = getattr(self, f"{stage}_metrics")
        # MeanMetric drops its weights when NaN handling is off (it would hide a diverged loss), so
        # each batch's mean loss counts once per sample: uneven batches and ranks weigh correctly.
        metrics["loss"].update(loss.expand(sizes) if loss.ndim == 0 else loss.repeat_interleave(sizes))
        for name, metric in metrics.items():
            if name != "loss":
                metric.update(outputs, targets)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        outputs = self(inputs)
        loss = self.loss(outputs, targets)
        self.check_finite(loss)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        if self._plain_backward:
            loss.backward()
        else:
            self.manual_backward(loss)
        if self.gradient_clip is not None:
            self.clip_gradients(optimizer, *self.gradient_clip)
        optimizer.step()
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
                raise Diverged(f"train loss became {value} at epoch {self.current_epoch + 1}, step {self.global_step + 1}")

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
        self.log_dict({f"{stage}/{name}": metric.compute() for name, metric in metrics.items()}, prog_bar=stage != "test")
        for metric in metrics.values():
            metric.reset()

    def on_validation_start(self) -> None:
        self._clock[1] = time.perf_counter()

    def on_validation_end(self) -> None:
        self._clock[0] += time.perf_counter() - self._clock[1]  # the epoch's clock skips validation

    def on_train_epoch_start(self) -> None:
        self._clock[0] = time.perf_counter()
        trainer = self.trainer
        due = self.global_step + trainer.num_training_batches - self._last_logged_step >= trainer.log_every_n_steps
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        self._train_outputs = [] if due or last_epoch or self._last_logged_step < 0 else None

    def on_train_epoch_end(self) -> None:
        self.train_epoch_seconds.append(time.perf_counter() - self._clock[0])
        # A run resumed from a checkpoint taken at validation ends its first epoch without a step.
        if not self._train_outputs:
            return
        losses, outputs, targets = zip(*self._train_outputs)
        sizes = torch.tensor([len(t) for t in targets], device=losses[0].device)
        self.update_metrics("train", torch.stack(losses), sizes, torch.cat(outputs), torch.cat(targets))
        self._train_outputs = None
        self._last_logged_step = self.global_step
        self.log_stage("train")

    def on_validation_epoch_end(self) -> None:
        self.log_stage("val")

    def on_test_epoch_end(self) -> None:
        self.log_stage("test")
