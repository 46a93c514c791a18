"""hydra/sweeper=basic, the default: what Hydra's own basic sweeper does, a grid over comma-separated
values handed to the launcher in batches, except that jobs whose directory already holds a final
result are not launched again.

Run the same sweep again into its directory (`hydra.sweep.dir=<that sweep>`) and only what is left
runs: a finished or diverged job keeps its directory untouched, an interrupted one resumes from its
last.ckpt, a failed one runs again. The jobs left go to the launcher as one batch, so
hydra/launcher=parallel or =vectorized still trains them together.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments.state import FINAL

log = logging.getLogger(__name__)


CONFIG = {
    "_target_": "hydra_plugins.experiments_plugins.grid_sweeper.GridSweeper",
    "max_batch_size": None,  # jobs handed to the launcher at a time; None: all of them
    "params": None,  # key: comma-separated values, as the sweep presets (conf/sweep/) set them
}
# Under the name of Hydra's own basic sweeper, so every -m run gets this one while a config's
# `override /hydra/sweeper: optuna` (as lightning-hydra-template writes it) still picks another: a
# primary config's own override of hydra/sweeper would win over it. Hydra scans its core plugins,
# which store its basic sweeper, before the hydra_plugins package, so this entry replaces that one
# (tests/test_config.py checks that the default sweeper is this one).
ConfigStore.instance().store(
    group="hydra/sweeper", name="basic", node=CONFIG, provider="experiments"
)
# Each job's composed config, kept for the launcher: composing one costs about 70 ms, and a
# sweep would otherwise compose every job three times (to check it, to find its directory, to run it).
# Emptied when a sweeper starts: a second sweep in one process (experiments.api) composes anew.
COMPOSED: dict[tuple[str, ...], DictConfig] = {}


def composed(
    hydra_context: HydraContext, config: DictConfig, overrides: Sequence[str]
) -> DictConfig:
    """A job's config as Hydra's config loader composes it, composed once per sweep."""
    key = tuple(overrides)
    if key not in COMPOSED:
        COMPOSED[key] = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    return copy.deepcopy(COMPOSED[key])


def grid(overrides: list[Any]) -> list[list[str]]:
    """Every combination of the sweep's values, as lists of `key=value` overrides."""
    axes = []
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise HydraException(
                    f"hydra/sweeper=basic takes lists of values; {key} is a {override.value_type.name} (hydra/sweeper=optuna searches ranges)."
                )
            axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            axes.append([f"{key}={override.get_value_element_as_str()}"])
    return [list(job) for job in itertools.product(*axes)]


def final_status(folder: Path) -> str | None:
    try:
        status = json.loads((folder / "metrics.json").read_text()).get("status")
    except (OSError, ValueError):
        return None
    return status if status in FINAL else None


class GridSweeper(Sweeper):
    def __init__(
        self, max_batch_size: int | None = None, params: dict[str, str] | None = None
    ) -> None:
        self.max_batch_size = max_batch_size
        self.params = params or {}

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        COMPOSED.clear()
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        for overrides in batch:
            composed(self.hydra_context, self.config, overrides)

    def job_dir(self, overrides: Sequence[str], num: int) -> Path:
        config = composed(self.hydra_context, self.config, overrides)
        with open_dict(config):
            config.hydra.job.num = num
        return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = grid(
            parser.parse_overrides([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        # a mistake in any job stops the sweep before it writes a file
        self.validate_batch_is_legal(jobs)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        return self.launch_all(jobs)

    def launch_all(self, jobs: list[list[str]], first_num: int = 0) -> list[Sequence[JobReturn]]:
        """Launch the jobs, `max_batch_size` at a time, except those whose directory already holds
        a final result; job numbers start at `first_num`."""
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        size = (
            self.max_batch_size
            if self.max_batch_size and self.max_batch_size > 0
            else max(len(jobs), 1)
        )
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
