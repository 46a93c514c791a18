"""Re-test a saved run: `python -m experiments.evaluate run=<run dir or checkpoint> [inputs=[...]]`.

The checkpoint carries the run's config, so the data set is rebuilt as it was trained. For a
regression, `inputs=[...]` are raw readings (for the thermometer, t_u) and the answer is the
fitted line's prediction for each (t_c in Celsius).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.cli import one_sentence, run_cli
from experiments.core.config import CONF_DIR, UserError, register_resolvers

register_resolvers()  # conf/ resolves ${job_dir:...} and its siblings

log = logging.getLogger("experiments")


def find_checkpoint(run: str, which: str) -> Path:
    path = Path(run).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in (which, "last" if which == "best" else "best"):
            candidate = path / "checkpoints" / f"{name}.ckpt"
            if candidate.is_file():
                return candidate
        from experiments.core.state import read_record

        record = read_record(path) or {}
        if record.get("status") in ("diverged", "failed", "interrupted", "pruned"):
            raise UserError(
                f"run={run} {record['status']} before it wrote a checkpoint ({record.get('reason')}), so there are no weights to test."
            )
        raise UserError(
            f"run={run} holds no checkpoints/{which}.ckpt; pass a run directory written by experiments.train or a .ckpt file."
        )
    raise UserError(
        f"run={run} does not exist; pass a run directory under outputs/ or a .ckpt file."
    )


def checkpoint_class(target: str, key: str, path: Path) -> type:
    """The data module or model class a checkpoint names, if it is one of this package's."""
    from hydra.utils import get_class

    from experiments.data.batching import TensorDataModule
    from experiments.models.base import ExperimentModule

    base = TensorDataModule if key == "data" else ExperimentModule
    cls = get_class(target) if target.startswith("experiments.") else None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UserError(
            f"{path} names {key} {target!r}, which is not one of this package's {base.__name__} classes; it will not be run."
        )
    return cls


def restore(path: Path, data_overrides: dict | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """The data module and model a checkpoint's run trained (the model holding its weights), and
    the checkpoint; `data_overrides` where its data has moved."""
    from experiments.callbacks.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(path, "run")
    config = OmegaConf.create(checkpoint["run_config"])
    moved = {k: v for k, v in (data_overrides or {}).items() if v is not None}
    if wrong := sorted(set(moved) - set(config.data)):
        raise UserError(
            f"data.{wrong[0]} does not apply to {path}: its data ({config.data._target_}) takes {', '.join(k for k in config.data if k != '_target_')}."
        )
    config.data = OmegaConf.merge(config.data, moved)
    data_class, model_class = (
        checkpoint_class(config[key]._target_, key, path) for key in ("data", "model")
    )
    # Built from plain values, never through instantiate: a checkpoint's config is not the user's
    # own, so nothing in it may name code to run.
    datamodule = data_class(
        **{k: v for k, v in OmegaConf.to_container(config.data).items() if k != "_target_"}
    )
    model = model_class(**checkpoint["hyper_parameters"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError:  # the weights are another model's than the one its config names
        raise UserError(
            f"{path} holds weights that do not fit the {model_class.__name__} its config names; pass a checkpoint written by experiments.train."
        ) from None
    return datamodule, model, checkpoint


def evaluate(
    run: str,
    which: str = "best",
    inputs: list[float] | None = None,
    data_overrides: dict | None = None,
    accelerator: str = "cpu",
) -> dict[str, Any]:
    """Test the checkpoint's model on its data; return test metrics and, given inputs, predictions."""
    from experiments.build import check_accelerator

    check_accelerator(
        OmegaConf.create({"accelerator": accelerator, "devices": 1}), key="accelerator"
    )
    path = find_checkpoint(run, which)
    from experiments.core.quiet import quiet_lightning
    from experiments.core.signals import hand_sigterm_to_lightning

    quiet_lightning()
    import lightning.pytorch as pl
    import torch

    datamodule, model, checkpoint = restore(path, data_overrides)
    hand_sigterm_to_lightning()
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(model, datamodule=datamodule, verbose=False)
    result: dict[str, Any] = {
        "checkpoint": str(path),
        "epoch": checkpoint.get("epoch", -1) + 1,
        "test": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")},
    }
    if inputs is not None:
        if model.task != "regression":
            raise UserError(
                f"inputs= answers regression runs only; {path} holds a {model.task} model."
            )
        raw = torch.tensor(inputs).reshape(-1, *datamodule.input_shape)
        with torch.no_grad():
            predictions = model(
                datamodule.transform_inputs(raw).to(next(model.parameters()).dtype)
            ).reshape(len(raw), -1)
        result["predictions"] = [
            {"input": float(x), "prediction": p.item() if p.numel() == 1 else p.tolist()}
            for x, p in zip(raw.flatten(), predictions)
        ]
    return result


def print_result(result: dict[str, Any]) -> None:
    lines = [f"{result['checkpoint']} (after epoch {result['epoch']})"]
    lines += [f"  {name} {value:.6g}" for name, value in result["test"].items()]
    for row in result.get("predictions", []):
        prediction = row["prediction"]
        lines.append(
            f"  {row['input']:g} -> {prediction:.4g}"
            if isinstance(prediction, float)
            else f"  {row['input']:g} -> {prediction}"
        )
    log.info("\n".join(lines))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
@one_sentence
def main(cfg: DictConfig) -> None:
    """Its mistakes are raised as one sentence, which experiments.cli prints."""
    if OmegaConf.is_missing(cfg, "run"):
        raise UserError(
            "run= is required: pass a run directory (run=outputs/runs/<run>) or a .ckpt file."
        )
    inputs = cfg.inputs
    if inputs is not None:
        try:
            inputs = [float(v) for v in (inputs if OmegaConf.is_list(inputs) else [inputs])]
        except (TypeError, ValueError):
            inputs = None
        if not inputs:
            given = (
                OmegaConf.to_container(cfg.inputs) if OmegaConf.is_list(cfg.inputs) else cfg.inputs
            )
            raise UserError(
                f"inputs must be one or more numbers, such as inputs=[35.7,81.9], got {given!r}."
            )
    if cfg.checkpoint not in ("best", "last"):
        raise UserError(
            f"checkpoint must be best or last (which of the run's checkpoints to test), got {cfg.checkpoint!r}."
        )
    if cfg.accelerator not in ("cpu", "gpu", "cuda", "mps", "auto"):
        raise UserError(f"accelerator must be cpu, gpu, mps or auto, got {cfg.accelerator!r}.")
    data = OmegaConf.to_container(cfg.data)
    print_result(evaluate(str(cfg.run), cfg.checkpoint, inputs, data, cfg.accelerator))


if __name__ == "__main__":
    run_cli(main, "evaluate")
