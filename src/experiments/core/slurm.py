"""What Slurm says of a sweep's jobs (squeue), for the launcher that submits them
(hydra/launcher=slurm) and the command that collects them (experiments.collect)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from experiments.core.errors import UserError
from experiments.core.state import SLURM_JOBS, read_json

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


def still_held(sweep_dir: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The Slurm jobs an earlier submission into this sweep's folder noted (wait=false), and
    Slurm's state of those it still knows; refused in one sentence where squeue does not answer,
    since submitting again could then train a job twice."""
    noted = (read_json(sweep_dir / SLURM_JOBS) or {}).get("jobs") or []
    if not noted:
        return [], {}
    states = slurm_states(sorted({job["slurm_job"] for job in noted}))
    if states is None:
        raise UserError(
            f"squeue did not answer, so which of the Slurm jobs noted in {sweep_dir / SLURM_JOBS} "
            "still run is unknown and nothing was submitted; run the sweep again once squeue "
            f"answers, or collect it with `python -m experiments.collect {sweep_dir}`."
        )
    return noted, states
