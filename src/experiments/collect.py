"""`python -m experiments.collect SWEEP_DIR`: a sweep submitted to Slurm without waiting
(hydra/launcher=slurm hydra.launcher.wait=false) gathered when one likes: the tables, pictures
and dashboards of the jobs that have a record (summary.csv, runs.csv, ... as the sweep itself
would write them), and which jobs have not ended, with Slurm's state of each. Run it again as
jobs end; it trains nothing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.core.config import UserError, mistake
from experiments.core.slurm import WAITING, slurm_states
from experiments.core.state import FINAL, SLURM_JOBS, read_json, read_record


def collect(sweep_dir: Path) -> dict[str, list[dict]]:
    """Write what the ended jobs give and say what has not ended; the jobs, by `ended` and
    `waiting`."""
    from experiments.report.summary import summarize

    if not (sweep_dir / "multirun.yaml").is_file():
        raise UserError(f"{sweep_dir} is not a sweep's folder: it has no multirun.yaml.")
    noted = (read_json(sweep_dir / SLURM_JOBS) or {}).get("jobs")
    if noted is None:
        raise UserError(
            f"{sweep_dir} was not submitted with hydra.launcher.wait=false (it has no "
            f"{SLURM_JOBS}): its tables came with the sweep itself."
        )
    states = slurm_states([job["slurm_job"] for job in noted])
    ended, waiting = [], []
    for job in noted:
        status = (read_record(sweep_dir / job["dir"]) or {}).get("status")
        slurm = "UNKNOWN" if states is None else states.get(job["slurm_job"], "ENDED")
        job = {**job, "status": status, "slurm": slurm}
        gone = states is not None and slurm not in WAITING  # it will not run again
        (ended if status in FINAL or gone else waiting).append(job)
    summarize(sweep_dir)
    print(f"{len(ended)} of {len(noted)} Slurm jobs have ended.")
    for job in waiting:
        print(
            f"  not yet: #{job['num']} {job['dir']} (Slurm job {job['slurm_job']}, "
            f"{job['slurm'].lower()}{', ' + job['status'] if job['status'] else ''})"
        )
    if waiting:
        print(f"Run again as they end: python -m experiments.collect {sweep_dir}")
    return {"ended": ended, "waiting": waiting}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.collect", description=__doc__)
    parser.add_argument("sweep_dir", type=Path, help="the sweep's folder, outputs/sweeps/...")
    args = parser.parse_args(argv)
    try:
        collect(args.sweep_dir)
    except UserError as error:
        sys.stderr.write(mistake(error) + "\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
