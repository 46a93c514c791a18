"""Optuna studies of hydra/sweeper=optuna: where a sweep's study lives, and the trial a job is.

A job asks for its trial only when the sweep prunes (`hydra.sweeper.pruner`): then each validation
reports the monitored metric to it and the study's pruner may stop it (experiments.callbacks.pruning).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_STUDY = "experiments"
JOURNAL = "optuna.journal"


# Sweep directories whose report a shared Optuna search leaves to its last worker (in this process)
DEFERRED: set[str] = set()


def study_storage(storage: Any, sweep_dir: Path) -> Any:
    """The storage a config names (a URL such as sqlite:///study.db), or a journal file in the
    sweep directory, so the same command run again into the same directory continues the study."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if storage:
        return optuna.storages.get_storage(str(storage))
    return optuna.storages.JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL)))


def job_trial(cfg: Any) -> Any | None:
    """The Optuna trial this job is, when hydra/sweeper=optuna runs it and prunes; None otherwise.
    Reads Hydra's config of the job being run."""
    number = cfg.get("trial")
    if number is None:
        return None
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.sweeper
    if not sweeper.get("pruner"):
        return None
    import optuna
    from hydra.utils import instantiate

    name = sweeper.get("study_name") or DEFAULT_STUDY
    storage = study_storage(sweeper.get("storage"), Path(str(hydra_cfg.sweep.dir)))
    study = optuna.load_study(study_name=name, storage=storage, pruner=instantiate(sweeper.pruner))
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(name), int(number)
    )
    return optuna.trial.Trial(study, trial_id)
