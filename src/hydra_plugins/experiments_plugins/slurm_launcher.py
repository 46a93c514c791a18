"""hydra/launcher=slurm: Hydra's submitit Slurm launcher (each job a Slurm job, requeued by
submitit after a preemption or time limit, resumed from its last.ckpt), with a sweep that goes
on past a job Slurm ended without a result (cancelled, killed at its time limit, its node lost):
that job's metrics.json says what Slurm reported, and the other jobs are collected as usual.
Hydra's launcher stops at the first such job with submitit's page-long error instead.

With hydra.launcher.wait=false the sweep returns once its jobs are queued: the command that
submitted them may end with the terminal, and `python -m experiments.collect SWEEP_DIR` writes
the tables and pictures of whatever has ended (and says what has not), as often as one likes.

Its parameters are the submitit plugin's and `wait` (conf/hydra/launcher/slurm.yaml, schema
ExperimentsSlurmConf); Hydra imports this module in every app, so submitit is imported only when
a sweep launches.
"""

# no `from __future__ import annotations`: Hydra executes plugin modules before they are in
# sys.modules, where a dataclass looks its string annotations up
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from experiments.core.state import (
    SLURM_JOBS,
    final_status,
    read_json,
    read_record,
    write_json,
    write_record,
)
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)

log = logging.getLogger(__name__)


POLL_S = 2.0  # how often the sweep asks Slurm about the job it waits for

