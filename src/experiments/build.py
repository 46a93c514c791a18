"""What a composed config builds: the data module (its data loaded), the model sized from it with
its optimizer and schedule, and the Trainer with its loggers and callbacks. Each piece is checked
as it is built, so a user's mistake is one sentence naming its key, before anything is written.
"""

from __future__ import annotations

import inspect
import math
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.core.config import UserError, check_positive_int
from experiments.core.signals import hand_sigterm_to_lightning

# Keys of a `scheduler` option that are Lightning's (how to step it), not the torch scheduler's.
LIGHTNING_SCHEDULER_KEYS = ("interval", "frequency", "monitor", "strict", "name")


def build_node(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """What a config node's `_target_` builds (hydra.utils.instantiate), a user's mistake reported
    as one sentence naming `key`."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_method, instantiate

    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
            target = get_method(node._target_)
            valid = [
                p
                for p in inspect.signature(target).parameters
                if p not in ("self", "kwargs", "optimizer", "scheduler")
            ]
            raise UserError(f"{key}: {cause}; {node._target_} takes {', '.join(valid)}.") from None
        raise UserError(f"{key} could not be built: {cause or error}.") from None


def import_class(target: str, key: str) -> Any:
    """The class `key._target_` names, or one sentence saying why it cannot be imported."""
    import importlib

    module, _, name = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise UserError(
            f"{key}._target_={target} cannot be imported ({type(error).__name__}: {error}); give a class that exists, with its module on PYTHONPATH."
        ) from None


def instantiate_group(group: DictConfig | None, key: str) -> list[Any]:
    return [
        build_node(node, f"{key}.{name}")
        for name, node in (group or {}).items()
        if "_target_" in node
    ]


def check_accelerator(trainer: DictConfig, key: str = "trainer.accelerator") -> None:
    """The accelerator and device count asked for exist on this machine (`key`: where the
    accelerator is set, for the sentence)."""
    import torch

    accelerator = str(trainer.get("accelerator") or "auto")
    instead = (
        "trainer=cpu (or trainer.accelerator=cpu)" if key == "trainer.accelerator" else f"{key}=cpu"
    )
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"{key}={accelerator} but this machine has no usable GPU; use {instead}.")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{key}=mps but this machine has no Apple GPU; use {instead}.")
    gpu = accelerator in ("gpu", "cuda") or accelerator == "auto" and torch.cuda.is_available()
    available = (
        torch.cuda.device_count()
        if gpu
        else 1
        if accelerator == "mps"
        else len(os.sched_getaffinity(0))
    )
    what = "GPUs" if gpu else "Apple GPU" if accelerator == "mps" else "CPU cores"
    devices = trainer.get("devices", "auto")
    if OmegaConf.is_list(devices) or isinstance(devices, list):
        wrong = [
            d
            for d in devices
            if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d < available
        ]
        if not gpu or wrong or not devices:
            raise UserError(
                f"trainer.devices={list(devices)} names devices this machine lacks: it has {available} {what} (indices 0 to {available - 1}); pass a count instead, or indices of GPUs that exist."
            )
    elif isinstance(devices, int) and not isinstance(devices, bool):
        if devices == 0 or devices < -1 or devices > available:
            raise UserError(
                f"trainer.devices={devices} but this machine has {available} {what}; pick 1 to {available}, or -1 for all of them."
            )
    elif devices != "auto":
        raise UserError(
            f"trainer.devices must be a number of devices, a list of GPU indices, -1 or auto, got {devices!r}."
        )


def check_monitored(key: str, metric: str, directions: dict[str, bool]) -> None:
    """A metric that picks checkpoints or steps a schedule is one the model validates: both act at a
    validation, when only validation metrics are current (training metrics are logged when an
    epoch ends, after it, and only every log_every_n_steps)."""
    validated = [name for name in directions if name.startswith("val/")]
    if metric in directions and metric not in validated:
        raise UserError(
            f"{key}={metric} is not a validation metric: it is logged after the validation at which {key} is read; pick one of {', '.join(validated)}."
        )
    if metric not in validated:
        raise UserError(
            f"{key}={metric} is not a metric this model logs; pick one of {', '.join(validated)}."
        )


def build_scheduler_config(cfg: DictConfig, directions: dict[str, bool]) -> dict[str, Any] | None:
    """Lightning's lr_scheduler dict for `scheduler`: the torch scheduler as a partial, and how to
    step it; `directions` are the model's metrics (higher is better?), which `monitor` must name."""
    node = cfg.get("scheduler")
    if not node:
        return None
    stepping = {k: node[k] for k in LIGHTNING_SCHEDULER_KEYS if k in node}
    interval = stepping.get("interval", "epoch")
    if interval not in ("epoch", "step"):
        raise UserError(f"scheduler.interval must be epoch or step, got {interval!r}.")
    check_positive_int(
        "scheduler.frequency",
        stepping.get("frequency", 1),
        f" (the schedule steps every that many {interval}s)",
    )
    # StepLR's and CosineAnnealingLR's periods, in steps of the schedule
    for key in ("step_size", "T_max"):
        if key in node:
            check_positive_int(f"scheduler.{key}", node.get(key), f" (a number of {interval}s)")
    monitor = stepping.get("monitor")
    if monitor is not None:  # what ReduceLROnPlateau watches
        check_monitored("scheduler.monitor", monitor, directions)
        mode, better = node.get("mode"), "max" if directions[monitor] else "min"
        if mode in ("min", "max") and mode != better:
            raise UserError(
                f"scheduler.mode={mode} but {monitor} is better when {'higher' if better == 'max' else 'lower'}; set scheduler.mode={better}."
            )
    make = build_node(
        OmegaConf.create({k: v for k, v in node.items() if k not in LIGHTNING_SCHEDULER_KEYS}),
        "scheduler",
    )
    return {"scheduler": make, "name": "train/lr", **stepping}


def build(cfg: DictConfig, choices: dict[str, str] | None = None) -> tuple[Any, Any]:
    """The data module, its data loaded, and the model sized from it with its optimizer and schedule."""
    if choices is None:
        from pathlib import Path

        from experiments.core.state import RunInfo

        choices = RunInfo.from_hydra(Path(".")).choices
    datamodule = build_node(cfg.data, "data")
    model = build_model(cfg, datamodule, choices)
    datamodule.load()  # a missing or damaged file stops the run here, before anything is written
    check_schedule_length(cfg, model, datamodule)
    return datamodule, model


def build_model(cfg: DictConfig, datamodule: Any, choices: dict[str, str]) -> Any:
    """The model sized from the data, with its optimizer and schedule, each tried on a copy of its
    weights. `monitor_mode=auto` becomes the monitored metric's own direction."""
    import torch

    from experiments.models.base import ExperimentModule

    model_class = import_class(cfg.model._target_, "model")
    if not (isinstance(model_class, type) and issubclass(model_class, ExperimentModule)):
        raise UserError(
            f"model._target_={cfg.model._target_} is not an experiments.models.base.ExperimentModule; give a subclass of it (see README, Extending)."
        )
    if getattr(model_class, "task", None) != datamodule.task:
        raise UserError(
            f"model={choices.get('model', model_class.__name__)} needs {model_class.needs}, "
            f"but data={choices.get('data', type(datamodule).__name__)} holds {datamodule.task} data."
        )
    optimizer = build_node(cfg.optimizer, "optimizer")
    model = build_node(
        cfg.model,
        "model",
        input_shape=list(datamodule.input_shape),
        num_outputs=datamodule.num_outputs,
        optimizer=optimizer,
    )
    directions = model.metric_directions()
    check_monitored("monitor", cfg.monitor, directions)
    if cfg.monitor_mode == "auto":
        cfg.monitor_mode = "max" if directions[cfg.monitor] else "min"
    model.scheduler_config = build_scheduler_config(cfg, directions)
    check_optimizer(cfg, model, torch)
    return model


def check_optimizer(cfg: DictConfig, model: Any, torch: Any) -> None:
    """torch checks most optimizer settings (betas, momentum, ...) only when it builds or steps the
    optimizer, and a schedule's only when it builds it: both are tried on a copy of the weights."""
    import warnings

    from experiments.models.base import build_scheduler

    probe = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]
    key, target = "optimizer", cfg.optimizer._target_
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer = model.optimizer_factory(probe)
            schedule = None
            if model.scheduler_config:
                key, target = "scheduler", cfg.scheduler._target_
                cycled = target.endswith("OneCycleLR") and getattr(
                    model.scheduler_config["scheduler"], "keywords", {}
                ).get("cycle_momentum", True)
                if (
                    cycled
                    and isinstance(optimizer, torch.optim.SGD)
                    and optimizer.param_groups[0]["momentum"] == 0
                ):
                    raise UserError(
                        "scheduler=onecycle cycles the momentum between 0.85 and 0.95 (scheduler.cycle_momentum=true), which would make "
                        "plain SGD a momentum method; set scheduler.cycle_momentum=false, or use optimizer=momentum."
                    )
                schedule = build_scheduler(model.scheduler_config["scheduler"], optimizer, None)
            key, target = "optimizer", cfg.optimizer._target_
            for p in probe:
                p.grad = torch.zeros_like(p)
            optimizer.step()
            if schedule is not None:
                key, target = "scheduler", cfg.scheduler._target_
                schedule.step(*([0.0] if "ReduceLROnPlateau" in target else []))
    except UserError:
        raise
    except Exception as error:  # torch raises ValueError, TypeError, IndexError, KeyError ...
        hint = (
            "; scheduler.cycle_momentum=false turns that off"
            if "cycle_momentum" in str(error)
            else ""
        )
        raise UserError(f"{key} settings rejected by {target}: {error}{hint}.") from None


