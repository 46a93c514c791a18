"""The sweep's own TensorBoard runs: `.sweep`, one HParams experiment covering every job and the
sweep's pictures; and `dashboard/`, a log directory of its own with each configuration's mean
curve and band over its seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the sweep's own TensorBoard run (HParams experiment, pictures); hidden, as .hydra is
SWEEP_RUN = ".sweep"


SWEEP_EVENTS = ".sweep"  # the suffix of the sweep's own event file, the only one it replaces


def write_sweep_events(sweep_dir: Path, rows: list[dict[str, Any]], images: dict[str, Any]) -> None:
    """The sweep's own TensorBoard run, `.sweep`: one HParams experiment listing every key and metric any
    job has, so TensorBoard's table shows all of them (it takes the first experiment summary it
    finds), and the sweep's pictures as images (sweep/summary, sweep/curves, sweep/paths)."""
    from torch.utils.tensorboard import SummaryWriter

    from experiments.hparams import mark_differing, summaries

    settings = [{**row["hparams"], "status": row["status"]} for row in rows]
    params: dict[str, Any] = {}
    for each in settings:
        for key, value in each.items():
            params.setdefault(key, value)
    domains = {
        k: sorted({str(each[k]) for each in settings if k in each})
        for k, v in params.items()
        if isinstance(v, str)
    }
    # every key whose value differs between jobs: those swept and those that differ because of
    # them (Adam's betas against SGD's empty value)
    differing = {key for key in params if len({repr(s.get(key)) for s in settings}) > 1}
    metrics = sorted(
        {k for r in rows for k, v in r["best_metrics"].items() if v is not None}
        | {k for r in rows for k in r["test"]}
    )
    experiment, _, _ = summaries(params, metrics, domains=domains)
    mark_differing(experiment, differing)
    # a sweep run again: one experiment, not two (an older version wrote it to the sweep's root)
    for earlier in [
        *sweep_dir.glob(f"events.out.tfevents.*{SWEEP_EVENTS}"),
        *sweep_dir.glob(f"{SWEEP_RUN}/events.out.tfevents.*{SWEEP_EVENTS}"),
    ]:
        earlier.unlink()
    with SummaryWriter(log_dir=str(sweep_dir / SWEEP_RUN), filename_suffix=SWEEP_EVENTS) as writer:
        writer.file_writer.add_summary(experiment)
        for name, pixels in images.items():
            writer.add_image(f"sweep/{name.removesuffix('.png')}", pixels, 0, dataformats="HWC")


DASHBOARD = "dashboard"  # the sweep's comparison as TensorBoard shows it: `tensorboard --logdir <sweep>/dashboard`
BAND_TAGS = ("mean", "lower", "upper")


def write_dashboard(
    sweep_dir: Path, curves: list[dict[str, Any]], names: list[str], images: dict[str, Any]
) -> Path:
    """`<sweep>/dashboard`, a TensorBoard log directory of its own with one run per configuration
    (`adam,lr=0.01`) holding, per tag, the mean over its finished seeds and their min and max at
    the steps they all logged (`val/loss/mean`, `val/loss/lower`, `val/loss/upper`: the band of
    curves.png), a custom-scalars layout drawing each tag's bands in one margin chart, and a run
    `sweep` with the sweep's pictures. Few runs, so TensorBoard selects them all when it opens
    (it selects none of a log directory with more than 40, as a sweep's own often has)."""
    import shutil

    from torch.utils.tensorboard import SummaryWriter

    folder = sweep_dir / DASHBOARD
    shutil.rmtree(folder, ignore_errors=True)  # written whole from the jobs' files each time
    tags: list[str] = []
    for curve, name in zip(curves, names):
        # a queue that holds the run's every record: with the default 10, each add_scalar waits
        # for the writer thread, which checksums each record in pure Python without TensorFlow
        # (a 256-job sweep's dashboard: 3.2 s -> 1.9 s)
        with SummaryWriter(log_dir=str(folder / name), max_queue=1_000_000) as writer:
            for tag, found in curve["curves"].items():
                if tag not in tags:
                    tags.append(tag)
                for step, mean, low, high in zip(
                    found["steps"], found["mean"], found["low"], found["high"]
                ):
                    for part, value in zip(BAND_TAGS, (mean, low, high)):
                        writer.add_scalar(f"{tag}/{part}", value, step)
    with SummaryWriter(log_dir=str(folder / "sweep")) as writer:
        charts = {
            f"{tag}: mean over seeds, band min to max": [
                "Margin",
                [f"{tag}/{part}" for part in BAND_TAGS],
            ]
            for tag in tags
        }
        writer.add_custom_scalars({"comparison": charts})
        for name, pixels in images.items():
            writer.add_image(f"sweep/{name.removesuffix('.png')}", pixels, 0, dataformats="HWC")
    return folder
