"""This package's Hydra plugins: a sweeper and a launcher Hydra finds under `hydra_plugins`, as it
finds the joblib and submitit launchers. They import nothing heavy: Hydra imports every plugin
module whenever it starts."""
