"""hydra/sweeper=optuna (conf/hydra/sweeper/optuna.yaml): Bayesian search on current Optuna with
the official hydra-optuna-sweeper plugin's settings, laid out as Hydra's own plugins are: the
config (conf/hydra/sweeper/optuna.yaml, this app's, not registered for every Hydra app), this thin
class Hydra instantiates, and the implementation, optuna_search.OptunaSearch (search space and
settings: optuna_space). Hydra imports this module whenever it starts: Optuna is imported only
when a search runs."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from hydra_plugins.experiments_plugins.optuna_search import OptunaSearch

        self.search = OptunaSearch(**settings)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.search.sweep(arguments)
