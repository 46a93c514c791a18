"""Each run of a population keeps the checkpoints a single run keeps, in the single-run format.

Lightning writes the population's checkpoint through `trainer.save_checkpoint`; the population
adds each run's own parts to it (its weights, optimizer and schedule state, hyperparameters,
config, and the state its own ModelCheckpoint callbacks would have) and `PopulationCheckpointIO`
writes one file per run from the shared parts (epoch, step, loop and data-order state) and that
run's own. So `experiments.evaluate run=<job>` and `resume=<job>` take a job of a population as
any other run; and a population resumes from its runs' last.ckpt files, assembled back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from experiments.callbacks.checkpoint import AtomicCheckpointIO, save_atomically, serialized
from experiments.callbacks.interruption import Interruption
from experiments.models.base import TRAIN_EPOCH
from experiments.population.module import PopulationModule

REPLICAS = "population.replicas"  # checkpoint key: target path -> that run's own parts
SCHEDULES = "population.schedules"


def target(callback: ModelCheckpoint) -> Path:
    return Path(str(callback.dirpath)) / f"{callback.filename}{callback.FILE_EXTENSION}"


class PopulationCheckpointIO(AtomicCheckpointIO):
    def __init__(self, resume_from: list[Path] | None = None) -> None:
        super().__init__()
        self.resume_from = resume_from  # each run's last.ckpt, when the population resumes

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        replicas = checkpoint.pop(REPLICAS, {})
        # a run's best.ckpt and last.ckpt of one validation are the same bytes: serialized once
        files_of: dict[int, list[str]] = {}
        for file, own in replicas.items():
            files_of.setdefault(id(own), []).append(file)
        for files in files_of.values():
            own = replicas[files[0]]
            data = {**checkpoint, **own} if len(files) == 1 else serialized({**checkpoint, **own})
            for file in files:
                save_atomically(data, file)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not self.resume_from:
            return super().load_checkpoint(path, map_location=map_location)
        checkpoints = [
            torch.load(file, map_location=map_location or "cpu", weights_only=True)
            for file in self.resume_from
        ]
        shared = {
            k: v
            for k, v in checkpoints[0].items()
            if k
            not in (
                "state_dict",
                "optimizer_states",
                "lr_schedulers",
                "callbacks",
                "run_config",
                TRAIN_EPOCH,
            )
        }
        epoch = checkpoints[0].get(TRAIN_EPOCH)
        # each run's outputs of the interrupted epoch, stacked back
        if epoch is not None and epoch["outputs"] is not None:
            batches = zip(*(c[TRAIN_EPOCH]["outputs"] for c in checkpoints))
            epoch = {
                **epoch,
                "outputs": [
                    (
                        torch.stack([b[0] for b in batch]),
                        torch.stack([b[1] for b in batch]),
                        batch[0][2],
                    )
                    for batch in batches
                ],
            }
        return {
            **shared,
            TRAIN_EPOCH: epoch,
            "state_dict": {
                "flat": torch.stack(
                    [
                        torch.cat([t.reshape(-1) for t in c["state_dict"].values()])
                        for c in checkpoints
                    ]
                )
            },
            "optimizer_states": [{"replicas": [c["optimizer_states"][0] for c in checkpoints]}],
            "lr_schedulers": [],
            "callbacks": {},
            SCHEDULES: [
                c["lr_schedulers"][0] if c.get("lr_schedulers") else None for c in checkpoints
            ],
        }


class PopulationCheckpoints(Interruption):
    """For each run: best.ckpt when its monitored metric improves, last.ckpt at every validation
    and where Ctrl-C or SIGTERM stopped the population, as its own ModelCheckpoint would."""

    def __init__(self, callbacks: list[list[ModelCheckpoint]]) -> None:
        super().__init__()
        self.callbacks = callbacks  # each run's configured ModelCheckpoint objects (not attached)
        self.best_rows: dict[int, torch.Tensor] = {}  # weights of each run's best checkpoint
        self.pending: dict[str, int] = {}  # file -> run, for the checkpoint being written

    def save(self, trainer: pl.Trainer, module: PopulationModule, best: bool) -> None:
        files: dict[str, int] = {}
        for i in module.running():
            state = module.states[i]
            improved = (
                metric := state.metrics.get(state.monitor)
            ) is not None and metric.best_epoch == trainer.current_epoch + 1
            for callback in self.callbacks[i]:
                if callback.monitor is not None and best and improved:
                    score = torch.tensor(metric.best)
                    callback.best_model_score = callback.current_score = callback.kth_value = score
                    callback.best_model_path = callback.kth_best_model_path = str(target(callback))
                    callback.best_k_models = {str(target(callback)): score}
                    self.best_rows[i] = module.flat.detach()[i].clone()
                    files[str(target(callback))] = i
                last = (
                    getattr(callback, "last", False)
                    and Path(str(callback.dirpath))
                    / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
                )
                if last:
                    files[str(last)] = i
        if not files:
            return
        self.pending = files
        # the name is never written
        trainer.save_checkpoint(str(Path(next(iter(files))).with_suffix(".population")))
        self.pending = {}

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: PopulationModule, checkpoint: dict[str, Any]
    ) -> None:
        parts = {
            i: replica_parts(pl_module, i, self.callbacks[i]) for i in set(self.pending.values())
        }
        checkpoint[REPLICAS] = {file: parts[i] for file, i in self.pending.items()}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: PopulationModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.save(trainer, pl_module, best=True)
        super().on_validation_end(trainer, pl_module)  # a signal during it stops training now

    def saves_last(self, trainer: pl.Trainer, exception: BaseException) -> bool:
        return isinstance(exception, SIGTERMException) and trainer.state.stage == "train"

    def on_exception(
        self, trainer: pl.Trainer, pl_module: PopulationModule, exception: BaseException
    ) -> None:
        if self.saves_last(trainer, exception):
            self.save(trainer, pl_module, best=False)
        super().on_exception(trainer, pl_module, exception)


def replica_parts(
    module: PopulationModule, index: int, callbacks: list[ModelCheckpoint]
) -> dict[str, Any]:
    """What run `index`'s checkpoint holds of its own, in the single-run format."""
    model = module.replica(index)
    schedule = module.schedules[index] if module.schedules else None
    return {
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer_states": [module.population_optimizer.replica_state_dict(index)],
        "lr_schedulers": [schedule["scheduler"].state_dict()] if schedule else [],
        "callbacks": {callback.state_key: callback.state_dict() for callback in callbacks},
        "hparams_name": "kwargs",
        "hyper_parameters": dict(model.hparams),
        "run_config": module.states[index].config,
        TRAIN_EPOCH: module.train_epoch_record(index),
    }
