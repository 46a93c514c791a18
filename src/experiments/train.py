"""Train one experiment: `python -m experiments.train [group=option ...] [key=value ...]`.

`train(cfg)` instantiates data, model, callbacks, loggers and trainer from the composed config,
fits, tests on the best checkpoint and records the run. Torch and Lightning are imported inside
it, so `--help` and `--cfg job` answer without loading them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.config import CONF_DIR, UserError, check_resume_dir, check_values

log = logging.getLogger("experiments")


def hydra_context() -> dict[str, Any]:
    """What Hydra knows of this job: the option chosen per group, the command-line overrides, and
    whether it is one job of a sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {"choices": {}, "overrides": [], "multirun": False}
    hydra_cfg = HydraConfig.get()
    return {
        "choices": {k: v for k, v in hydra_cfg.runtime.choices.items() if v and not k.startswith("hydra")},
        "overrides": [o for o in hydra_cfg.overrides.task if not o.lstrip("+~").startswith("hydra")],
        "multirun": hydra_cfg.mode == RunMode.MULTIRUN,
    }


def instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, with a user's mistake reported as one sentence naming `key`."""
    import inspect

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
            valid = [p for p in inspect.signature(target).parameters if p not in ("self", "kwargs", "optimizer")]
            raise UserError(f"{key}: {cause}; {node._target_} takes {', '.join(valid)}.") from None
        raise UserError(f"{key} could not be built: {cause or error}.") from None


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter off the console; its warnings go through our log handlers once."""
    import lightning.pytorch  # noqa: F401  (it installs its own handlers on import)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")


def check_accelerator(accelerator: str | None) -> None:
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={accelerator} but this machine has no usable GPU; use trainer=cpu (or trainer.accelerator=cpu)."
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise UserError("trainer.accelerator=mps but this machine has no Apple GPU; use trainer=cpu (or trainer.accelerator=cpu).")


def build(cfg: DictConfig) -> tuple[Any, Any]:
    """The data module, and the model sized from it with the configured optimizer."""
    from hydra.utils import get_class

    datamodule = instantiate(cfg.data, "data")
    model_class = get_class(cfg.model._target_)
    if getattr(model_class, "task", None) != datamodule.task:
        choices = hydra_context()["choices"]
        raise UserError(
            f"model={choices.get('model', model_class.__name__)} needs {model_class.needs}, "
            f"but data={choices.get('data', type(datamodule).__name__)} holds {datamodule.task} data."
        )
    optimizer = instantiate(cfg.optimizer, "optimizer")
    model = instantiate(
        cfg.model, "model", input_shape=list(datamodule.input_shape), num_outputs=datamodule.num_outputs, optimizer=optimizer
    )
    try:  # torch checks its own settings (betas, momentum, ...) only when the optimizer is built
        optimizer(model.parameters())
    except (ValueError, TypeError) as error:
        raise UserError(f"optimizer settings rejected by {cfg.optimizer._target_}: {error}.") from None
    return datamodule, model


def instantiate_group(group: DictConfig | None, key: str) -> list[Any]:
    return [instantiate(node, f"{key}.{name}") for name, node in (group or {}).items() if "_target_" in node]


def make_trainer(cfg: DictConfig, run_dir: Path, recorder: Any) -> tuple[Any, list[Any]]:
    """The Trainer with the configured loggers and callbacks; returns it and the loggers."""
    from lightning.pytorch.callbacks import Checkpoint, ProgressBar

    from experiments.callbacks.checkpoint import AtomicCheckpointIO

    loggers = instantiate_group(cfg.get("logger"), "logger")
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    # With callbacks=none, Lightning would otherwise add its own checkpointing and progress bar.
    defaults = {
        "enable_checkpointing": any(isinstance(c, Checkpoint) for c in callbacks),
        "enable_progress_bar": any(isinstance(c, ProgressBar) for c in callbacks),
    }
    defaults = {k: v for k, v in defaults.items() if k not in cfg.trainer}
    # The models step their optimizer themselves and clip there (ExperimentModule.training_step).
    defaults.update(gradient_clip_val=None, gradient_clip_algorithm=None)
    trainer = instantiate(
        cfg.trainer, "trainer", callbacks=callbacks, logger=[*loggers, recorder], default_root_dir=str(run_dir), plugins=[AtomicCheckpointIO()], **defaults
    )
    return trainer, loggers


def fit_and_test(trainer: Any, model: Any, datamodule: Any, ckpt_path: str | None, loggers: list[Any], outcome: dict[str, Any]) -> None:
    """Fit, note the fitted line's parameters, then test the best checkpoint (the final weights
    without one); the run's pictures go to TensorBoard after each."""
    from experiments import record

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    outcome["fit_s"] = time.perf_counter() - started
    if trainer.interrupted:
        outcome.update(status="interrupted", reason="training was interrupted")
        return
    if hasattr(model, "fitted_parameters"):
        outcome["parameters"] = model.fitted_parameters()
    if trainer.is_global_zero:
        record.log_figures(loggers, model, datamodule, "fit", trainer.global_step)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback is not None else None
    started = time.perf_counter()
    trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
    outcome["test_s"] = time.perf_counter() - started
    if trainer.is_global_zero:
        record.log_figures(loggers, model, datamodule, "test", trainer.global_step)


