"""The bookkeeping around one job, the same whether it trains alone (experiments.train.main) or in
a population (the vectorized launcher): own its directory, record a failure that stopped it before
it could record itself, leave its summary in its log, and choose the exit code that stops the
process (a single run that does not finish, a signal, or fail_fast=true in a sweep)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from experiments.core.config import UserError, mistake
from experiments.core.rundir import own
from experiments.core.state import RunInfo, exit_code, failure_record, summary_text, write_record

log = logging.getLogger("experiments")


def own_job(run_dir: Path) -> bool:
    """Take a sweep job's directory; False, with the sentence on stderr, when another process
    trains that job: its directory is left alone and the sweep goes on."""
    try:
        own(run_dir, "job")
    except UserError as error:
        sys.stderr.write(mistake(error) + "\n")
        return False
    return True


def record_failure(info: RunInfo, error: BaseException | str, say: bool = True) -> dict[str, Any]:
    """metrics.json for a job that failed before its run could record itself, so the sweep
    accounts for it; a mistake of the user's is printed as its sentence (say=False: the caller
    prints it once for several jobs). Returns the record."""
    if isinstance(error, BaseException) and not isinstance(error, UserError):
        reason = f"{type(error).__name__}: {error}"
    else:
        reason = str(error)
        if say:
            sys.stderr.write(mistake(reason) + "\n")
    record = failure_record(info.run_dir, reason, info.choices, info.overrides)
    try:
        write_record(info.run_dir, record)
    except OSError as failure:
        log.error("could not record the failure in %s: %s", info.run_dir, failure)
    return record


def report(result: dict[str, Any], run_dir: Path | None = None) -> None:
    """A job's summary: on the console and in its log for a job of its own; in its own log only
    (`run_dir`) for a job of a population, whose console shows the sweep's table instead."""
    if run_dir is None:
        log.info(summary_text(result))
    else:
        log.info(summary_text(result), extra={"run_dir": run_dir, "file_only": True})


def job_code(result: dict[str, Any] | None) -> int:
    """0 finished (or pruned), 1 failed or diverged (or never recorded), 130/143 interrupted."""
    return 1 if result is None else exit_code(result["status"], result.get("reason"))


def stop_code(codes: list[int], multirun: bool, fail_fast: bool) -> int:
    """The exit code that ends the process now, 0 to go on: a single run that did not finish; in
    a sweep a signal (130, 143), or with fail_fast=true any job that did not finish. Hydra's
    launchers run every job before raising a failure, so stopping a sweep means exiting."""
    for code in codes:
        if code in (130, 143):
            return code
    if any(codes) and (not multirun or fail_fast):
        return next(code for code in codes if code)
    return 0
