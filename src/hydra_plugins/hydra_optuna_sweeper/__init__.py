"""The official hydra-optuna-sweeper plugin's module path, so a config that names its class
(`_target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper`, as
lightning-hydra-template's search configs do) runs unchanged on this package's sweeper. That
plugin needs Optuna < 3 and is not installed alongside this package."""
