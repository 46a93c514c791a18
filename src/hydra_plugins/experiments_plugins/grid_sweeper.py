"""hydra/sweeper=grid, this app's default for -m (conf/hydra/sweeper/grid.yaml): what Hydra's own
basic sweeper does, a grid over comma-separated values handed to the launcher in batches, except
that jobs whose directory already holds a final result are not launched again.

Run the same sweep again into its directory (`hydra.sweep.dir=<that sweep>`) and only what is left
runs: a finished or diverged job keeps its directory untouched, an interrupted one resumes from its
last.ckpt, a failed one runs again. The jobs left go to the launcher as one batch, so
hydra/launcher=parallel or =vectorized still trains them together.
"""

from __future__ import annotations

import copy
import itertools
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from experiments.core.config import CONF_DIR, check_positive_int, check_values
from experiments.core.overrides import job_names, key_of, quote_value
from experiments.core.rundir import sweep_job_dirs
from experiments.core.state import final_status

log = logging.getLogger(__name__)


# Each job's composed config, kept for the launcher: a sweep would otherwise compose every job
# three times (to check it, to find its directory, to run it). Emptied when a sweeper starts: a
# second sweep in one process (experiments.api) composes anew.
COMPOSED: dict[tuple[str, ...], DictConfig] = {}
# Hydra composes a job's config from its defaults tree, every YAML file merged: 70 to 230 ms a job
# on a 2-core CPU. A sweep's jobs mostly differ in plain values only (optimizer.lr=, seed=), so
# Hydra composes each distinct choice of config groups once (its first job), and a job that differs
# from that one in plain values only is a copy of its config with those values set as Hydra's
# loader sets them, hydra.overrides.task and hydra.job.override_dirname rewritten (about 10 ms).
# tests/test_config.py checks that the result equals Hydra's own for every preset and sweep in conf/.
TEMPLATES: dict[tuple, tuple[list[Override], DictConfig]] = {}
SUBDIR = "hydra.sweep.subdir"
ABSENT = object()


def plain_value(override: Override, master: DictConfig) -> bool:
    """Whether an override sets a plain value (`optimizer.lr=0.01`, `seed=3`): no +, ~ or ++, no
    package, not a hydra key, a number, string, bool or null, and a key inside a node
    (`optimizer.lr`) or a top-level key holding a plain value or null (`seed`, `trial`), never a
    config group."""
    key = override.key_or_group
    if key == SUBDIR and override.type == OverrideType.CHANGE and not override.is_sweep_override():
        return True  # the job's folder, set by the sweeper (GridSweeper.named)
    if not (
        override.type == OverrideType.CHANGE
        and not override.is_sweep_override()
        and override.package is None
        and not override.is_hydra_override()
        and "/" not in key
        and key not in master.hydra.runtime.choices
        and not (CONF_DIR / key).is_dir()
        and isinstance(override.value(), (int, float, str, bool, type(None)))
    ):
        return False
    if "." in key:
        return True
    node = OmegaConf.select(master, key, default=ABSENT, throw_on_resolution_failure=False)
    return node is not ABSENT and not OmegaConf.is_config(node)  # null counts: trial=, resume=


def shape(overrides: list[Override], master: DictConfig) -> tuple | None:
    """The jobs that share this key share their config up to plain values; None: compose anew."""
    keys = [o.key_or_group for o in overrides]
    if len(set(keys)) < len(keys):
        return None
    return tuple(
        ("value", o.key_or_group) if plain_value(o, master) else ("line", o.input_line)
        for o in overrides
    )


def from_template(
    template: tuple[list[Override], DictConfig], overrides: list[Override], master: DictConfig
) -> DictConfig:
    """The template's config with this job's plain values, as Hydra's loader would compose it."""
    first, config = template[0], copy.deepcopy(template[1])
    for old, new in zip(first, overrides):
        if old.input_line != new.input_line:
            # what ConfigLoaderImpl._apply_overrides_to_config does with `key=value`
            OmegaConf.update(config, new.key_or_group, new.value(), merge=True)
    job = config.hydra.job
    # hydra.* lines go to hydra.overrides.hydra, after the sweep's own (load_sweep_config)
    task = [o for o in overrides if not o.is_hydra_override()]
    config.hydra.overrides.task = [o.input_line for o in task]
    config.hydra.overrides.hydra = [
        *master.hydra.overrides.hydra,
        *(o.input_line for o in overrides if o.is_hydra_override()),
    ]
    # what hydra's get_overrides_dirname does
    lines = sorted(
        o.input_line for o in task if o.key_or_group not in job.config.override_dirname.exclude_keys
    )
    job.override_dirname = re.sub(
        "[=]", job.config.override_dirname.kv_sep, job.config.override_dirname.item_sep.join(lines)
    )
    OmegaConf.copy_cache(from_config=master, to_config=config)
    return config