# Slurm's states of a job that ended and will not run again (a requeued one is PENDING)
ENDED_WITHOUT_RESULT = {
    "BOOT_FAIL",
    "CANCELLED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}


@dataclass
class ExperimentsSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.experiments_plugins.slurm_launcher.SlurmLauncher"
    wait: bool = True  # false: return once the jobs are queued; experiments.collect gathers them
    # true: the jobs that can share every batch train together, one Slurm job per population
    # (as hydra/launcher=vectorized groups them on one machine)
    populations: bool = False


# our own name: Hydra's submitit_slurm stays the plugin's for every other app
ConfigStore.instance().store(
    group="hydra/launcher",
    name="experiments_slurm",
    node=ExperimentsSlurmConf,
    provider="experiments",
)


class Population:
    """What one Slurm job of populations=true runs: one population, as the vectorized launcher
    trains it. Checkpointable, as submitit asks (a bound method is not): at its time limit
    submitit requeues it, and its jobs continue from their last.ckpt."""

    def __init__(self, launcher: "SlurmLauncher") -> None:
        self.launcher = launcher

    def __call__(self, overrides: list[list[str]], nums: list[int], state: dict) -> Any:
        return self.launcher.train_part(overrides, nums, state)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


class SlurmLauncher(SubmititSlurmLauncher):
    def __init__(self, wait: bool = True, populations: bool = False, **params: Any) -> None:
        super().__init__(**params)
        self.wait = wait
        self.populations = populations

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
        nums = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
        state = Singleton.get_state()
        if self.populations:  # one Slurm job per population, each job in the part it trains in
            parts = self.vectorized().plan(job_overrides, nums).parts()
        else:
            parts = [[i] for i in range(len(job_overrides))]
            for idx, overrides in zip(nums, job_overrides):
                log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        # a part an earlier submission of this sweep left queued or running is not submitted again
        queued = self.still_queued(parts, job_overrides, nums)
        new = [part for n, part in enumerate(parts) if n not in queued]
        if self.populations:
            params = [
                ([list(job_overrides[i]) for i in part], [nums[i] for i in part], state)
                for part in new
            ]
            callable_: Any = Population(self)
        else:
            params = [
                (list(job_overrides[i]), "hydra.sweep.dir", nums[i], f"job_id_for_{nums[i]}", state)
                for (i,) in new
            ]
            callable_ = self
        fresh = iter(self.executor().map_array(callable_, *zip(*params)) if params else [])
        submitted = [queued[n] if n in queued else next(fresh) for n in range(len(parts))]
        ids = [job.job_id for n, job in enumerate(submitted) if n not in queued]
        log.info(
            f"submitted {len(new)} Slurm job(s) for {sum(map(len, new))} sweep job(s)"
            + (": " + ", ".join(ids) if ids else "")
        )
        if not self.wait:
            return self.leave(submitted, parts, job_overrides, nums)
        results: dict[int, JobReturn] = {}
        for job, part in zip(submitted, parts):
            results.update(self.collect(job, part, job_overrides, nums))
        return [results[i] for i in range(len(job_overrides))]

    def still_queued(
        self, parts: list[list[int]], job_overrides: Sequence[Sequence[str]], nums: list[int]
    ) -> dict[int, Any]:
        """The parts (by index) whose jobs an earlier submission into this sweep's folder
        (hydra.launcher.wait=false) left queued or running as one Slurm job: that job, to wait for
        or note again instead of training them twice."""
        from experiments.core.slurm import WAITING, still_held

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        noted, states = still_held(sweep_dir)  # checked before the sweep started, and again now
        if not noted:
            return {}
        from submitit import SlurmJob

        live: dict[str, set[str]] = {}  # each Slurm job still queued or running: its jobs' folders
        for job in noted:
            if states.get(job["slurm_job"]) in WAITING:
                live.setdefault(job["slurm_job"], set()).add(job["dir"])
        queued = {}
        for n, part in enumerate(parts):
            dirs = {
                os.path.relpath(self.job_dir(list(job_overrides[i]), nums[i])[0], sweep_dir)
                for i in part
            }
            # the Slurm job that trains this part: its jobs, and maybe others that have since
            # ended for good (a sweep run again leaves those out); one holding only some of
            # them (another `populations`) is not it
            for slurm_job, held in live.items():
                if not dirs <= held or any(not final_status(sweep_dir / d) for d in held - dirs):
                    continue
                folder = str(self.params["submitit_folder"])
                queued[n] = SlurmJob(folder=folder, job_id=slurm_job)
                for i in part:
                    log.info(
                        f"#{nums[i]} {' '.join(filter_overrides(job_overrides[i]))}: still "
                        f"{states[slurm_job].lower()} as Slurm job {slurm_job}; not submitted again"
                    )
                break
        return queued

    def vectorized(self) -> Any:
        """hydra/launcher=vectorized's launcher, for this sweep: it plans and trains populations."""
        from hydra_plugins.experiments_plugins.vectorized_launcher import VectorizedLauncher

        launcher = VectorizedLauncher()
        launcher.setup(
            hydra_context=self.hydra_context, task_function=self.task_function, config=self.config
        )
        return launcher

    def train_part(
        self, overrides: list[list[str]], nums: list[int], singleton_state: dict
    ) -> list[JobReturn]:
        """In the Slurm job: one population (or one job alone), as the vectorized launcher trains it.
        A member that ended for good is not trained again when submitit requeues the population
        (at its time limit) or it is resubmitted: its return is what its metrics.json says."""
        Singleton.set_state(singleton_state)
        runs = [self.job_dir(o, idx) for o, idx in zip(overrides, nums)]
        todo = [n for n, (run_dir, _) in enumerate(runs) if not final_status(run_dir)]
        trained = iter(
            self.vectorized().launch_numbered([overrides[n] for n in todo], [nums[n] for n in todo])
            if todo
            else []
        )
        return [
            next(trained) if n in todo else recorded(config, overrides[n], run_dir)
            for n, (run_dir, config) in enumerate(runs)
        ]

    def job_dir(self, overrides: list[str], idx: int) -> tuple[Path, DictConfig]:
        from hydra_plugins.experiments_plugins.grid_sweeper import composed

        config = composed(self.hydra_context, self.config, overrides)  # a copy: this job's
        with read_write(config.hydra), open_dict(config.hydra.job):  # read-only once it ran
            config.hydra.job.num = idx
        return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir), config

    def leave(
        self,
        submitted: list[Any],
        parts: list[list[int]],
        job_overrides: Sequence[Sequence[str]],
        nums: list[int],
    ) -> list[JobReturn]:
        """hydra.launcher.wait=false: note the queued jobs in the sweep's folder and return."""
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        noted = [
            {  # the job's folder relative to the sweep's, which may move
                "slurm_job": job.job_id,
                "num": nums[i],
                "dir": os.path.relpath(self.job_dir(list(job_overrides[i]), nums[i])[0], sweep_dir),
            }
            for job, part in zip(submitted, parts)
            for i in part
        ]
        known = (read_json(sweep_dir / SLURM_JOBS) or {}).get("jobs", [])
        known += [job for job in noted if job not in known]  # a job still queued: noted once
        write_json(sweep_dir / SLURM_JOBS, {"jobs": known})
        return [
            JobReturn(overrides=list(o), task_name="train", status=JobStatus.COMPLETED)
            for o in job_overrides
        ]

    def collect(
        self,
        job: Any,
        part: list[int],
        job_overrides: Sequence[Sequence[str]],
        nums: list[int],
    ) -> dict[int, JobReturn]:
        """The results of one Slurm job (one sweep job, or a population's); for a Slurm job that
        ended without them, what Slurm said, recorded in each of its jobs' metrics.json."""
        from submitit.core.utils import FailedJobError, UncompletedJobError

        while not job.done(force_check=True):  # Slurm asked each time: a cancelled job has
            time.sleep(POLL_S)  # no result file to say it ended (submitit's own wait: a minute)
        state = job.state
        # Slurm ended it without a result: submitit would wait for one (a slow filesystem's)
        if state.split(" ")[0] in ENDED_WITHOUT_RESULT and not job.paths.result_pickle.exists():
            return {i: self.lost(job.job_id, state, list(job_overrides[i]), nums[i]) for i in part}
        try:
            result = job.results()[0]
        except (UncompletedJobError, FailedJobError):
            state = job.state
            return {i: self.lost(job.job_id, state, list(job_overrides[i]), nums[i]) for i in part}
        return dict(zip(part, result if isinstance(result, list) else [result]))

    def lost(self, slurm_job: str, state: str, overrides: list[str], idx: int) -> JobReturn:
        """A job whose Slurm job ended without a result: its metrics.json says so (interrupted:
        a rerun of the sweep resumes it from its last.ckpt), and the sweep goes on."""
        run_dir, config = self.job_dir(overrides, idx)
        reason = f"Slurm job {slurm_job} ended {state} before the run recorded its end"
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


def recorded(config: DictConfig, overrides: list[str], run_dir: Path) -> JobReturn:
    """The return of a job that ended for good in an earlier run: its best monitored value."""
    ret = JobReturn(
        overrides=overrides,
        working_dir=str(run_dir),
        task_name=str(config.hydra.job.name),
        status=JobStatus.COMPLETED,
    )
    ret.return_value = ((read_record(run_dir) or {}).get("monitor") or {}).get("best")
    return ret