def interruption(error: BaseException, trainer: Any) -> str:
    checkpoint = trainer.checkpoint_callback
    by = getattr(checkpoint, "interrupted_by", None) or ("SIGINT" if isinstance(error, KeyboardInterrupt) else "SIGTERM")
    saved = checkpoint is not None and Path(checkpoint.dirpath, "last.ckpt").is_file()
    return f"interrupted by {by}" + ("; resume=<run dir> continues from checkpoints/last.ckpt" if saved else "")


def train(cfg: DictConfig, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit and test the configured experiment in `cfg.run_dir`; return what its metrics.json holds.

    `context` is what hydra_context() returns; a resumed run passes its original one."""
    run_dir = Path(cfg.run_dir)
    context = context or hydra_context()
    check_values(cfg)
    quiet_lightning()
    import lightning.pytorch as pl

    from experiments import record
    from experiments.callbacks.checkpoint import read_checkpoint
    from experiments.models.base import Diverged

    if cfg.ckpt_path:
        read_checkpoint(cfg.ckpt_path, "ckpt_path")

    # Lightning sets this so CUDA probes never initialise CUDA, but then every optimizer step
    # re-probes NVML (about 0.25 ms, longer than a whole step of these models). Nothing here forks.
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    started = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    check_accelerator(cfg.trainer.get("accelerator"))
    datamodule, model = build(cfg)
    if cfg.trainer.get("gradient_clip_val"):
        model.gradient_clip = (float(cfg.trainer.gradient_clip_val), cfg.trainer.get("gradient_clip_algorithm") or "norm")
    model.run_config = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in cfg.items() if k != "hydra"}
    recorder = record.MetricsRecord()
    if context.get("resumed"):
        recorder.metrics = record.previous_metrics(run_dir)
    trainer, loggers = make_trainer(cfg, run_dir, recorder)

    outcome: dict[str, Any] = {"status": "finished", "reason": None, "parameters": None}
    try:
        fit_and_test(trainer, model, datamodule, cfg.ckpt_path, loggers, outcome)
    except Diverged as error:
        outcome.update(status="diverged", reason=str(error))
    except (KeyboardInterrupt, SystemExit) as error:  # Lightning's SIGTERMException is a SystemExit
        outcome.update(status="interrupted", reason=interruption(error, trainer))
    except BaseException as error:
        outcome.update(status="failed", reason=f"{type(error).__name__}: {error}")
        raise
    finally:
        hparams = record.flat_hparams(cfg, context["choices"], context["overrides"], datamodule.batch_size or datamodule.train_size)
        result = record.run_result(cfg, trainer, model, recorder, outcome, context, hparams, time.perf_counter() - started)
        if trainer.is_global_zero:
            record.write_trajectory(run_dir / "trajectory.json", model, datamodule)
            record.write_json(run_dir / "metrics.json", result)
            record.write_resolved_config(run_dir / "config.resolved.yaml", model.run_config)
            record.log_run_hparams(loggers, result, with_experiment=not context["multirun"])
    return result


def print_summary(result: dict[str, Any]) -> None:
    status = result["status"]
    head = f"{status.capitalize()} in {result['wall_time_s']:.1f} s: {result['epochs']} epochs, {result['steps']} steps."
    lines = [head if status == "finished" else f"{head} Reason: {result['reason']}."]
    monitor = result["monitor"]
    if monitor["best"] is not None:
        lines.append(f"  best {monitor['name']} {monitor['best']:.6g} (epoch {monitor['epoch']})")
    if result["test"]:
        lines.append("  " + ", ".join(f"{k} {v:.6g}" for k, v in result["test"].items()))
    if result["parameters"]:
        lines.append("  " + ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in result["parameters"].items()))
    run_dir = Path(result["run_dir"])
    shown = run_dir.relative_to(Path.cwd()) if run_dir.is_relative_to(Path.cwd()) else run_dir
    lines.append(f"  run dir: {shown}")
    lines.append(f"  tensorboard --logdir {shown}")
    log.info("\n".join(lines))


def only_hydra_files(run_dir: Path) -> bool:
    return run_dir.is_dir() and all(p.name in (".hydra", "train.log") for p in run_dir.iterdir())


def resumed(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """For resume=<run dir>: that run's config (its command-line overrides, composed again, plus
    any given now) with its own directory and last checkpoint, and its Hydra context."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(cfg.run_dir)
    check_resume_dir(str(run_dir))
    saved = run_dir / ".hydra"
    last = run_dir / "checkpoints" / "last.ckpt"
    original = [str(o) for o in OmegaConf.load(saved / "overrides.yaml")]
    extra = [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(("resume=", "hydra.", "hydra/"))]
    config = compose("train", overrides=[*original, *extra, f"run_dir={run_dir}", f"ckpt_path={last}"])
    choices = OmegaConf.load(saved / "hydra.yaml").hydra.runtime.choices
    context = {
        "choices": {k: v for k, v in choices.items() if v and not k.startswith("hydra")},
        "overrides": [*original, *extra],
        "multirun": False,
        "resumed": True,
    }
    return config, context


