"""Lightning's start-up chatter and its warnings meant for library authors kept off the console;
what remains goes through the run's own log handlers once. Called before any Trainer is built."""

from __future__ import annotations

import logging
import os
import warnings

from experiments.core import speedups


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter and warnings meant for library authors off the console;
    what remains goes through our log handlers once."""
    import lightning.pytorch  # noqa: F401  (it installs its own handlers on import)

    speedups.skip_nvml_probe()

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.WARNING)
    for message in (
        r".*LeafSpec.*",
        r".*is smaller than the logging interval.*",
        r".*Checkpoint directory .* exists and is not empty.*",
        r".*sync_dist=True.*",
        r".*does not have many workers.*",
        r".*Experiment logs directory .* exists and is not empty.*",
        r".*The dirpath has changed from.*",
    ):
        warnings.filterwarnings("ignore", message=message)
    if "SLURM_JOB_ID" not in os.environ:  # Slurm's client on a login node or laptop: not a job
        warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system")
