"""Where the configs live, and the checks that turn a bad value into one sentence naming its key."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.core.errors import UserError

# The repository's conf/, linked from the package's folder (src/experiments/conf) and copied into
# the built wheel, so a checkout and an installed wheel both find it here.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def mistake(error: BaseException | str) -> str:
    """The one line a user sees for a mistake, on stderr."""
    return f"error: {error}"


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as dotted keys: {"optimizer": {"lr": 0.1}} -> {"optimizer.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def positive_int(value: Any) -> bool:
    """1, 2, 3, ...: not 0, not a float, not a bool (True is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_positive_int(key: str, value: Any, meaning: str = "", allowed: tuple = ()) -> None:
    """`key` holds a positive integer (or one of `allowed`, which `meaning` then explains)."""
    if not positive_int(value) and not any(
        value is a or (type(value) is type(a) and value == a) for a in allowed
    ):
        raise UserError(f"{key} must be a positive integer{meaning}, got {value!r}.")


def check_batch_size(key: str, value: int | None) -> None:
    check_positive_int(key, value, " or null (the whole split as one batch)", allowed=(None,))


def check_fraction(key: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise UserError(f"{key} must be a number strictly between 0 and 1, got {value!r}.")


def check_positive(key: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value > 0
        or not math.isfinite(value)
    ):
        raise UserError(f"{key} must be a positive number, got {value!r}.")


MLFLOW_MISSING = (
    'logger=mlflow needs MLflow, which is not installed: pip install ".[mlflow]" '
    "(or pip install mlflow) in this environment, or use logger=tensorboard."
)


def check_loggers_installed(cfg: DictConfig) -> None:
    """A logger whose library is an optional extra (logger=mlflow) finds it installed: checked
    before a run or a sweep writes anything."""
    import importlib.util

    loggers = cfg.get("logger") or {}
    wanted = any(
        str(node.get("_target_", "")).endswith("RunMLFlowLogger")
        for node in loggers.values()
        if OmegaConf.is_dict(node)
    )
    if wanted and importlib.util.find_spec("mlflow") is None:
        raise UserError(MLFLOW_MISSING)


def check_values(
    cfg: DictConfig, overrides: list[str] = (), choices: dict[str, str] | None = None
) -> None:
    """Checks that need no data and no torch, so a mistyped value fails before the slow imports."""
    check_loggers_installed(cfg)
    for override in overrides:
        key = override[1:].partition("=")[0]
        # +group=option adds a config group
        group = key in (choices or {}) or (CONF_DIR / key).is_dir()
        if (
            override.startswith("+")
            and not override.startswith("++")
            and "." not in key
            and "/" not in key
            and not group
        ):
            top = ", ".join(str(k) for k in cfg.keys() if k != "run_dir")
            raise UserError(
                f"{override} adds a key nothing here reads; the config's keys are {top} (a Trainer argument goes in as +trainer.NAME=VALUE)."
            )
    check_positive("optimizer.lr", cfg.optimizer.get("lr"))
    check_positive_int(
        "trainer.max_epochs",
        cfg.trainer.get("max_epochs"),
        " (or -1 to train until stopped)",
        allowed=(None, -1),
    )
    for key in ("accumulate_grad_batches", "check_val_every_n_epoch", "log_every_n_steps"):
        check_positive_int(f"trainer.{key}", cfg.trainer.get(key), allowed=(None,))
    nodes = cfg.trainer.get("num_nodes", 1)
    check_positive_int("trainer.num_nodes", nodes)
    if nodes > 1 and not any(
        v in os.environ for v in ("MASTER_ADDR", "SLURM_NTASKS", "WORLD_SIZE")
    ):
        raise UserError(
            f"trainer.num_nodes={nodes} trains across {nodes} machines, so the same command must be started on each of them "
            "(by srun or torchrun, which set MASTER_ADDR and the ranks); on this machine alone use trainer.num_nodes=1."
        )
    clip = cfg.trainer.get("gradient_clip_val")
    if clip is not None and not (
        isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip >= 0
    ):
        raise UserError(
            f"trainer.gradient_clip_val must be a number of 0 or more, or null, got {clip!r}."
        )
    if cfg.get("monitor_mode") not in ("min", "max", "auto"):
        raise UserError(
            f"monitor_mode must be min, max or auto (the metric's own direction), got {cfg.get('monitor_mode')!r}."
        )
    check_dynamics(cfg.get("dynamics"))
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UserError(f"seed must be an integer from 0 to {2**32 - 1}, got {seed!r}.")
    from experiments.core.domains import check_config

    check_config(cfg)  # every other value against its domain (experiments.core.domains)


DYNAMICS_TIERS = ("basic", "noise", "curvature")


def check_dynamics(dynamics: Any) -> None:
    """dynamics= (conf/dynamics/): known tiers, basic among them, and counts that are counts."""
    if not dynamics:
        return
    tiers = dynamics.get("tiers")
    if (
        not OmegaConf.is_list(tiers)
        or "basic" not in tiers
        or any(t not in DYNAMICS_TIERS for t in tiers)
    ):
        raise UserError(
            f"dynamics.tiers must be a list of {', '.join(DYNAMICS_TIERS)} with basic among them, got {tiers!r}."
        )
    for key in ("every_n_steps", "lanczos_steps", "trace_samples"):
        if key in dynamics:
            check_positive_int(f"dynamics.{key}", dynamics.get(key))
    if "noise_samples" in dynamics and (
        not positive_int(dynamics.noise_samples) or dynamics.noise_samples < 2
    ):
        raise UserError(
            f"dynamics.noise_samples must be an integer of 2 or more (the per-sample gradients whose spread is the noise), got {dynamics.noise_samples!r}."
        )


def job_dir_name(override_dirname: str, job_num: int) -> str:
    """A sweep job's folder: its overrides (what TensorBoard shows as the run's name), kept to one
    path component of a sane length; job<N> when the sweep sets nothing per job."""
    if not override_dirname:
        return f"job{job_num}"
    name = override_dirname.replace("/", "_")
    if len(name) > 200:
        name = f"{name[:180]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return name


def gpu_for_job(job_num: int | None = None, gpu_count: int | None = None) -> list[int]:
    """The one GPU a sweep job trains on (trainer=gpu_per_job): its job number modulo the GPUs
    visible, so jobs launched side by side land on different GPUs. A single run uses GPU 0."""
    if job_num is None:
        from hydra.core.hydra_config import HydraConfig

        job_num = (
            OmegaConf.select(HydraConfig.get(), "job.num", default=0)
            if HydraConfig.initialized()
            else 0
        )
    if gpu_count is None:
        import torch

        gpu_count = torch.cuda.device_count()
    return [int(job_num) % gpu_count] if gpu_count else [0]


def domains_help() -> str:
    from experiments.core.domains import help_text

    return help_text()


RESOLVERS = {
    "domains": domains_help,  # --help's list of the values every number may take
    "job_dir": job_dir_name,
    "gpu_for_job": gpu_for_job,
    # resume=<run dir> runs in that directory and leaves its .hydra/ (the run's own config) untouched.
    "run_dir_or_resume": lambda resume, new: resume or new,
    "unless_resume": lambda resume, subdir: None if resume else subdir,
}


def register_resolvers() -> None:
    """The resolvers conf/ uses, registered by this app's entry points (experiments.train and its
    siblings): Hydra imports every hydra_plugins module in every Hydra app, so registering them
    when this module is imported would take these names from another app in the environment.
    Hydra then parses each config file once while it is unchanged and builds the choices' map of
    a defaults list only where one interpolates them, and its copies of its config repository
    share the ConfigStore (speedups, tricks 5, 6 and 8)."""
    from experiments.core.speedups import (
        interpolation_map_when_needed,
        parse_configs_once,
        share_config_store,
    )

    parse_configs_once()
    interpolation_map_when_needed()
    share_config_store()
    for name, resolver in RESOLVERS.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True)