def compose(
    hydra_context: HydraContext, config: DictConfig, overrides: Sequence[str]
) -> DictConfig:
    """A job's config, equal to what Hydra's config loader composes (load_sweep_config)."""
    loader = hydra_context.config_loader
    loader = loader.loader if isinstance(loader, ComposedOnce) else loader
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(list(overrides))
    key = shape(parsed, config)
    if key is not None and key in TEMPLATES:
        try:
            return from_template(TEMPLATES[key], parsed, config)
        except Exception:  # a value that fails: Hydra's own composition says so in its words
            pass
    job = loader.load_sweep_config(config, list(overrides))
    if key is not None and key not in TEMPLATES:
        TEMPLATES[key] = (parsed, job)
        return copy.deepcopy(job)
    return job


def composed(
    hydra_context: HydraContext,
    config: DictConfig,
    overrides: Sequence[str],
    *,
    mutable: bool = True,
) -> DictConfig:
    """A job's config as Hydra's config loader composes it, composed once per sweep; a copy the
    caller may change, or with mutable=False the kept one, to read."""
    key = tuple(overrides)
    if key not in COMPOSED:
        COMPOSED[key] = compose(hydra_context, config, overrides)
    return copy.deepcopy(COMPOSED[key]) if mutable else COMPOSED[key]


def compose_all(
    hydra_context: HydraContext, config: DictConfig, batch: Sequence[Sequence[str]]
) -> None:
    """Each job of a batch composed as Hydra's loader composes it (a mistake raises in Hydra's
    words), kept for the launcher (ComposedOnce): a sweeper's validate_batch_is_legal."""
    for overrides in batch:
        composed(hydra_context, config, overrides, mutable=False)


