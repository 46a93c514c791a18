"""`OptunaSweeper` under the official plugin's name: hydra_plugins.experiments_plugins.optuna_sweeper."""

from __future__ import annotations

from hydra_plugins.experiments_plugins.optuna_sweeper import OptunaSweeper as CurrentOptunaSweeper


class OptunaSweeper(CurrentOptunaSweeper):
    """This package's Optuna sweeper, answering to the official plugin's class name."""
