"""hydra/launcher=vectorized: the jobs of a sweep that can share every batch train together, as
one population in one Lightning fit (experiments.population); the others run one after another
as with Hydra's basic launcher. Every job still leaves its own complete run directory.

The grouping is printed before training. Torch and Lightning are imported only when a group
trains: Hydra imports every plugin module whenever it starts.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from experiments.core.state import final_status
from hydra_plugins.experiments_plugins.grid_sweeper import composed

log = logging.getLogger(__name__)


class Plan(NamedTuple):  # not a dataclass: Hydra runs this module before it is in sys.modules
    """A batch of jobs as the launcher trains them: each job's full config and task config, the
    jobs refused by a value check, the groups trained together, the jobs trained alone (why)."""

    configs: list[DictConfig]
    tasks: list[DictConfig]
    refused: list[int]
    together: list[list[int]]
    alone: list[tuple[int, str]]

    def parts(self) -> list[list[int]]:
        """The jobs in the order they train, each group as one part."""
        return [[i] for i in self.refused] + self.together + [[i] for i, _ in self.alone]


class VectorizedLauncher(Launcher):
    def __init__(self, exact: bool = True) -> None:
        self.exact = exact
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def job_config(self, overrides: Sequence[str], idx: int, copy: bool = False) -> DictConfig:
        """The job's full config, its output directory set, as Hydra's own launchers make it: the
        sweeper's kept config of the job, or a copy of it when the batch holds the same
        overrides twice."""
        config = composed(self.hydra_context, self.config, overrides, mutable=copy)
        with read_write(config.hydra), open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        output = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        with read_write(config.hydra.runtime):
            config.hydra.runtime.output_dir = str(output.resolve())
        return config

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        nums = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
        return self.launch_numbered(job_overrides, nums)

    def plan(self, job_overrides: Sequence[Sequence[str]], nums: list[int]) -> Plan:
        """Each job's config, and which train together and which alone, as printed before
        training; `nums`: the jobs' numbers in the sweep."""
        from experiments.population.group import group_key

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs, seen = [], set()
        for overrides, num in zip(job_overrides, nums):
            configs.append(self.job_config(overrides, num, copy=tuple(overrides) in seen))
            seen.add(tuple(overrides))
        if configs:  # ${hydra:...} in the jobs' values resolves (group_key) as it did before
            HydraConfig.instance().set_config(configs[-1])
        # each job's config as its task receives it, made once (a copy costs 10 to 30 ms)
        tasks = [task_config(config) for config in configs]
        refused = [
            i for i, config in enumerate(configs) if value_error(config, tasks[i]) is not None
        ]
        groups: dict[str, list[int]] = {}
        alone: list[tuple[int, str]] = []
        for i, config in enumerate(configs):
            if i in refused:
                continue
            step = resume_step(config)
            key, reason = group_key(tasks[i], step)
            if key is None:
                alone.append((i, reason))
            else:
                groups.setdefault(key, []).append(i)
        fresh_keys = {
            i: group_key(tasks[i], None)[0] if resume_step(configs[i]) is not None else key
            for key, members in groups.items()
            for i in members
        }
        for members in groups.values():
            if len(members) == 1:
                i = members[0]
                resumes_apart = any(
                    fresh_keys.get(j) == fresh_keys[i] for j in fresh_keys if j != i
                )
                alone.append(
                    (
                        i,
                        "the jobs that share its settings continue from another step of their last.ckpt"
                        if resumes_apart
                        else "no other job shares its data, model and trainer settings",
                    )
                )
        together = [members for members in groups.values() if len(members) > 1]
        log.info(
            f"hydra/launcher=vectorized: {len(configs)} jobs, {sum(map(len, together))} of them in {len(together)} group(s) trained together"
        )
        for n, members in enumerate(together, 1):
            log.info(
                f"\tgroup {n}, {len(members)} jobs, differing in {', '.join(differing(configs, members)) or 'nothing'}"
            )
        for i, reason in sorted(alone):
            log.info(
                f"\talone: #{nums[i]} {' '.join(filter_overrides(job_overrides[i]))} ({reason})"
            )
        for i in refused:
            log.info(
                f"\tnot trained: #{nums[i]} {' '.join(filter_overrides(job_overrides[i]))} (a value fails its check)"
            )
        return Plan(configs, tasks, refused, together, sorted(alone))

    def launch_numbered(
        self, job_overrides: Sequence[Sequence[str]], nums: list[int]
    ) -> list[JobReturn]:
        """The jobs numbered `nums` in the sweep, trained as planned."""
        from experiments.population.group import check_launchable

        plan = self.plan(job_overrides, nums)
        configs, tasks = plan.configs, plan.tasks
        for members in plan.together:  # a swept trainer.strategy stops the sweep first
            check_launchable(tasks[members[0]])
        results: dict[int, JobReturn] = {}
        # A job whose value is refused runs first, as on the basic launcher, to record its sentence
        # (and, with fail_fast=true, to stop the sweep before anything trains).
        for i in plan.refused:
            results[i] = self.run_alone(configs[i])
        for members in plan.together:
            results.update(self.train_together(configs, tasks, job_overrides, members))
        for i, _ in plan.alone:
            results[i] = self.run_alone(configs[i])
        return [results[i] for i in range(len(configs))]

    def run_alone(self, config: DictConfig) -> JobReturn:
        """One job as Hydra's basic launcher runs it."""
        result = run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return result

    def train_together(
        self,
        configs: list[DictConfig],
        tasks: list[DictConfig],
        job_overrides: Sequence[Sequence[str]],
        members: list[int],
    ) -> dict[int, JobReturn]:
        from experiments.core.config import UserError, mistake
        from experiments.core.job import job_code, own_job, record_failure, report, stop_code
        from experiments.core.rundir import discard
        from experiments.core.search import job_trial
        from experiments.core.signals import deliver_held
        from experiments.core.state import RunInfo
        from experiments.population.group import Job, train_group

        # one update rule per class
        members = sorted(members, key=lambda i: str(configs[i].optimizer._target_))
        jobs: list[Job] = []
        handlers: list[logging.Handler] = []
        owned, results = [], {}
        for i in members:
            run_dir = Path(configs[i].hydra.runtime.output_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            if own_job(run_dir):
                owned.append(i)
            else:  # another process trains it: its directory is left alone, as train.main does
                results[i] = job_return(configs[i], tasks[i], job_overrides[i], None)
        members = owned
        if not members:
            return results
        for n, i in enumerate(members):
            config = configs[i]
            run_dir = Path(config.hydra.runtime.output_dir)
            save_hydra_files(config, tasks[i])
            if n == 0:
                configure_log(config.hydra.job_logging, config.hydra.verbose)
                for (
                    handler
                ) in logging.getLogger().handlers:  # the console, and this job's own log file
                    handler.addFilter(
                        OwnRecords(run_dir if isinstance(handler, logging.FileHandler) else None)
                    )
            else:
                handlers.append(job_log(run_dir / f"{config.hydra.job.name}.log"))
            HydraConfig.instance().set_config(config)
            # a copy of the task's config, detached from Hydra's node: the job's own
            cfg = OmegaConf.create(OmegaConf.to_container(tasks[i], resolve=False))
            cfg.run_dir = str(run_dir)  # the only ${hydra:} interpolation; the others stay live
            info = RunInfo.from_hydra(run_dir)
            step = resume_step(config)
            info.resumed = step is not None
            jobs.append(Job(cfg, info, step, job_trial(cfg), checked=True))  # value_error
            self.hydra_context.callbacks.on_job_start(
                config=config, task_function=self.task_function
            )
        fail_fast = bool(jobs[0].cfg.get("fail_fast"))
        try:
            outcomes = train_group(jobs, fail_fast, exact=self.exact)
        except Exception as error:  # every job of the group failed the same way
            reason = (
                str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
            )
            if not isinstance(error, UserError):
                log.exception("group failed: %s", error)
            sys.stderr.write(mistake(reason) + "\n")  # once for the group
            outcomes = [record_failure(job.info, reason, say=False) for job in jobs]
        else:
            for job, outcome in zip(jobs, outcomes):
                if outcome is not None:  # each job's summary in its own log, as a single run's
                    report(outcome, job.run_dir)
            stopped = [o for o in outcomes if o is not None and o["status"] == "interrupted"]
            if stopped:
                log.info(
                    f"{len(stopped)} jobs {stopped[0]['reason'].split(';')[0]}, each with its checkpoints/last.ckpt; the same command with hydra.sweep.dir={configs[0].hydra.sweep.dir} resumes them"
                )
        finally:
            for handler in handlers:
                logging.getLogger().removeHandler(handler)
                handler.close()
        for i, job, outcome in zip(members, jobs, outcomes):
            if outcome is None:  # never trained: the sweep stops at another job's mistake
                discard(job.run_dir)
                continue
            ret = job_return(configs[i], tasks[i], job_overrides[i], outcome["monitor"].get("best"))
            self.hydra_context.callbacks.on_job_end(config=configs[i], job_return=ret)
            results[i] = ret
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        deliver_held()  # a Slurm job stopped for its time limit: submitit requeues it now
        # A population stops as a single job would: interrupted, or fail_fast=true at a failed job.
        if stopping := stop_code([job_code(o) for o in outcomes], True, fail_fast):
            sys.exit(stopping)
        return results


def job_return(
    config: DictConfig, task: DictConfig, overrides: Sequence[str], value: float | None
) -> JobReturn:
    """What Hydra's run_job returns for a job that completed with this return value."""
    ret = JobReturn(
        overrides=list(overrides),
        cfg=task,
        hydra_cfg=config,
        working_dir=os.getcwd(),
        task_name=str(config.hydra.job.name),
    )
    ret.return_value = value
    ret.status = JobStatus.COMPLETED
    return ret


def value_error(config: DictConfig, task: DictConfig) -> str | None:
    """The sentence for a job whose values fail the checks that need no data, or None."""
    from experiments.core.config import UserError, check_values

    try:
        check_values(
            task,
            list(config.hydra.overrides.task),
            dict(config.hydra.runtime.choices),
        )
    except UserError as error:
        return str(error)
    return None


def task_config(config: DictConfig) -> DictConfig:
    """The job's config without Hydra's own node, as the task function receives it."""
    task = OmegaConf.masked_copy(config, [k for k in config.keys() if k != "hydra"])
    return task


def resume_step(config: DictConfig) -> int | None:
    """The step a job continues from: it stopped before finishing and left its last.ckpt."""

    run_dir = Path(str(config.hydra.runtime.output_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file() or final_status(run_dir):
        return None
    import torch

    return int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])


def differing(configs: list[DictConfig], members: list[int]) -> list[str]:
    """The overrides whose values differ between the members of a group."""
    values: dict[str, set[str]] = {}
    for i in members:
        for override in configs[i].hydra.overrides.task:
            key, _, value = str(override).partition("=")
            values.setdefault(key, set()).add(value)
    return sorted(
        k
        for k, v in values.items()
        if len(v) > 1
        or any(
            k not in {str(o).partition("=")[0] for o in configs[i].hydra.overrides.task}
            for i in members
        )
    )


def save_hydra_files(config: DictConfig, task: DictConfig) -> None:
    """.hydra/config.yaml, hydra.yaml and overrides.yaml, as Hydra writes them for every job."""
    folder = Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir)
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(task, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": config.hydra}), folder / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(config.hydra.overrides.task)), folder / "overrides.yaml")


class OwnRecords(logging.Filter):
    """A job's log file takes what concerns the whole group and what concerns that job (a record's
    `run_dir`), not another job's lines; the console (`run_dir` None) takes all but `file_only` ones."""

    def __init__(self, run_dir: Path | None) -> None:
        super().__init__()
        self.run_dir = run_dir

    def filter(self, record: logging.LogRecord) -> bool:
        if self.run_dir is None:
            return not getattr(record, "file_only", False)
        return getattr(record, "run_dir", self.run_dir) == self.run_dir


def job_log(path: Path) -> logging.Handler:
    """A job's own log file, receiving what the group logs and what concerns this job."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    handler.addFilter(OwnRecords(path.parent))
    logging.getLogger().addHandler(handler)
    return handler