def starts_script_processes(cfg: DictConfig) -> bool:
    """Whether the strategy starts its other processes by running this command again (Lightning's ddp)."""
    strategy = str(cfg.trainer.get("strategy") or "auto")
    return strategy.startswith("ddp") and not any(word in strategy for word in ("spawn", "fork", "notebook"))


def resumable_job(run_dir: Path) -> bool:
    """A sweep job run again in its directory (a requeue after preemption, or a rerun of the sweep)
    that stopped before finishing and left a checkpoint."""
    metrics = run_dir / "metrics.json"
    finished = metrics.is_file() and json.loads(metrics.read_text()).get("status") == "finished"
    return (run_dir / "checkpoints" / "last.ckpt").is_file() and not finished


def run_job_in_own_process(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Run one sweep job as a single run in a process of its own, in the job's directory.

    Lightning's DDP starts its other processes by running the command line again: inside a sweep,
    that would start the whole sweep again in each of them (duplicate directories, then a hang).
    As a single run, the usual Hydra and DDP handshake applies: same directory, rank 0 writes."""
    import subprocess

    from hydra.core.hydra_config import HydraConfig

    if resumable_job(run_dir):
        command = [f"resume={run_dir}"]
    else:
        overrides = [o for o in HydraConfig.get().overrides.task if not o.lstrip("+~").startswith(("sweep=", "hydra.", "hydra/", "fail_fast="))]
        command = [*overrides, f'hydra.run.dir="{run_dir}"', "hydra.output_subdir=null"]
    done = subprocess.run([sys.executable, "-m", "experiments.train", *command, "hydra.mode=RUN"], cwd=os.getcwd())
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        raise RuntimeError(f"the job's own process exited with {done.returncode} before recording a result")
    return json.loads(metrics.read_text())


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """One run, or one job of a sweep. A job that fails or diverges is recorded and the sweep goes
    on; with fail_fast=true the sweep stops there. A single run that does not finish exits non-zero."""
    from experiments import record

    run_dir = Path(cfg.run_dir)
    multirun = hydra_context()["multirun"]
    own_process = multirun and starts_script_processes(cfg)  # which prints its own summary
    try:
        if cfg.get("resume"):
            if multirun:
                raise UserError("resume= continues one run; run it without -m (a sweep run again into its directory resumes its unfinished jobs).")
            cfg, context = resumed(cfg)
            result = train(cfg, context)
        elif own_process:
            result = run_job_in_own_process(cfg, run_dir)
        elif multirun and resumable_job(run_dir):
            cfg.ckpt_path = str(run_dir / "checkpoints" / "last.ckpt")
            result = train(cfg, {**hydra_context(), "resumed": True})
        else:
            result = train(cfg)
    except UserError as error:
        sys.stderr.write(f"error: {error}\n")
        log.debug("error: %s", error)
        if not multirun:
            if only_hydra_files(run_dir) and not cfg.get("resume"):
                shutil.rmtree(run_dir, ignore_errors=True)  # a mistyped value leaves no empty run behind
            sys.exit(1)
        record.write_failure(run_dir, str(error), hydra_context())
        result = None
    except Exception as error:
        if not multirun:
            raise
        log.exception("job failed: %s", error)  # the traceback goes to the job's train.log
        if not (run_dir / "metrics.json").is_file():
            record.write_failure(run_dir, f"{type(error).__name__}: {error}", hydra_context())
        result = None
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if result is not None and rank_zero_only.rank == 0 and not own_process:
        print_summary(result)
    if result is not None and result["status"] == "interrupted":
        sys.exit(130 if "SIGINT" in result["reason"] else 143)  # as a shell reports a signal; a sweep stops too
    if result is None or result["status"] != "finished":
        # Hydra's launchers run every job before raising a failure, so stopping means exiting here.
        if not multirun or cfg.fail_fast:
            sys.exit(1)
        return None
    return result["monitor"]["best"]


def exit_now(code: int | str | None) -> None:
    """Exit after flushing everything, skipping the interpreter's teardown of torch and Lightning's
    modules, which takes longer (about 1.5 s) than many of these runs' training."""
    import atexit
    import threading

    # What the interpreter would do before its teardown still happens, in its order: wait for
    # threads and run their exit hooks (joblib's workers are shut down there), then atexit's.
    threading._shutdown()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if isinstance(code, str):
        os.write(2, (code + "\n").encode())
        code = 1
    os._exit(code or 0)


def run_cli(entry: Any) -> None:
    try:
        entry()
    except SystemExit as done:
        exit_now(done.code)
    exit_now(0)


if __name__ == "__main__":
    run_cli(main)
