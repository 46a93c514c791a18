"""A run's row in TensorBoard's HParams tab: one flat set of settings for every run, real metric
values, and the run's outcome as the session's status."""

from __future__ import annotations

import functools
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.core.config import CONF_DIR, flatten
from experiments.core.overrides import key_of

# TensorBoard's session status for each run status (api_pb2.Status names; it has none for "stopped early").
SESSION_STATUS = {
    "finished": "STATUS_SUCCESS",
    "interrupted": "STATUS_UNKNOWN",
    "pruned": "STATUS_UNKNOWN",
    "diverged": "STATUS_FAILURE",
    "failed": "STATUS_FAILURE",
    "running": "STATUS_RUNNING",
}


def plain(value: Any) -> int | float | str | bool:
    """A value TensorBoard's HParams can show: numbers, strings and booleans as they are, the rest as text."""
    if value is None:
        return ""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def neutral(value: Any) -> int | float | str | bool:
    """What a run that lacks a setting shows for it: zero, false or empty, of the same type."""
    value = plain(value)
    return type(value)() if not isinstance(value, float) else 0.0


@functools.cache
def group_settings(group: str) -> dict[str, Any]:
    """Every setting any option of a config group has (`optimizer.momentum`, ...), with a neutral
    value, so every run shows the same keys."""
    keys: dict[str, Any] = {}
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path)) or {}
        for key, value in flatten(node).items():
            if not key.split(".")[-1].startswith("_") and "${" not in str(value):
                keys.setdefault(f"{group}.{key}", neutral(value))
    return keys


def flat_hparams(
    cfg: DictConfig, choices: dict[str, str], overrides: list[str], batch_size: int
) -> dict[str, Any]:
    """The flat key set of the HParams tab: the groups chosen, every optimizer and scheduler setting
    (neutral where this run's option has none), batch size, seed, epochs, and any other key set on
    the command line, with its value as the config holds it (500, not '500')."""

    def target_name(node: Any) -> str:
        return (
            str(OmegaConf.select(node, "_target_", default="") or "").rsplit(".", 1)[-1]
            if node
            else ""
        )

    params: dict[str, Any] = {
        "experiment": choices.get("experiment", ""),
        "optimizer": choices.get("optimizer", target_name(cfg.optimizer)),
        "scheduler": choices.get("scheduler", "none" if not cfg.get("scheduler") else "custom"),
        "model": choices.get("model", target_name(cfg.model)),
        "data": choices.get("data", target_name(cfg.data)),
        "batch_size": batch_size,
        "seed": int(cfg.seed),
        "max_epochs": int(cfg.trainer.max_epochs),
        **group_settings("optimizer"),
        **group_settings("scheduler"),
    }
    for group in ("optimizer", "scheduler"):
        node = cfg.get(group)
        if node:
            for key, value in flatten(OmegaConf.to_container(node, resolve=True)).items():
                if not key.split(".")[-1].startswith("_"):
                    params[f"{group}.{key}"] = plain(value)
    for override in overrides:
        key = key_of(override)
        if (
            key not in params
            and key.split("/")[0] not in choices
            and "." in key
            and not key.startswith("hydra.")
        ):
            params[key] = plain(OmegaConf.select(cfg, key, default=override.partition("=")[2]))
    return params


def hparams_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The HParams metric columns of a run: the best of each validation metric, and the test metrics."""
    metrics = {
        f"best/{k.replace('/', '_')}": v["best"]
        for k, v in result["metrics"].items()
        if k.startswith("val/") and v["best"] is not None
    }
    metrics.update({k: v for k, v in result["test"].items() if v is not None})
    return metrics


def summaries(
    params: dict[str, Any],
    metrics: list[str],
    status: str = "finished",
    domains: dict[str, list] | None = None,
) -> tuple[Any, Any, Any]:
    """TensorBoard's (experiment, session start, session end) summaries for these settings, metric
    tags and run status."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from torch.utils.tensorboard.summary import hparams

    experiment, start, end = hparams(
        params, dict.fromkeys(metrics, 0.0), hparam_domain_discrete=domains
    )
    # torch always reports success; the session's real status replaces it in the same summary.
    value = end.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    data.session_end_info.status = api_pb2.Status.Value(
        SESSION_STATUS.get(status, "STATUS_UNKNOWN")
    )
    value.metadata.plugin_data.content = data.SerializeToString()
    return experiment, start, end


def mark_differing(experiment: Any, differing: set[str]) -> None:
    """Mark the keys whose value differs between a sweep's runs, as TensorBoard itself would had
    it built the experiment from the runs: its HParams tab shows the first five marked keys (by
    name) as its default columns, and the runs table tags them `differs`."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    value = experiment.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in differing
    value.metadata.plugin_data.content = data.SerializeToString()


def write_session(
    tensorboard: Any,
    params: dict[str, Any],
    metrics: dict[str, float],
    status: str,
    with_experiment: bool,
) -> None:
    """Write a run's HParams entry with real metric values, instead of Lightning's `hp_metric = -1`.

    Metrics already logged as scalars (test/*) are referenced by tag; the `best/*` ones are written
    here. In a sweep the runs leave out the experiment summary: TensorBoard takes the first one it
    finds for the whole table, so the sweep writes one covering every run (experiments.report.summary).
    """
    writer = tensorboard.experiment  # a torch SummaryWriter
    experiment, start, end = summaries(params, list(metrics), status)
    for summary in (experiment, start, end) if with_experiment else (start, end):
        writer.file_writer.add_summary(summary)
    for tag, value in metrics.items():
        if tag.startswith("best/"):
            writer.add_scalar(tag, value, 0)
    writer.flush()
