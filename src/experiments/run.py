"""One run, in the shape of lightning-hydra-template's `train(cfg)`: build the data, the model, its
loggers and callbacks and the Trainer from the composed config; fit; test the best checkpoint;
return what metrics.json holds. What the run leaves on the way is the callbacks' job
(experiments.callbacks); how a job runs around it (resume, a process of its own, failure records,
exit codes) is experiments.train's."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from experiments.core.config import check_values
from experiments.core.search import job_trial
from experiments.core.state import RunInfo


def train_and_test(cfg: DictConfig, info: RunInfo) -> dict[str, Any]:
    """Fit and test the configured experiment in `info.run_dir`; return what its metrics.json holds."""
    check_values(cfg, info.overrides, info.choices)  # before the slow imports
    from experiments.build import start_fit

    start_fit(cfg)
    from lightning.pytorch.callbacks import Checkpoint, LearningRateMonitor, ProgressBar

    from experiments.build import build, dynamics_monitor, make_trainer, recorder, run_parts
    from experiments.callbacks.checkpoint import AtomicCheckpointIO, check_fits, read_checkpoint
    from experiments.callbacks.pruning import TrialPruning
    from experiments.callbacks.recorder import OneRun
    from experiments.models.base import Diverged

    key, start = ("resume", cfg.resume) if info.resumed else ("ckpt_path", cfg.ckpt_path)
    checkpoint = read_checkpoint(cfg.ckpt_path, key) if cfg.ckpt_path else None
    datamodule, model = build(cfg, info.choices)
    if checkpoint is not None:
        check_fits(checkpoint, model, cfg.optimizer._target_, key, start)
        del checkpoint

    # conf/callbacks/ (checkpoints, progress) and what the run records
    state, loggers, callbacks = run_parts(cfg, info, datamodule, model)
    run = OneRun(state, loggers)
    if cfg.get("scheduler"):
        # train/lr, every log_every_n_steps
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks += dynamics_monitor(cfg, run)
    callbacks.append(recorder(run, info.multirun))
    if (trial := job_trial(cfg)) is not None:
        callbacks.append(TrialPruning(run, [trial]))
    # With callbacks=none, Lightning would otherwise add its own checkpointing and progress bar.
    defaults = {
        "enable_checkpointing": any(isinstance(c, Checkpoint) for c in callbacks),
        "enable_progress_bar": any(isinstance(c, ProgressBar) for c in callbacks),
    }
    defaults = {k: v for k, v in defaults.items() if k not in cfg.trainer}
    trainer = make_trainer(
        cfg.trainer, callbacks, loggers, [AtomicCheckpointIO()], info.run_dir, **defaults
    )

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
        if state.status == "running":
            best = (
                trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
            )
            trainer.test(
                model,
                datamodule=datamodule,
                ckpt_path=best or None,
                verbose=False,
                weights_only=True,
            )
    # Lightning's SIGTERMException is a SystemExit
    except (Diverged, KeyboardInterrupt, SystemExit):
        if state.status == "running":  # stopped before the fit started: nothing was recorded
            raise KeyboardInterrupt from None
    except Exception as error:
        # a run stopped as planned (pruned) ends as recorded
        if not getattr(error, "run_status", None):
            raise
    return state.result()
