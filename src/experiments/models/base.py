"""What every model here shares: the optimizer Hydra hands in, and per-stage metrics logged cheaply."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
STAGES = ("train", "val", "test")


class ExperimentModule(pl.LightningModule):
    """Subclasses define the network, `task`, `loss(outputs, targets)` and `extra_metrics()`.

    Metrics are torchmetrics objects per stage, so they aggregate over batches and, with several
    processes, over ranks. Training metrics are logged at most once per `log_every_n_steps` steps:
    a 5000-epoch full-batch fit would otherwise spend most of its time logging.
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
        self._track_train = True
        self.run_config: dict | None = None  # the composed config, saved in checkpoints by train()

    def __setattr__(self, name: str, value: object) -> None:
        # Lightning sets _current_fx_name around every hook call, a dozen times a step; nn.Module's
        # __setattr__ checks for parameters and submodules each time, which costs more than the step.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

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

    def step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        inputs, targets = batch
        outputs = self(inputs)
        loss = self.loss(outputs, targets)
        if stage != "train" or self._track_train:
            metrics = getattr(self, f"{stage}_metrics")
            metrics["loss"].update(loss.detach(), len(targets))
            for name, metric in metrics.items():
                if name != "loss":
                    metric.update(outputs.detach(), targets)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.step(batch, "test")

    def log_stage(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        self.log_dict({f"{stage}/{name}": metric.compute() for name, metric in metrics.items()}, prog_bar=stage != "test")
        for metric in metrics.values():
            metric.reset()

    def on_train_epoch_start(self) -> None:
        # Train metrics are tracked only in epochs that will be logged: the first, the last, and
        # then one whenever log_every_n_steps steps have passed since the previous one.
        trainer = self.trainer
        steps = trainer.num_training_batches
        due = self.global_step + steps - self._last_logged_step >= trainer.log_every_n_steps
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        self._track_train = due or last_epoch or self._last_logged_step < 0

    def on_train_epoch_end(self) -> None:
        # A run resumed from a checkpoint taken at validation ends its first epoch without a step.
        if self._track_train and self.train_metrics["loss"].update_count:
            self._last_logged_step = self.global_step
            self.log_stage("train")

    def on_validation_epoch_end(self) -> None:
        self.log_stage("val")

    def on_test_epoch_end(self) -> None:
        self.log_stage("test")
