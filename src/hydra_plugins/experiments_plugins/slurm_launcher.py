"""hydra/launcher=slurm: Hydra's submitit Slurm launcher (each job a Slurm job, requeued by
submitit after a preemption or time limit, resumed from its last.ckpt), with a sweep that goes
on past a job Slurm ended without a result (cancelled, killed at its time limit, its node lost):
that job's metrics.json says what Slurm reported, and the other jobs are collected as usual.
Hydra's launcher stops at the first such job with submitit's page-long error instead.

Its parameters are the submitit plugin's (conf/hydra/launcher/slurm.yaml); Hydra imports this
module in every app, so submitit is imported only when a sweep launches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict

from experiments.core.state import read_record, write_record
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)

log = logging.getLogger(__name__)


class SlurmLauncher(SubmititSlurmLauncher):
    def executor(self) -> Any:
        """submitit's executor with this launcher's parameters, as Hydra's plugin builds it."""
        import submitit

        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(
            folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params["max_num_timeout"],
        )
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                key if key in base else f"slurm_{key}": value
                for key, value in self.params.items()
                if key not in init_keys
            }
        )
        return executor

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Slurm sweep output dir : {sweep_dir}")
        params = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            params.append(
                (
                    list(overrides),
                    "hydra.sweep.dir",
                    idx,
                    f"job_id_for_{idx}",
                    Singleton.get_state(),
                )
            )
        jobs = self.executor().map_array(self, *zip(*params))
        log.info(f"submitted {len(jobs)} Slurm job(s): {', '.join(j.job_id for j in jobs)}")
        return [
            self.collect(job, list(overrides), idx)
            for idx, (job, overrides) in enumerate(zip(jobs, job_overrides), initial_job_idx)
        ]

    def collect(self, job: Any, overrides: list[str], idx: int) -> JobReturn:
        """The job's result; for a job that ended without one, what Slurm said, recorded in its
        metrics.json (interrupted: a rerun of the sweep resumes it from its last.ckpt)."""
        from submitit.core.utils import UncompletedJobError

        try:
            return job.results()[0]
        except UncompletedJobError:
            pass
        state = job.state
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.num = idx
        run_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        reason = f"Slurm job {job.job_id} ended {state} before the run recorded its end"
        record = read_record(run_dir)
        if record is not None and record.get("status") in ("running", "interrupted"):
            record["status"] = "interrupted"
            record["reason"] = f"{record.get('reason') or 'stopped'}; {reason}"
            write_record(run_dir, record)
        elif record is None:
            from experiments.core.state import failure_record

            choices = OmegaConf.to_container(config.hydra.runtime.choices)
            write_record(run_dir, failure_record(run_dir, reason, choices, overrides))
        log.warning(f"#{idx} {' '.join(filter_overrides(overrides))}: {reason}")
        return JobReturn(  # recorded: the sweep goes on
            overrides=overrides,
            working_dir=str(run_dir),
            task_name=str(config.hydra.job.name),
            status=JobStatus.COMPLETED,
        )
