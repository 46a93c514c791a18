"""What Slurm says of a sweep's jobs (squeue), for the launcher that submits them
(hydra/launcher=slurm) and the command that collects them (experiments.collect)."""

from __future__ import annotations

import subprocess

# Slurm's states of a job that will still run (a requeued one waits as PENDING)
WAITING = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
           "COMPLETING", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}  # fmt: skip


def slurm_states(ids: list[str]) -> dict[str, str] | None:
    """Slurm's state of each job it still knows (squeue); None where Slurm cannot be asked."""
    try:
        asked = subprocess.run(
            ["squeue", "--noheader", "--array", "--format=%i %T"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if asked.returncode != 0:
        return None
    known = dict(line.split()[:2] for line in asked.stdout.splitlines() if len(line.split()) >= 2)
    return {i: known[i] for i in ids if i in known}
