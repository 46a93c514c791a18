"""Learn and compare how models train: Lightning models and data, Hydra configs, TensorBoard dashboards."""

__version__ = "0.1.0"
