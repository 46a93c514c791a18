"""Lightning's loggers, with what a resumed run needs of them."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import MLFlowLogger

from experiments.core.state import MLFLOW_DB


class ResumableCSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, keeping the rows a run wrote before it was resumed: Lightning's own
    deletes metrics.csv when it opens a directory that has one. (A new run never opens such a
    directory: experiments.core.rundir refuses to start a run where another one lives.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        path = Path(self.log_dir) / "metrics.csv"
        self._earlier: list[dict[str, str]] = []
        if path.is_file():
            with path.open(newline="") as earlier:
                self._earlier = list(csv.DictReader(earlier))

    @property
    def experiment(self) -> Any:
        writer = super().experiment
        rows, self._earlier = self._earlier, []
        for row in rows:
            step = row.pop("step", "")
            writer.log_metrics(
                {k: number(v) for k, v in row.items() if v not in ("", None)},
                int(float(step)) if step else None,
            )
        return writer


def number(text: str) -> int | float:
    value = float(text)
    return (
        int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
    )


MLFLOW_STATUS = {"finished": "FINISHED", "interrupted": "KILLED"}  # any other ending: FAILED


def mlflow_store(run_dir: str | Path) -> Path:
    """Where logger=mlflow keeps its runs by default: the sweep's folder for a sweep's job (one
    store, every job a run in it), the run's own folder for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(str(HydraConfig.get().sweep.dir)).absolute()
    return Path(run_dir).absolute()


class RunMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger for this package's runs (logger=mlflow): a local SQLite store under
    the run or sweep (`store`: another MLflow tracking URI), the run named as its folder, its
    HParams row as params and tags saying its configuration, optimizer, learning rate, seed and
    stage (begin_mlflow_run; MLflow's "group by" draws a configuration's band), and its status as
    metrics.json says it (write_mlflow_run). What Lightning's lacks: a status other than its
    "success" for a run that diverged."""

    ended: str | None = None  # metrics.json's status once the run ended

    def __init__(
        self, run_dir: str, experiment_name: str = "experiments", store: str | None = None
    ) -> None:
        try:
            import mlflow  # noqa: F401
        except ImportError:  # built outside experiments.train (check_loggers_installed)
            from experiments.core.config import MLFLOW_MISSING, UserError

            raise UserError(MLFLOW_MISSING) from None
        where, folder = mlflow_store(run_dir), Path(run_dir).absolute()
        name = folder.relative_to(where).as_posix() if folder.is_relative_to(where) else "."
        super().__init__(
            experiment_name=experiment_name,
            run_name=name if name != "." else folder.name,
            tracking_uri=store or f"sqlite:///{where / MLFLOW_DB}",
        )

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        # Lightning logs the model's and data's arguments at the start: the run's HParams row,
        # logged before them (begin_mlflow_run), keeps its values (MLflow's params cannot
        # change) where a key is in both (batch_size: null there, 11 here)
        logged = self.experiment.get_run(self.run_id).data.params
        super().log_hyperparams({k: v for k, v in dict(params).items() if k not in logged})

    def finalize(self, status: str = "success") -> None:
        if self.ended is not None:
            status = MLFLOW_STATUS.get(self.ended, "FAILED")
        super().finalize(status)


def mlflow_tags(state: Any) -> dict[str, str]:
    """What a run's MLflow tags say: its configuration (every override but the seed), optimizer,
    learning rate, seed and, in sweep=compare, its stage."""
    from experiments.core.overrides import key_of

    overrides = [o for o in state.info.overrides if key_of(o) not in ("seed", "logger")]
    configuration = ",".join(sorted(overrides)) or "(defaults)"
    run_dir = Path(state.info.run_dir).absolute()
    where = mlflow_store(run_dir)
    if state.info.multirun and run_dir.is_relative_to(where) and run_dir != where:
        # a sweep's job: its folder's short name without its seed (adam,lr=0.1), as the
        # sweep's dashboard names the configuration
        name = run_dir.relative_to(where).name
        configuration = ",".join(p for p in name.split(",") if not p.startswith("seed=")) or name
    tags = {
        "configuration": configuration,
        "optimizer": str(state.hparams.get("optimizer")),
        "lr": str(state.hparams.get("optimizer.lr")),
        "seed": str(state.hparams.get("seed")),
        "status": str(state.status),
    }
    stage = Path(state.info.run_dir).parent.name
    if stage in ("stage1", "stage2"):
        tags["stage"] = stage
    return tags


def begin_mlflow_run(logger: Any, state: Any) -> None:
    """A run's HParams row as its params and its tags, before it trains."""
    logger.log_hyperparams(state.hparams)
    for key, value in mlflow_tags(state).items():
        logger.experiment.set_tag(logger.run_id, key, value)


def write_mlflow_run(logger: Any, state: Any, metrics: dict[str, float]) -> None:
    """How a run ended (its status, summary metrics), once it has."""
    logger.ended = state.status
    logger.log_hyperparams({"status": state.status})
    logger.experiment.set_tag(logger.run_id, "status", state.status)
    # the best of each validation metric (best/val_loss), as the HParams row has it; the test
    # metrics are logged by the test itself
    best = {k: v for k, v in metrics.items() if k.startswith("best/")}
    if best:
        logger.log_metrics(best, step=state.steps)
