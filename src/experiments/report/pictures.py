"""A sweep's pictures, from its jobs' files: summary.png, curves.png, dynamics.png for jobs with
instruments (dynamics=...) and, for two-parameter models, paths.png (drawn by
experiments.report.figures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments.report.comparison import (
    seed_of,
)
from experiments.report.runs import configuration_names, learning_curves, line_names

# dynamics.png, with dynamics=...: the instruments' totals drawn as the losses are, a band over seeds
DYNAMICS_SHOWN = [
    "dynamics/grad_norm",
    "dynamics/update_ratio",
    "dynamics/distance",
    "dynamics/noise_scale",
    "dynamics/hessian_top_eigenvalue",
]
THRESHOLD = "dynamics/stability_threshold"  # drawn dotted beside the sharpness


def write_figures(
    sweep_dir: Path,
    rows: list[dict[str, Any]],
    configs: list[dict[str, Any]],
    curves: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """summary.png, curves.png (of `configs`; their `curves` where read already) and, for
    two-parameter models, paths.png; their pixels by file name."""
    from matplotlib.image import imsave

    from experiments.report.figures import image_of

    figures = sweep_figures(sweep_dir, rows, configs, curves)
    # each figure drawn once: its pixels are both the PNG and the sweep's TensorBoard image
    images = {name: image_of(figure) for name, figure in figures.items()}
    for name, pixels in images.items():
        imsave(sweep_dir / name, pixels)
    return images


def save_figure(sweep_dir: Path, name: str, figure: Any) -> dict[str, Any]:
    """One more picture of the sweep, saved as write_figures saves its own; its pixels by name."""
    from matplotlib.image import imsave

    from experiments.report.figures import image_of

    pixels = image_of(figure)
    imsave(sweep_dir / name, pixels)
    return {name: pixels}


def sweep_figures(
    sweep_dir: Path,
    rows: list[dict[str, Any]],
    configs: list[dict[str, Any]],
    curves: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The matplotlib Figures write_figures saves, by file name, every one coloured from one map
    (experiments.report.figures.colour_map): a line (optimizer and its other settings) has one
    colour in all of them."""
    from experiments.report.figures import (
        colour_map,
        curves_figure,
        paths_figure,
        sweep_figure,
    )

    figures = {}
    lines = line_names(rows)
    colours = colour_map(list(lines.values()))
    monitors = [r["monitor"] for r in rows if r["monitor"]]
    if any(r["lr"] is not None for r in rows):
        figures["summary.png"] = sweep_figure(
            [{**r, "line": lines[r["job"]]} for r in rows],
            monitors[0] if monitors else "val/loss",
            colours,
        )
    tags = ["train/loss", *sorted(set(monitors))[:1]]
    if curves is None:
        curves = learning_curves(sweep_dir, configs, tags)
    logged = {t for c in curves for t in c["curves"]}
    shown = [t for t in DYNAMICS_SHOWN if t in logged]
    by_job = {r["job"]: r for r in rows}
    names = configuration_names(configs, by_job)  # adam,lr=0.1: as the dashboard's runs
    for picture, picture_tags in (("curves.png", tags), ("dynamics.png", shown)):
        chosen = [
            {**c, "curves": {t: c["curves"][t] for t in picture_tags if t in c["curves"]}}
            for c in curves
        ]
        for curve, config, name in zip(chosen, configs, names):
            curve["name"] = name
            curve["lr"] = by_job[config["jobs"][0]][
                "lr"
            ]  # what curves_figure colours many lines by
            curve["others"] = lines[config["jobs"][0]]
            if picture == "dynamics.png" and THRESHOLD in curves[configs.index(config)]["curves"]:
                curve["curves"][THRESHOLD] = curves[configs.index(config)]["curves"][THRESHOLD]
        if picture_tags and any(c["curves"] for c in chosen):
            figures[picture] = curves_figure(chosen, picture_tags, colours)
    trajectories = []
    for r in rows:
        path = sweep_dir / r["job"] / "trajectory.json"
        if path.is_file():
            trajectories.append(
                {
                    **json.loads(path.read_text()),
                    "name": r["job"],
                    "optimizer": r["optimizer"] or r["job"],
                    "lr": r["lr"],
                    "seed": seed_of(r),
                    "others": lines[r["job"]],
                    "status": r["status"],
                }
            )
    if trajectories and trajectories[0]["x"]:
        figures["paths.png"] = paths_figure(trajectories, colours)
    return figures
