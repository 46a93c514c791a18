"""Train one experiment: `python -m experiments.train [group=option ...] [key=value ...]`.

`main` is the Hydra entry for one run or one job of a sweep: it decides how the job runs (fresh,
resumed, or as a process of its own), records a job that fails, prints the summary and sets the
exit code. The run itself is experiments.run.train_and_test. Torch and Lightning are imported only when
training starts, so `--help` and `--cfg job` answer without loading them.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from experiments.cli import one_sentence, run_cli
from experiments.core.config import CONF_DIR, UserError, register_resolvers
from experiments.core.job import job_code, own_job, record_failure, report, stop_code
from experiments.core.overrides import disk_full, key_of
from experiments.core.rundir import RESUME_ONE_RUN, check_continuation
from experiments.core.signals import deliver_held
from experiments.core.state import (
    METRICS,
    RunInfo,
    final_status,
    read_record,
)

register_resolvers()  # conf/ resolves ${job_dir:...} and its siblings

log = logging.getLogger("experiments")


def run_info(cfg: DictConfig) -> RunInfo:
    return RunInfo.from_hydra(Path(cfg.run_dir), resumed=bool(cfg.get("resume")))


def rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank == 0


def starts_script_processes(cfg: DictConfig) -> bool:
    """Whether the strategy starts its other processes by running this command again (Lightning's ddp)."""
    strategy = str(cfg.trainer.get("strategy") or "auto")
    return strategy.startswith("ddp") and not any(
        word in strategy for word in ("spawn", "fork", "notebook")
    )


def resumable_job(run_dir: Path) -> bool:
    """A sweep job run again in its directory (a requeue after preemption, or a rerun of the sweep)
    that stopped before it ended for good and left a checkpoint."""
    return (run_dir / "checkpoints" / "last.ckpt").is_file() and not final_status(run_dir)


def run_job_in_own_process(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Run one sweep job as a single run in a process of its own, in the job's directory.

    Lightning's DDP starts its other processes by running the command line again: inside a sweep,
    that would start the whole sweep again in each of them (duplicate directories, then a hang).
    As a single run, the usual Hydra and DDP handshake applies: same directory, rank 0 writes."""
    from hydra.core.hydra_config import HydraConfig

    from experiments.core.overrides import quote_value

    if resumable_job(run_dir):
        command = [f"resume={quote_value(str(run_dir))}"]
    else:
        overrides = [
            o
            for o in HydraConfig.get().overrides.task
            if key_of(o) not in ("sweep", "fail_fast")
            and not key_of(o).startswith(("hydra.", "hydra/"))
        ]
        command = [
            *overrides,
            f"hydra.run.dir={quote_value(str(run_dir))}",
            "hydra.output_subdir=null",
        ]
    done = subprocess.run(
        [sys.executable, "-m", "experiments.train", *command, "hydra.mode=RUN"], cwd=os.getcwd()
    )
    record = read_record(run_dir)
    if record is None:
        raise RuntimeError(
            f"the job's own process exited with {done.returncode} before recording a result"
        )
    return record


def run_job(cfg: DictConfig, info: RunInfo) -> tuple[dict[str, Any] | None, bool]:
    """This job, run the way it must: a run resumed, a sweep's DDP job in a process of its own, a
    sweep job run again from its last.ckpt, or a fresh run here. A single run's mistake is raised
    (experiments.cli prints it); a sweep job's is recorded in its metrics.json (None) and the
    sweep goes on. Returns the result and whether its summary was printed already."""
    from experiments.run import train_and_test

    try:
        if cfg.get("resume"):
            if info.multirun:
                raise UserError(RESUME_ONE_RUN)  # a swept resume=a,b: each job says so
            check_continuation(cfg, Path(cfg.resume))
            cfg.ckpt_path = str(info.run_dir / "checkpoints" / "last.ckpt")
        elif info.multirun and starts_script_processes(cfg):
            return run_job_in_own_process(cfg, info.run_dir), True
        elif info.multirun and resumable_job(info.run_dir):
            cfg.ckpt_path = str(info.run_dir / "checkpoints" / "last.ckpt")
            info.resumed = True
        return train_and_test(cfg, info), False
    except Exception as error:
        if (sentence := disk_full(error, info.run_dir)) is not None:
            error = UserError(sentence)
        if not info.multirun:
            if isinstance(error, UserError):
                raise error from None
            raise
        if not isinstance(error, UserError):
            log.exception("job failed: %s", error)  # the traceback goes to the job's train.log
        if isinstance(error, UserError) or not (info.run_dir / METRICS).is_file():
            record_failure(info, error)
        return None, False


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@one_sentence
def main(cfg: DictConfig) -> float | None:
    """One run, or one job of a sweep. A job that fails or diverges is recorded and the sweep goes
    on; with fail_fast=true the sweep stops there. A single run that does not finish exits non-zero."""
    info = run_info(cfg)
    if info.multirun and not own_job(info.run_dir):
        return None
    result, printed = run_job(cfg, info)
    if result is not None and not printed and rank_zero():
        report(result)
    deliver_held()  # a Slurm job stopped for its time limit: submitit requeues it now
    code = job_code(result)
    if stopping := stop_code([code], info.multirun, bool(cfg.fail_fast)):
        sys.exit(stopping)
    return None if code else result["monitor"]["best"]


if __name__ == "__main__":
    run_cli(main, "train")