def check_schedule_length(cfg: DictConfig, model: Any, datamodule: Any) -> None:
    """A OneCycleLR given total_steps has at least the fit's optimizer steps (torch stops the run
    with an error at the step after its last)."""
    total = (cfg.get("scheduler") or {}).get("total_steps")
    epochs = cfg.trainer.get("max_epochs")
    if (
        not model.scheduler_config
        or total is None
        or epochs in (None, -1)
        or not str(cfg.scheduler._target_).endswith("OneCycleLR")
    ):
        return
    batches = max(
        1, math.ceil(datamodule.train_size / (datamodule.batch_size or datamodule.train_size))
    )
    steps = math.ceil(batches / int(cfg.trainer.get("accumulate_grad_batches") or 1)) * epochs
    if total < steps:
        raise UserError(
            f"scheduler.total_steps={total} is fewer than the fit's {steps} optimizer steps ({epochs} epochs of {steps // epochs}); leave it null to take the fit's steps, or give at least {steps}."
        )


def start_fit(cfg: DictConfig) -> None:
    """What a fit does first, a single run's or a population's, once its values are checked:
    Lightning quietened, the accelerator checked (one sentence if it is missing), the random seed
    set, before anything random is built."""
    from experiments.core.quiet import quiet_lightning

    quiet_lightning()
    import lightning.pytorch as pl

    check_accelerator(cfg.trainer)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)


