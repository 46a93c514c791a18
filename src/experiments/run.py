"""One run: build the data, the model and the Trainer from the composed config, fit, then test the
best checkpoint. What the run leaves is the callbacks' job (experiments.callbacks)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.cli import quiet_lightning
from experiments.config import check_values
from experiments.search import job_trial
from experiments.state import RunInfo, RunState


def run_callbacks(states: list[RunState], loggers: list[list[Any]], multirun: bool) -> list[Any]:
    """The callback that records runs, its parts in the order their hooks must run."""
    from experiments.callbacks.figures import RunFigures
    from experiments.callbacks.hparams import HParamsEntry
    from experiments.callbacks.recorder import RunRecorder, StatusRecord
    from experiments.callbacks.trajectory import ParameterPath

    return [RunRecorder([ParameterPath(states), RunFigures(states, loggers), StatusRecord(states), HParamsEntry(states, loggers, with_experiment=not multirun)])]


def new_state(cfg: DictConfig, info: RunInfo, datamodule: Any) -> RunState:
    from experiments.hparams import flat_hparams

    state = RunState(
        info=info,
        config={k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in cfg.items() if k != "hydra"},
        monitor=cfg.monitor,
        monitor_mode=cfg.monitor_mode,
        hparams=flat_hparams(cfg, info.choices, info.overrides, datamodule.batch_size or datamodule.train_size),
    )
    if info.resumed:
        state.resume_history()
    return state


def train(cfg: DictConfig, info: RunInfo) -> dict[str, Any]:
    """Fit and test the configured experiment in `info.run_dir`; return what its metrics.json holds."""
    check_values(cfg, info.overrides, info.choices)
    quiet_lightning()
    import lightning.pytorch as pl

    from experiments.build import build, check_accelerator, instantiate_group, make_trainer
    from experiments.callbacks.checkpoint import AtomicCheckpointIO, check_fits, read_checkpoint
    from experiments.callbacks.recorder import MetricHistory
    from experiments.models.base import Diverged

    key = "resume" if info.resumed else "ckpt_path"
    checkpoint = read_checkpoint(cfg.ckpt_path, key) if cfg.ckpt_path else None
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    check_accelerator(cfg.trainer)
    datamodule, model = build(cfg, info.choices)
    if checkpoint is not None:
        check_fits(checkpoint, model, cfg.optimizer._target_, key, cfg.resume if info.resumed else cfg.ckpt_path)
        del checkpoint
    state = new_state(cfg, info, datamodule)
    loggers = [*instantiate_group(cfg.get("logger"), "logger"), MetricHistory(state, model.metric_directions())]
    callbacks = run_callbacks([state], [loggers], info.multirun)
    if (trial := job_trial(cfg)) is not None:
        from experiments.callbacks.pruning import TrialPruning

        callbacks.append(TrialPruning([state], [trial]))
    trainer = make_trainer(cfg, callbacks, loggers, [AtomicCheckpointIO()], info.run_dir)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
        if state.status == "running":
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback is not None else None
            trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
    except (Diverged, KeyboardInterrupt, SystemExit):  # Lightning's SIGTERMException is a SystemExit
        if state.status == "running":  # stopped before the fit started: nothing was recorded
            raise KeyboardInterrupt from None
    except Exception as error:
        if not getattr(error, "run_status", None):  # an exception that ends a run as planned (pruned)
            raise
    return state.result()