class ComposedOnce(ConfigLoader):
    """Hydra's config loader as the sweepers hand it to their launcher: a job's config
    (load_sweep_config) is a copy of the one the sweeper composed to check the job and find its
    folder, not a composition of its own (Hydra's basic, joblib and submitit launchers compose each
    job again: about 0.16 s of a 5-epoch thermometer job's 0.8 s). Everything else is Hydra's own
    loader. In another process (joblib's, submitit's workers) nothing is kept and a job is
    composed there as before."""

    def __init__(self, hydra_context: HydraContext, master: DictConfig) -> None:
        self.context, self.master = hydra_context, master

    @property
    def loader(self) -> ConfigLoader:
        return self.context.config_loader

    def load_sweep_config(
        self, master_config: DictConfig, sweep_overrides: list[str]
    ) -> DictConfig:
        if master_config is not self.master:
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        return composed(self.context, master_config, sweep_overrides)

    def load_configuration(self, *args: Any, **kwargs: Any) -> DictConfig:
        return self.loader.load_configuration(*args, **kwargs)

    def get_search_path(self) -> Any:
        return self.loader.get_search_path()

    def get_sources(self) -> Any:
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> list[str]:
        return self.loader.list_groups(parent_name)

    def get_group_options(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.loader.get_group_options(*args, **kwargs)

    def compute_defaults_list(self, *args: Any, **kwargs: Any) -> Any:
        return self.loader.compute_defaults_list(*args, **kwargs)


def launcher_context(hydra_context: HydraContext, master: DictConfig) -> HydraContext:
    """The context a sweeper gives its launcher: Hydra's, its loader ComposedOnce."""
    return HydraContext(
        config_loader=ComposedOnce(hydra_context, master), callbacks=hydra_context.callbacks
    )


def forget_composed() -> None:
    """A sweeper starts: composed configs of an earlier sweep in this process do not count."""
    COMPOSED.clear()
    TEMPLATES.clear()


def grid(overrides: list[Any]) -> list[list[str]]:
    """Every combination of the sweep's values, as lists of `key=value` overrides."""
    axes = []
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise HydraException(
                    f"hydra/sweeper=grid takes lists of values; {key} is a {override.value_type.name} (hydra/sweeper=optuna searches ranges)."
                )
            axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            axes.append([f"{key}={override.get_value_element_as_str()}"])
    return [list(job) for job in itertools.product(*axes)]


class GridSweeper(Sweeper):
    def __init__(
        self, max_batch_size: int | None = None, params: dict[str, str] | None = None
    ) -> None:
        self.max_batch_size = max_batch_size
        self.params = params or {}

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        forget_composed()
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=launcher_context(hydra_context, config),
            task_function=task_function,
            config=config,
        )

    def check_max_batch_size(self) -> None:
        check_positive_int(
            "hydra.sweeper.max_batch_size",
            self.max_batch_size,
            " (jobs handed to the launcher at a time) or null (all at once)",
            allowed=(None,),
        )

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        compose_all(self.hydra_context, self.config, batch)

    def check_jobs(self, jobs: Sequence[Sequence[str]]) -> None:
        """Every job's values checked as its run checks them (check_values: each number within
        its domain, experiments.core.domains, and the rest) before the sweep writes anything: one
        job's mistake refuses the whole sweep in one sentence. Mistakes found only once a job
        builds its data and model fail that job alone."""
        for overrides in jobs:
            job = composed(self.hydra_context, self.config, overrides, mutable=False)
            given = [o for o in overrides if not key_of(o).startswith("hydra")]
            check_values(job, given, dict(job.hydra.runtime.choices))

    def names_jobs(self) -> bool:
        """Whether the sweep names its jobs' folders (conf/train.yaml's hydra.sweep.subdir), not a
        hydra.sweep.subdir of the user's."""
        raw = OmegaConf.to_container(self.config.hydra.sweep, resolve=False).get("subdir")
        return "${job_dir:" in str(raw)

    def named(
        self, jobs: list[list[str]], stage: str = "", always: tuple[str, ...] = ()
    ) -> list[list[str]]:
        """The jobs, each with its folder in the sweep set (hydra.sweep.subdir): a short name of
        what sets it apart from the others (`adam,lr=0.01,seed=3`, under `stage` where given), or
        the folder where the same job already ran (experiments.core.rundir.sweep_job_dirs)."""
        if not self.names_jobs():
            return jobs
        exclude = tuple(self.config.hydra.job.config.override_dirname.exclude_keys)
        choices = self.config.hydra.runtime.choices
        groups = {k for k in (key_of(o) for job in jobs for o in job) if k in choices} | {
            k for k in (key_of(o) for job in jobs for o in job) if (CONF_DIR / k).is_dir()
        }
        names = job_names(jobs, exclude, groups, always)
        if stage:
            names = [f"{stage}/{name}" for name in names]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        folders = sweep_job_dirs(sweep_dir, jobs, names, exclude)
        return [[*job, f"{SUBDIR}={quote_value(f)}"] for job, f in zip(jobs, folders)]

    def job_dir(self, overrides: Sequence[str], num: int) -> Path:
        # the kept config: the launcher sets the same number on it
        config = composed(self.hydra_context, self.config, overrides, mutable=False)
        with read_write(config.hydra), open_dict(config):  # read-only once the job has run
            config.hydra.job.num = num
        return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        self.check_max_batch_size()
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = grid(
            parser.parse_overrides([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        )
        jobs = self.named(jobs)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        # a mistake in any job stops the sweep before it writes a file
        self.validate_batch_is_legal(jobs)
        self.check_jobs(jobs)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        return self.launch_all(jobs)

    def launch_all(self, jobs: list[list[str]], first_num: int = 0) -> list[Sequence[JobReturn]]:
        """Launch the jobs, `max_batch_size` at a time, except those whose directory already holds
        a final result; job numbers start at `first_num`."""
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        size = self.max_batch_size or max(len(jobs), 1)
        returns: list[Sequence[JobReturn]] = []
        for first in range(0, len(jobs), size):
            batch = jobs[first : first + size]
            todo = [
                i
                for i, overrides in enumerate(batch)
                if not final_status(self.job_dir(overrides, first_num + first + i))
            ]
            if len(todo) < len(batch):
                log.info(
                    f"{len(batch) - len(todo)} of {len(jobs)} jobs already have a final result in {sweep_dir} and are not run again"
                )
            if not todo:
                continue
            results = self.launcher.launch(
                [batch[i] for i in todo], initial_job_idx=first_num + first
            )
            for result in results:
                _ = result.return_value  # raises if the job raised, as Hydra's basic sweeper does
            returns.append(results)
        return returns
