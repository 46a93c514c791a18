"""Hydra's callbacks for every run and sweep (conf/train.yaml, hydra.callbacks): before a run or
sweep writes a file, its directory is claimed and its launcher and sweeper are checked (a mistake
is one sentence, nothing written); when a sweep ends, its tables, pictures and HParams experiment."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from experiments.cli import one_sentence
from experiments.core.config import UserError, check_loggers_installed
from experiments.core.domains import check_config
from experiments.core.rundir import RESUME_ONE_RUN, claim_run_dir, claim_sweep_dir

# The run and sweep directories this process claimed, newest last: experiments.api returns them.
CLAIMED: list[Path] = []
# lightning-hydra-template's search configs name the official hydra-optuna-sweeper plugin's class.
# That plugin needs Optuna < 3; where it is not installed, this package's sweeper, which takes its
# keys, answers to the name (nothing of ours sits at that plugin's package path).
OFFICIAL_OPTUNA = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
OUR_OPTUNA = "hydra_plugins.experiments_plugins.optuna_sweeper.OptunaSweeper"


def answer_for_official_optuna(config: DictConfig) -> None:
    """hydra.sweeper._target_ naming the official Optuna plugin, not installed, names ours instead."""
    import importlib.util

    from omegaconf import read_write

    if config.hydra.sweeper.get("_target_") != OFFICIAL_OPTUNA:
        return
    try:  # the module itself: a folder left with only __pycache__ in it is a namespace package
        official = importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper")
    except ModuleNotFoundError:
        official = None
    if official is None:
        with read_write(config.hydra.sweeper):
            config.hydra.sweeper._target_ = OUR_OPTUNA


def check_launcher(config: DictConfig) -> None:
    """A launcher that needs a cluster finds it, and the sweeper's settings hold, before the sweep
    writes anything."""
    if config.get("resume"):
        raise UserError(RESUME_ONE_RUN)
    check_loggers_installed(config)
    answer_for_official_optuna(config)
    check_preset_sweeper(config)
    check_config(config, only="hydra.sweeper.")  # the sweeper's and launcher's numbers
    check_config(config, only="hydra.launcher.")
    if str(config.hydra.sweeper.get("_target_", "")).endswith("OptunaSweeper"):
        from hydra_plugins.experiments_plugins.optuna_space import check_settings

        check_settings(config)
    target = str(config.hydra.launcher.get("_target_", ""))
    if target.endswith("SlurmLauncher"):
        from experiments.core.slurm import still_held

        check_slurm_reachable()
        still_held(Path(str(config.hydra.sweep.dir)))  # squeue answers for a folder's queued jobs
        sweeper = str(config.hydra.sweeper.get("_target_", "")).rsplit(".", 1)[-1]
        if config.hydra.launcher.get("wait", True) is False and sweeper != "GridSweeper":
            raise UserError(
                f"hydra.launcher.wait=false returns once the jobs are queued, but the {sweeper} "
                "chooses its next jobs from the results of the last ones; drop "
                "hydra.launcher.wait=false, or sweep a grid (the default sweeper)."
            )
    if target.endswith("VectorizedLauncher") or (
        target.endswith("SlurmLauncher") and config.hydra.launcher.get("populations")
    ):
        from experiments.population.group import check_launchable

        if config.hydra.job.name != "train":
            raise UserError(
                f"hydra/launcher=vectorized trains the jobs of experiments.train together; experiments."
                f"{config.hydra.job.name} runs each job on its own: use hydra/launcher=basic (the default) or parallel."
            )
        check_launchable(config)


SLURM_ELSEWHERE = (
    "run the sweep on the cluster, or use hydra/launcher=basic, parallel or submitit_local here."
)


def check_slurm_reachable(timeout_s: float = 20) -> None:
    """Slurm's commands are installed and its controller answers (`sinfo`), before a sweep
    submits anything: a login node without a reachable controller would otherwise end in
    submitit's page-long FailedJobError."""
    import subprocess

    if not (shutil.which("sbatch") and shutil.which("srun") and shutil.which("sinfo")):
        raise UserError(
            "hydra/launcher=slurm needs SLURM, but sbatch and srun are not on this machine's PATH; "
            + SLURM_ELSEWHERE
        )
    try:
        asked = subprocess.run(
            ["sinfo", "--noheader", "--format=%P"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
        answer = asked.stderr.strip().splitlines() if asked.returncode else []
    except subprocess.TimeoutExpired:
        answer = [f"no answer in {timeout_s:g} s"]
    if answer:
        where = os.environ.get("SLURM_CONF", "the default slurm.conf")
        raise UserError(
            f"hydra/launcher=slurm found Slurm's commands but no Slurm controller answers "
            f"(sinfo: {answer[-1].removeprefix('sinfo: ')}; settings from {where}); check SLURM_CONF, or "
            + SLURM_ELSEWHERE
        )


def check_preset_sweeper(config: DictConfig) -> None:
    """A sweep preset that picks its sweeper (sweep=compare its two stages, sweep=optuna_lr an
    Optuna search) runs on it: another hydra/sweeper on the command line would run something else
    under the preset's name."""
    from omegaconf import OmegaConf

    from experiments.core.config import CONF_DIR

    choices = config.hydra.runtime.choices
    preset, sweeper = choices.get("sweep"), choices.get("hydra/sweeper")
    path = CONF_DIR / "sweep" / f"{preset}.yaml"
    if not preset or not path.is_file():
        return
    defaults = OmegaConf.load(path).get("defaults") or []
    wanted = next(
        (d[k] for d in defaults if isinstance(d, DictConfig) for k in d if "hydra/sweeper" in k),
        None,
    )
    if wanted is not None and sweeper != wanted:
        raise UserError(
            f"sweep={preset} runs on hydra/sweeper={wanted}, but hydra/sweeper={sweeper} replaces it; "
            f"drop hydra/sweeper={sweeper}, or run that sweeper without sweep={preset}."
        )


class RunDirectoryCheck(Callback):
    """Before a run or sweep writes a file where it must not: a mistake is one sentence (printed by
    experiments.cli) and nothing is written."""

    @one_sentence
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        claim_run_dir(config)
        CLAIMED.append(Path(str(config.resume if config.get("resume") else config.hydra.run.dir)))

    @one_sentence
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_launcher(config)
        # a shared Optuna search: its workers run in one sweep directory together
        shared = bool(config.hydra.sweeper.get("shared")) and str(
            config.hydra.sweeper.get("_target_", "")
        ).endswith("OptunaSweeper")
        claim_sweep_dir(Path(str(config.hydra.sweep.dir)), shared=shared)
        CLAIMED.append(Path(str(config.hydra.sweep.dir)))


class SweepSummary(Callback):
    """When every job of a sweep is done, whichever launcher ran them: its table (printed,
    summary.csv, summary.md), pictures and HParams experiment, read back from the jobs' files.
    The sweep exits non-zero if a job failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from experiments.report.summary import summarize

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if config.hydra.launcher.get("wait", True) is False:  # queued on Slurm, not yet trained
            print(
                f"The jobs are queued on Slurm; this command may end. Their tables and pictures, "
                f"as they end: python -m experiments.collect {sweep_dir}"
            )
            return
        from experiments.core.search import DEFERRED

        if str(sweep_dir.resolve()) in DEFERRED:  # a shared search: its last worker reports
            DEFERRED.discard(str(sweep_dir.resolve()))
            return
        if summarize(sweep_dir).get("failed"):
            sys.exit(1)
