"""SIGTERM while a command is still starting (loading torch, composing, building the data) ends
it as Ctrl-C does: one line, exit code 143, nothing kept. Once a Trainer is about to train,
Lightning's own handler takes over, and SIGTERM stops training at a step boundary with a
checkpoint (experiments.callbacks.interruption).

Under Slurm, submitit asks for SIGUSR2 some time before a job's time limit (`--signal=USR2@
signal_delay_s`) and its handler saves the job's submission, requeues it and exits at once, in
the middle of a step. A fit holds that handler back: training stops at the next step boundary
with its last.ckpt, the run is recorded, and then the job runs it (`deliver_held`). A training
process in a Slurm job that no handler prepared for the notice (a plain sbatch script's run),
which SIGUSR2 would end, stops at the step boundary too."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

TIME_LIMIT_NOTICE = signal.SIGUSR2  # submitit's signal before a Slurm job's time limit
_held: list[tuple[int, Any]] = []  # handlers a fit stopped for, run once the job is recorded


class Terminated(KeyboardInterrupt):
    """SIGTERM before training started."""

    exit_code = 143


def _terminated(signum: int, frame: Any) -> None:
    raise Terminated


def stop_on_sigterm_while_starting() -> None:
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _terminated)


def hand_sigterm_to_lightning() -> None:
    """Before a Trainer fits: Lightning installs its handler only where SIGTERM has none."""
    if signal.getsignal(signal.SIGTERM) is _terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return getattr(interrupt, "exit_code", 130)


def in_slurm_job() -> bool:
    """Whether this process runs in a Slurm job, where SIGUSR2 is the time-limit notice."""
    return bool(os.environ.get("SLURM_JOB_ID"))


def hold(handler: Any) -> None:
    """A fit stopped for the time-limit notice: its handler runs when the job is recorded."""
    _held.append((TIME_LIMIT_NOTICE, handler))


def deliver_held() -> None:
    """Run the notice handlers held back (submitit's: save the submission, requeue the Slurm job,
    exit); nothing where none was held."""
    while _held:
        signum, handler = _held.pop()
        signal.signal(signum, handler)
        try:
            handler(signum, None)
        except Exception as error:  # submitit: "timed-out too many times"; the run is recorded
            logging.getLogger(__name__).warning("not requeued: %s", error)
