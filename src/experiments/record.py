"""What a run leaves besides checkpoints: metrics.json, and its row in TensorBoard's HParams tab."""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
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


def checkpoint_paths(run_dir: Path) -> dict[str, str]:
    folder = run_dir / "checkpoints"
    return {name: str(folder / f"{name}.ckpt") for name in ("best", "last") if (folder / f"{name}.ckpt").is_file()}


def run_result(cfg: Any, trainer: Any, model: Any, recorder: MetricsRecord, outcome: dict[str, Any], context: dict[str, Any], hparams: dict[str, Any], seconds: float) -> dict[str, Any]:
    """What metrics.json holds for a run that got as far as training."""
    run_dir = Path(cfg.run_dir)
    epochs = model.train_epoch_seconds
    return {
        "status": outcome["status"],
        "reason": outcome["reason"],
        "experiment": context["choices"].get("experiment"),
        "overrides": context["overrides"],
        "wall_time_s": round(seconds, 3),
        "timing": {
            "fit_s": round(outcome.get("fit_s", seconds), 3),
            "test_s": round(outcome.get("test_s", 0.0), 3),
            "train_epoch_s_median": round(statistics.median(epochs), 6) if epochs else None,
            "train_epoch_s_first": round(epochs[0], 6) if epochs else None,
        },
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "monitor": {
            "name": cfg.monitor,
            "mode": cfg.monitor_mode,
            "best": recorder.best(cfg.monitor),
            "epoch": recorder.metrics.get(cfg.monitor, {}).get("best_epoch"),
        },
        "metrics": {k: v for k, v in recorder.metrics.items() if not k.startswith("test/")},
        "test": {k: v["final"] for k, v in recorder.metrics.items() if k.startswith("test/")},
        "parameters": outcome["parameters"],
        "hparams": hparams,
        "checkpoints": checkpoint_paths(run_dir),
        "run_dir": str(run_dir),
        "versions": versions(),
    }


def write_failure(run_dir: Path, reason: str, context: dict[str, Any]) -> None:
    """metrics.json for a job that failed before training started, so a sweep can account for it."""
    write_json(run_dir / "metrics.json", {
        "status": "failed",
        "reason": reason,
        "experiment": context["choices"].get("experiment"),
        "overrides": context["overrides"],
        "wall_time_s": 0.0,
        "epochs": 0,
        "steps": 0,
        "monitor": {},
        "metrics": {},
        "test": {},
        "parameters": None,
        "hparams": {"optimizer": context["choices"].get("optimizer", "")},
        "run_dir": str(run_dir),
    })


def hparams_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The HParams metric columns of a run: the best of each validation metric, and the test metrics."""
    metrics = {f"best/{k.replace('/', '_')}": v["best"] for k, v in result["metrics"].items() if k.startswith("val/") and v["best"] is not None}
    metrics.update({k: v for k, v in result["test"].items() if v is not None})
    return metrics


def log_run_hparams(loggers: list[Any], result: dict[str, Any], with_experiment: bool) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            log_hparams(logger, result["hparams"], hparams_metrics(result), with_experiment)


def previous_metrics(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The metric history of a run being resumed, so its metrics.json covers the whole run."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    return {k: v for k, v in json.loads(path.read_text()).get("metrics", {}).items() if not k.startswith("test/")}


@functools.cache
def versions() -> dict[str, str | None]:
    """What produced a run: this package's version and git commit, torch, Lightning and Hydra."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    from experiments.config import CONF_DIR

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CONF_DIR.parent, capture_output=True, text=True, timeout=5).stdout.strip() or None
        dirty = commit is not None and bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=CONF_DIR.parent, capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, False
    return {
        "experiments": installed("experiments"),
        "git_commit": None if commit is None else commit + ("-dirty" if dirty else ""),
        "torch": installed("torch"),
        "lightning": installed("lightning"),
        "hydra": installed("hydra-core"),
        "torchmetrics": installed("torchmetrics"),
        "python": ".".join(map(str, __import__("sys").version_info[:3])),
    }


def write_resolved_config(path: Path, config: dict[str, Any] | None) -> None:
    """The config with every interpolation resolved, beside the composed one in .hydra/."""
    if config is not None:
        from omegaconf import OmegaConf

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
        os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a file, a crash never leaves one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def plain(value: Any) -> int | float | str | bool:
    """A value TensorBoard's HParams can show: numbers, strings and booleans as they are, the rest as text."""
    if value is None:
        return ""
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def neutral(value: Any) -> int | float | str | bool:
    """What a run that lacks a setting shows for it: zero, false or empty, of the same type."""
    value = plain(value)
    return type(value)() if not isinstance(value, float) else 0.0


