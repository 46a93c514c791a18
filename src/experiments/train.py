"""Train one experiment: `python -m experiments.train [group=option ...] [key=value ...]`.

`main` is the Hydra entry for one run or one job of a sweep: it decides how the job runs (fresh,
resumed, or as a process of its own), records a job that fails, prints the summary and sets the
exit code. The run itself is experiments.run.train. Torch and Lightning are imported only when
training starts, so `--help` and `--cfg job` answer without loading them.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from experiments.cli import run_cli
from experiments.config import CONF_DIR, UserError
from experiments.rundir import RESUME_ONE_RUN, check_continuation, discard_claimed, own
from experiments.signals import exit_code
from experiments.state import RunInfo, failure_record, summary_text, write_json

log = logging.getLogger("experiments")


def run_info(cfg: DictConfig) -> RunInfo:
    return RunInfo.from_hydra(Path(cfg.run_dir), resumed=bool(cfg.get("resume")))


def print_summary(result: dict[str, Any]) -> None:
    log.info(summary_text(result))


def rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank == 0


def disk_full(error: BaseException, run_dir: Path) -> str | None:
    """One sentence for a write that failed because the disk is full, wherever it surfaced."""
    seen: BaseException | None = error
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:  # an exception's context can loop back
        visited.add(id(seen))
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" ({seen.filename})" if seen.filename else ""
            return f"no space left on the device of {run_dir}{where}; free some space, then resume={run_dir} continues from its last checkpoint."
        seen = seen.__cause__ or seen.__context__
    return None


def record_failure(info: RunInfo, reason: str) -> None:
    """metrics.json for a sweep job that failed before its run could record itself."""
    try:
        write_json(info.run_dir / "metrics.json", failure_record(info.run_dir, reason, info.choices, info.overrides))
    except OSError as error:
        log.error("could not record the failure in %s: %s", info.run_dir, error)


def starts_script_processes(cfg: DictConfig) -> bool:
    """Whether the strategy starts its other processes by running this command again (Lightning's ddp)."""
    strategy = str(cfg.trainer.get("strategy") or "auto")
    return strategy.startswith("ddp") and not any(word in strategy for word in ("spawn", "fork", "notebook"))


def resumable_job(run_dir: Path) -> bool:
    """A sweep job run again in its directory (a requeue after preemption, or a rerun of the sweep)
    that stopped before finishing and left a checkpoint."""
    metrics = run_dir / "metrics.json"
    finished = metrics.is_file() and json.loads(metrics.read_text()).get("status") in ("finished", "pruned")
    return (run_dir / "checkpoints" / "last.ckpt").is_file() and not finished


def run_job_in_own_process(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Run one sweep job as a single run in a process of its own, in the job's directory.

    Lightning's DDP starts its other processes by running the command line again: inside a sweep,
    that would start the whole sweep again in each of them (duplicate directories, then a hang).
    As a single run, the usual Hydra and DDP handshake applies: same directory, rank 0 writes."""
    from hydra.core.hydra_config import HydraConfig

    from experiments.cli import quote_value

    if resumable_job(run_dir):
        command = [f"resume={quote_value(str(run_dir))}"]
    else:
        overrides = [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(("sweep=", "hydra.", "hydra/", "fail_fast="))]
        command = [*overrides, f"hydra.run.dir={quote_value(str(run_dir))}", "hydra.output_subdir=null"]
    done = subprocess.run([sys.executable, "-m", "experiments.train", *command, "hydra.mode=RUN"], cwd=os.getcwd())
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        raise RuntimeError(f"the job's own process exited with {done.returncode} before recording a result")
    return json.loads(metrics.read_text())


def run_job(cfg: DictConfig, info: RunInfo) -> tuple[dict[str, Any] | None, bool]:
    """Train this job the way it must run; the result, and whether its summary was printed already."""
    from experiments.run import train

    if cfg.get("resume"):
        if info.multirun:
            raise UserError(RESUME_ONE_RUN)  # a swept resume=a,b: each job says so
        check_continuation(cfg, Path(cfg.resume))
        cfg.ckpt_path = str(info.run_dir / "checkpoints" / "last.ckpt")
        return train(cfg, info), False
    if info.multirun and starts_script_processes(cfg):
        return run_job_in_own_process(cfg, info.run_dir), True
    if info.multirun and resumable_job(info.run_dir):
        cfg.ckpt_path = str(info.run_dir / "checkpoints" / "last.ckpt")
        info.resumed = True
    return train(cfg, info), False


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """One run, or one job of a sweep. A job that fails or diverges is recorded and the sweep goes
    on; with fail_fast=true the sweep stops there. A single run that does not finish exits non-zero."""
    info = run_info(cfg)
    printed = False
    if info.multirun:
        try:
            own(info.run_dir, "job")
        except UserError as error:  # another process trains this job: leave its directory alone
            sys.stderr.write(f"error: {error}\n")
            return None
    try:
        try:
            result, printed = run_job(cfg, info)
        except Exception as error:
            if (sentence := disk_full(error, info.run_dir)) is None:
                raise
            raise UserError(sentence) from error
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM before training started (once it has, a run stops at a step boundary)
        discard_claimed()  # this run's directory, and a sweep's made for it, if nothing else is there yet
        sys.stderr.write("interrupted before training started; nothing was kept\n")
        sys.exit(exit_code(interrupt))
    except UserError as error:
        sys.stderr.write(f"error: {error}\n")
        log.debug("error: %s", error)
        if not info.multirun:
            discard_claimed()  # a mistyped value leaves no empty run behind
            sys.exit(1)  # Hydra would print more for an exception
        record_failure(info, str(error))
        result = None
    except Exception as error:
        if not info.multirun:
            raise
        log.exception("job failed: %s", error)  # the traceback goes to the job's train.log
        if not (info.run_dir / "metrics.json").is_file():
            record_failure(info, f"{type(error).__name__}: {error}")
        result = None
    if result is not None and not printed and rank_zero():
        print_summary(result)
    if result is not None and result["status"] == "interrupted":
        sys.exit(130 if "SIGINT" in result["reason"] else 143)  # as a shell reports a signal; a sweep stops too
    if result is None or result["status"] not in ("finished", "pruned"):  # pruning is the search's own choice
        # Hydra's launchers run every job before raising a failure, so stopping means exiting here.
        if not info.multirun or cfg.fail_fast:
            sys.exit(1)
        return None
    return result["monitor"]["best"]


if __name__ == "__main__":
    run_cli(main, "train")
