"""What a run leaves besides checkpoints: metrics.json, and its row in TensorBoard's HParams tab."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only


def higher_is_better(name: str) -> bool:
    return "acc" in name.rsplit("/", 1)[-1]


class MetricsRecord(Logger):
    """A logger that keeps, for every metric Lightning logs, its final and its best value."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, dict[str, Any]] = {}

    @property
    def name(self) -> str:
        return "record"

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
            if name == "epoch":
                continue
            value = float(value)
            entry = self.metrics.setdefault(name, {"final": None, "best": None, "best_epoch": None})
            entry["final"], entry["final_epoch"] = value, epoch
            best = entry["best"]
            if math.isfinite(value) and (
                best is None or (value > best if higher_is_better(name) else value < best)
            ):
                entry["best"], entry["best_epoch"] = value, epoch

    def best(self, name: str) -> float | None:
        return self.metrics.get(name, {}).get("best")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a file, a crash never leaves one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def flat_hparams(cfg: Any, choices: dict[str, str], batch_size: int) -> dict[str, Any]:
    """The flat key set the HParams tab shows: optimizer name and settings, batch size, model, data, seed."""
    params: dict[str, Any] = {
        "experiment": choices.get("experiment", ""),
        "optimizer": choices.get("optimizer", str(cfg.optimizer._target_).rsplit(".", 1)[-1]),
        "model": choices.get("model", str(cfg.model._target_).rsplit(".", 1)[-1]),
        "data": choices.get("data", str(cfg.data._target_).rsplit(".", 1)[-1]),
        "batch_size": batch_size,
        "seed": int(cfg.seed),
        "max_epochs": int(cfg.trainer.max_epochs),
    }
    for key, value in cfg.optimizer.items():
        if not str(key).startswith("_"):
            params[f"optimizer.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(list(value))
    return params


def log_hparams(tensorboard: Any, params: dict[str, Any], metrics: dict[str, float]) -> None:
    """Write the HParams summary with real metric values, instead of Lightning's `hp_metric = -1`.

    Metrics already logged as scalars (test/*) are referenced by tag; the `best/*` ones are written here.
    """
    from torch.utils.tensorboard.summary import hparams

    writer = tensorboard.experiment
    experiment, start, end = hparams(params, metrics)
    file_writer = writer._get_file_writer()
    for summary in (experiment, start, end):
        file_writer.add_summary(summary)
    for tag, value in metrics.items():
        if tag.startswith("best/"):
            writer.add_scalar(tag, value, 0)
    writer.flush()