@functools.cache
def optimizer_settings() -> dict[str, Any]:
    """Every setting any optimizer preset has, with a neutral value, so every run shows the same keys."""
    from omegaconf import OmegaConf

    from experiments.config import CONF_DIR

    keys: dict[str, Any] = {}
    for path in sorted((CONF_DIR / "optimizer").glob("*.yaml")):
        for key, value in OmegaConf.to_container(OmegaConf.load(path)).items():
            if not key.startswith("_"):
                keys.setdefault(f"optimizer.{key}", neutral(value))
    return keys


def flat_hparams(cfg: Any, choices: dict[str, str], overrides: list[str], batch_size: int) -> dict[str, Any]:
    """The flat key set of the HParams tab: the groups chosen, every optimizer setting (neutral where
    this optimizer has none), batch size, seed, epochs, and any other key set on the command line."""
    params: dict[str, Any] = {
        "experiment": choices.get("experiment", ""),
        "optimizer": choices.get("optimizer", str(cfg.optimizer._target_).rsplit(".", 1)[-1]),
        "model": choices.get("model", str(cfg.model._target_).rsplit(".", 1)[-1]),
        "data": choices.get("data", str(cfg.data._target_).rsplit(".", 1)[-1]),
        "batch_size": batch_size,
        "seed": int(cfg.seed),
        "max_epochs": int(cfg.trainer.max_epochs),
        **optimizer_settings(),
    }
    for key, value in cfg.optimizer.items():
        if not str(key).startswith("_"):
            params[f"optimizer.{key}"] = plain(value)
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key not in params and key.split("/")[0] not in choices and "." in key:
            params[key] = plain(value)
    return params


def hparams_summaries(params: dict[str, Any], metrics: list[str], domains: dict[str, list] | None = None) -> tuple[Any, Any, Any]:
    """TensorBoard's (experiment, session start, session end) summaries for these settings and metric tags."""
    from torch.utils.tensorboard.summary import hparams

    return hparams(params, dict.fromkeys(metrics, 0.0), hparam_domain_discrete=domains)


def log_hparams(tensorboard: Any, params: dict[str, Any], metrics: dict[str, float], with_experiment: bool) -> None:
    """Write this run's HParams entry with real metric values, instead of Lightning's `hp_metric = -1`.

    Metrics already logged as scalars (test/*) are referenced by tag; the `best/*` ones are written
    here. In a sweep the runs leave out the experiment summary: TensorBoard takes the first one it
    finds for the whole table, so the sweep writes one covering every run (experiments.summary).
    """
    writer = tensorboard.experiment
    experiment, start, end = hparams_summaries(params, list(metrics))
    file_writer = writer._get_file_writer()
    for summary in (experiment, start, end) if with_experiment else (start, end):
        file_writer.add_summary(summary)
    for tag, value in metrics.items():
        if tag.startswith("best/"):
            writer.add_scalar(tag, value, 0)
    writer.flush()


def log_figures(loggers: list[Any], model: Any, datamodule: Any, stage: str, step: int) -> None:
    """The run's pictures (experiments.figures.run_figures) in TensorBoard's Images tab."""
    from lightning.pytorch.loggers import TensorBoardLogger

    tensorboards = [lg for lg in loggers if isinstance(lg, TensorBoardLogger)]
    if not tensorboards or datamodule.splits is None:
        return
    from experiments.figures import run_figures

    for tag, figure in run_figures(model, datamodule, stage).items():
        for logger in tensorboards:
            logger.experiment.add_figure(tag, figure, step)
    for logger in tensorboards:
        logger.experiment.flush()


def write_trajectory(path: Path, model: Any, datamodule: Any) -> None:
    """A two-parameter model's path (model.parameter_path) and its training data, for paths.png."""
    points = getattr(model, "parameter_path", None)
    if not points or datamodule.splits is None:
        return
    x, y = datamodule.splits["train"]
    write_json(path, {
        "steps": [step for step, _, _ in points],
        "w": [w for _, w, _ in points],
        "b": [b for _, _, b in points],
        "x": x.flatten().tolist(),
        "y": y.flatten().tolist(),
    })
