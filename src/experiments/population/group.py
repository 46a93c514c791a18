"""Which jobs of a sweep can train as one population, and training them.

Jobs share a population when they can share every batch: the same data settings (so the same
batch order), the same model architecture, epochs, trainer settings, loggers and callbacks. They
may differ in the optimizer (class and settings), the learning-rate schedule, the metric that
picks the best checkpoint, the model's initial values (`model.init_*`), and `seed`, which sets
each replica's random initial weights; a job's data order comes from `data.seed`, which is
`seed` unless set apart (`data.seed=0 seed=1,2,3` trains three initialisations on one batch
order). A job that starts from `ckpt_path`, uses mixed precision, or has a callback a population
cannot give each run (EarlyStopping, say) trains on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.core.config import UserError
from experiments.core.state import RunInfo

PER_RUN_KEYS = (
    "optimizer",
    "scheduler",
    "seed",
    "monitor",
    "monitor_mode",
    "fail_fast",
    "run_dir",
    "resume",
    "ckpt_path",
    "trial",
)
# What a population gives each run: checkpoints (Lightning's, or ours with last.ckpt) and the progress line.
POPULATION_CALLBACKS = ("ModelCheckpoint", "BestAndLastCheckpoint", "ProgressLine")
FULL_PRECISION = ("32-true", "32", "64-true", "64")
PLACEHOLDER = "@run_dir@"


@dataclass
class Job:
    cfg: DictConfig  # the job's config with `run_dir` set to its directory (no ${hydra:} left)
    info: RunInfo
    resume_step: int | None = None  # the step of its last.ckpt when it continues
    trial: Any = None  # its Optuna trial, when hydra/sweeper=optuna prunes
    checked: bool = False  # its values passed check_values (the launcher checks each job once)

    @property
    def run_dir(self) -> Path:
        return self.info.run_dir


def check_launchable(cfg: DictConfig) -> None:
    strategy = str(cfg.trainer.get("strategy") or "auto")
    if strategy.startswith(("ddp", "fsdp", "deepspeed")) or (
        cfg.trainer.get("devices") not in (1, "1", "auto", None)
        and cfg.trainer.get("devices") != [0]
    ):
        raise UserError(
            f"hydra/launcher=vectorized trains a group of jobs in one process on one device, so it takes no trainer.strategy={strategy} "
            f"or trainer.devices={cfg.trainer.get('devices')}; use hydra/launcher=basic for a sweep of multi-device jobs."
        )


def group_key(cfg: DictConfig, resume_step: int | None) -> tuple[str | None, str]:
    """Jobs with the same key can train as one population; a key of None, with the reason, for a
    job that trains alone."""
    trainer = cfg.trainer
    if str(trainer.get("precision")) not in FULL_PRECISION:
        return (
            None,
            f"trainer.precision={trainer.get('precision')} (a population trains in full precision)",
        )
    if cfg.get("ckpt_path"):
        return None, "it starts from ckpt_path"
    config = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    config["run_dir"] = PLACEHOLDER  # every ${run_dir} below resolves alike
    config = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
    callbacks = config.get("callbacks") or {}
    for name, node in callbacks.items():
        if (
            isinstance(node, dict)
            and str(node.get("_target_", "")).rsplit(".", 1)[-1] not in POPULATION_CALLBACKS
        ):
            return None, f"callbacks.{name} is not one a population gives each run"
    shared = {k: v for k, v in config.items() if k not in PER_RUN_KEYS}
    shared["model"] = {k: v for k, v in config["model"].items() if not k.startswith("init_")}
    shared["callbacks"] = {
        name: {k: v for k, v in node.items() if k not in ("monitor", "mode")}
        for name, node in callbacks.items()
    }
    shared["resume_step"] = resume_step
    return json.dumps(shared, sort_keys=True, default=str), ""


def train_group(
    jobs: list[Job], fail_fast: bool, exact: bool = True
) -> list[dict[str, Any] | None]:
    """Train the jobs as one population: one fit over shared batches, then each run's test on
    its own best weights. Returns what each job's metrics.json holds (None for a job left
    untrained because fail_fast=true stopped at another's mistake). `exact`: on the CPU, each
    job's arithmetic is its single run's (experiments.population.stacked)."""
    from experiments.core.config import check_values
    from experiments.core.job import record_failure

    refused: dict[int, dict[str, Any]] = {}

    def refuse(k: int, error: UserError) -> None:
        """A job's own mistake fails that job alone, as on the basic launcher (a sweeper has
        already refused the sweep for a value outside its domain; this catches the rest)."""
        refused[k] = record_failure(jobs[k].info, error)

    for k, job in enumerate(jobs):
        try:
            if not job.checked:
                check_values(job.cfg, job.info.overrides, job.info.choices)
        except UserError as error:
            refuse(k, error)
    if len(refused) == len(jobs):
        return [refused[k] for k in range(len(jobs))]
    first = next(job.cfg for k, job in enumerate(jobs) if k not in refused)
    from experiments.build import start_fit

    start_fit(first)
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from experiments.build import (
        build_model,
        build_node,
        check_schedule_length,
        dynamics_monitor,
        instantiate_group,
        make_trainer,
        recorder,
        run_parts,
    )
    from experiments.callbacks.progress import ProgressLine
    from experiments.callbacks.pruning import TrialPruning
    from experiments.population.checkpoints import PopulationCheckpointIO, PopulationCheckpoints
    from experiments.population.module import PopulationModule, PopulationRuns

    datamodule = build_node(first.data, "data")
    datamodule.load()
    built = []
    for k, job in enumerate(jobs):
        if k not in refused:
            # each replica starts where its single run would
            pl.seed_everything(job.cfg.seed, workers=True, verbose=False)
            try:
                model = build_model(job.cfg, datamodule, job.info.choices)
                check_schedule_length(job.cfg, model, datamodule)
                built.append((k, job, model))
            except UserError as error:
                refuse(k, error)
    # fail_fast=true: the sweep stops at its first failed job, before any trains
    if not built or (fail_fast and refused):
        return [refused.get(k) for k in range(len(jobs))]

    trained = [job for _, job, _ in built]
    first = trained[
        0
    ].cfg  # a job refused while building leaves its settings unresolved (mode: auto)
    models, states, loggers, checkpoints = [], [], [], []
    population = {"size": len(trained), "jobs": [j.run_dir.name for j in trained]}
    for _, job, model in built:
        state, own_loggers, configured = run_parts(job.cfg, job.info, datamodule, model, population)
        if states:  # the runs of a population share every epoch
            state.epoch_seconds = states[0].epoch_seconds
        models.append(model)
        states.append(state)
        loggers.append(own_loggers)
        checkpoints.append([c for c in configured if isinstance(c, ModelCheckpoint)])
    optimizers, schedulers = (
        [m.optimizer_factory for m in models],
        [m.scheduler_config for m in models],
    )
    population = PopulationModule(models, optimizers, schedulers, states, loggers, fail_fast, exact)
    runs = PopulationRuns(states, loggers)
    progress = [
        c
        for c in instantiate_group(first.get("callbacks"), "callbacks")
        if isinstance(c, ProgressLine)
    ]
    saving = PopulationCheckpoints(checkpoints)
    callbacks = [*progress, saving, *dynamics_monitor(first, runs), recorder(runs, multirun=True)]
    if any(job.trial is not None for job in trained):
        callbacks.append(TrialPruning(runs, [job.trial for job in trained]))
    resume = (
        [job.run_dir / "checkpoints" / "last.ckpt" for job in trained]
        if trained[0].resume_step is not None
        else None
    )
    trainer = make_trainer(
        first.trainer,
        callbacks,
        False,
        [PopulationCheckpointIO(resume)],
        trained[0].run_dir.parent,
        enable_checkpointing=False,
        enable_progress_bar=bool(progress),  # the population keeps each run's checkpoints
    )
    try:
        trainer.fit(
            population,
            datamodule=datamodule,
            ckpt_path=str(resume[0]) if resume else None,
            weights_only=True,
        )
        tested = population.running()
        if tested:
            with_best = [i for i in tested if i in saving.best_rows]
            with_best_rows = {i: saving.best_rows[i] for i in with_best}
            import torch

            with torch.no_grad():
                for i, row in with_best_rows.items():
                    population.flat[i] = row.to(population.flat)
            population.tested = set(tested)
            trainer.test(population, datamodule=datamodule, verbose=False, weights_only=True)
    except (KeyboardInterrupt, SystemExit):
        pass  # recorded by the callbacks: each unfinished run is interrupted, with its last.ckpt
    finally:
        for own_loggers, state in zip(loggers, states):
            for logger in own_loggers:
                logger.finalize("success" if state.status == "finished" else "failed")
    results = {k: state.result() for (k, _, _), state in zip(built, states)}
    return [results[k] if k in results else refused[k] for k in range(len(jobs))]