def run_parts(
    cfg: DictConfig, info: Any, datamodule: Any, model: Any, population: dict | None = None
) -> tuple[Any, list[Any], list[Any]]:
    """What each run of a fit has, alone or in a population: its state (what metrics.json
    records), its loggers and its configured callbacks (conf/callbacks/)."""
    state = new_state(cfg, info, datamodule)
    state.population = population
    loggers = run_loggers(cfg, state, model)
    return state, loggers, instantiate_group(cfg.get("callbacks"), "callbacks")


def new_state(cfg: DictConfig, info: Any, datamodule: Any) -> Any:
    """A run's state (experiments.core.state.RunState): its resolved config, what picks its best
    checkpoint, its HParams row; a resumed run's history carried on."""
    import torch

    from experiments.core.state import RunState
    from experiments.hparams import flat_hparams

    config = {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in cfg.items()
        if k != "hydra"
    }
    batch_size = datamodule.batch_size or datamodule.train_size
    state = RunState(
        info=info,
        config=config,
        monitor=cfg.monitor,
        monitor_mode=cfg.monitor_mode,
        hparams=flat_hparams(cfg, info.choices, info.overrides, batch_size),
        torch_threads=torch.get_num_threads(),
    )
    if info.resumed:
        state.resume_history()
    return state


def run_loggers(cfg: DictConfig, state: Any, model: Any) -> list[Any]:
    """The loggers `logger=` names, and the one every run has: its metric history (metrics.json)."""
    from experiments.callbacks.recorder import MetricHistory
    from experiments.loggers import RunMLFlowLogger, begin_mlflow_run

    loggers = instantiate_group(cfg.get("logger"), "logger")
    for logger in loggers:
        if isinstance(logger, RunMLFlowLogger):
            begin_mlflow_run(logger, state)
    return [*loggers, MetricHistory(state, model.metric_directions())]


def recorder(runs: Any, multirun: bool) -> Any:
    """The callback that records `runs`: its parts in the order their hooks must run."""
    from experiments.callbacks.hparams_entry import HParamsEntry
    from experiments.callbacks.recorder import RunRecorder, StatusRecord
    from experiments.callbacks.run_images import RunImages
    from experiments.callbacks.trajectory import ParameterPath

    parts = [
        ParameterPath(runs),
        RunImages(runs),
        StatusRecord(runs),
        HParamsEntry(runs, with_experiment=not multirun),
    ]
    return RunRecorder(parts)


def dynamics_monitor(cfg: DictConfig, runs: Any) -> list[Any]:
    """The instruments `dynamics=` asks for, measuring `runs` (experiments.dynamics), or none."""
    if not cfg.get("dynamics"):
        return []
    return [build_node(cfg.dynamics, "dynamics", runs=runs)]


def make_trainer(
    trainer: DictConfig,
    callbacks: list[Any],
    loggers: list[Any] | bool,
    plugins: list[Any],
    root_dir: Any,
    **settings: Any,
) -> Any:
    """Lightning's Trainer as `trainer` configures it, with these callbacks, loggers, plugins and
    `settings` (they win over the config's); without a profiler configured, the quiet one."""
    from experiments.core import speedups

    if "profiler" not in trainer:
        settings["profiler"] = speedups.quiet_profiler()
    hand_sigterm_to_lightning()  # Lightning installs its handler only where SIGTERM has none
    return build_node(
        trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers,
        plugins=plugins,
        default_root_dir=str(root_dir),
        **settings,
    )
