"""The loss landscape around trained runs, with their paths on it:
`python -m experiments.landscape run=<run or sweep dir> [plane=pca|random] [resolution=31]`.

As Li et al. (2018) draw it: a plane through the weights, either the principal plane of the runs'
paths (each axis's share of the paths' variance in its label) or two filter-normalised random
directions, centred on the first run's end; every run's path projected onto it; and slices along
a line, from each run's start to its end and between two runs' ends. A model of two parameters
(the line's w and b) is its own plane: the exact surface, with the Hessian's eigen-directions at
its minimum. The paths are the weights each run kept in weights_path.pt (trained with
dynamics=...). The loss is evaluated on `samples` training samples, `batch` parameter sets at a
time (torch.func.vmap, as a population trains); the cost is printed before it starts. It writes
plane.png, slices.png, landscape.json and TensorBoard images into <run>/landscape/, the only
folder it touches, and refuses a run or sweep that a live process still holds.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments.cli import one_sentence, run_cli
from experiments.core.config import CONF_DIR, UserError, check_positive_int, register_resolvers
from experiments.core.domains import check_config
from experiments.core.state import METRICS

register_resolvers()

log = logging.getLogger("experiments")
PLANES = ("pca", "random")
FOLDER = "landscape"


@dataclass
class RunPath:
    """One run's path: its name, the steps and the weights (steps x parameters) it kept."""

    name: str
    run_dir: Path
    steps: list[int]
    weights: Any


def find_runs(run: str) -> list[Path]:
    """The run directory `run`, or every job of the sweep `run`, that kept its weights' path."""
    from experiments.dynamics.monitor import WEIGHTS_PATH

    root = Path(run).expanduser()
    if not root.is_dir():
        raise UserError(f"run={run} does not exist; pass a run or sweep directory under outputs/.")
    found = (
        [root]
        if (root / METRICS).is_file()
        else sorted(p.parent for p in root.glob(f"**/{METRICS}"))
    )
    if not found:
        raise UserError(
            f"run={run} holds no run (no {METRICS}); pass a run or sweep directory written by experiments.train."
        )
    kept = [d for d in found if (d / WEIGHTS_PATH).is_file()]
    if not kept:
        raise UserError(
            f"run={run} kept no path of its weights ({WEIGHTS_PATH}); train it with dynamics=basic (or noise, curvature) to record one."
        )
    return kept


def read_paths(
    run_dirs: list[Path], root: Path
) -> tuple[list[RunPath], list[str], list[list[int]]]:
    import torch

    from experiments.dynamics.monitor import WEIGHTS_PATH

    paths, layout = [], None
    for run_dir in run_dirs:
        kept = torch.load(run_dir / WEIGHTS_PATH, weights_only=True)
        shape = (kept["names"], kept["shapes"])
        if layout is None:
            layout = shape
        elif shape != layout:
            raise UserError(
                f"{run_dir} has other parameters than {run_dirs[0]}; a landscape draws the runs of one model (pass one run, or a sweep of one model)."
            )
        name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.name
        paths.append(RunPath(name, run_dir, list(kept["steps"]), kept["weights"].double()))
    return paths, *layout


def plane_of(
    paths: list[RunPath], plane: str, names: list[str], shapes: list[list[int]], seed: int
) -> dict[str, Any]:
    """The plane's centre, its two directions and their labels: the paths' principal plane, or
    two filter-normalised random directions (each row of a weight matrix scaled to that row's
    norm in the centre's weights, biases left out: Li et al.'s recipe)."""
    import torch

    centre = paths[0].weights[-1]
    if centre.numel() == 2:
        return {
            "centre": torch.zeros(2, dtype=centre.dtype),
            "directions": torch.eye(2, dtype=centre.dtype),
            "labels": names,
            "kind": "parameters",
        }
    if plane == "pca":
        points = torch.cat([p.weights for p in paths]) - centre
        _, singular, vh = torch.linalg.svd(points, full_matrices=False)
        share = (singular**2 / (singular**2).sum()).tolist()
        return {
            "centre": centre,
            "directions": vh[:2],
            "labels": [f"PC{k + 1} ({share[k]:.1%} of the paths' variance)" for k in range(2)],
            "kind": "pca",
        }
    generator = torch.Generator().manual_seed(seed)
    directions = []
    for _ in range(2):
        parts, offset = [], 0
        for shape in shapes:
            n = math.prod(shape)
            weights = centre[offset : offset + n].view(shape)
            d = torch.randn(shape, generator=generator, dtype=centre.dtype)
            if len(shape) >= 2:
                d = d * (weights.norm(dim=1, keepdim=True) / d.norm(dim=1, keepdim=True))
            else:
                d = torch.zeros_like(d)
            parts.append(d.reshape(-1))
            offset += n
        directions.append(torch.cat(parts))
    return {
        "centre": centre,
        "directions": torch.stack(directions),
        "labels": [
            "random direction 1 (filter-normalised)",
            "random direction 2 (filter-normalised)",
        ],
        "kind": "random",
    }


def coordinates(points: Any, plane: dict[str, Any]) -> Any:
    """Points' coordinates in the plane: least squares onto its two directions."""
    import torch

    basis = plane["directions"].T  # P x 2
    return torch.linalg.lstsq(basis, (points - plane["centre"]).T).solution.T


class Loss:
    """The model's loss on fixed samples as a function of flat parameter sets, many at once."""

    def __init__(
        self, model: Any, shapes: list[list[int]], names: list[str], x: Any, y: Any, batch: int
    ):
        from torch.func import functional_call, vmap

        self.batch = batch
        sizes = [math.prod(s) for s in shapes]

        def one(theta: Any) -> Any:
            params, offset = {}, 0
            for name, shape, n in zip(names, shapes, sizes):
                params[name] = theta[offset : offset + n].view(shape)
                offset += n
            return model.loss(functional_call(model, params, (x,)), y)

        self.many = vmap(one)
        self.evaluations = 0

    def __call__(self, thetas: Any) -> Any:
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(thetas), self.batch):
                out.append(self.many(thetas[start : start + self.batch].float()))
        self.evaluations += len(thetas)
        return torch.cat(out).double()


def landscape(
    run: str,
    plane: str = "pca",
    resolution: int = 31,
    margin: float = 0.25,
    samples: int = 2048,
    batch: int = 64,
    seed: int = 0,
    data_overrides: dict | None = None,
    say: Any = log.info,
) -> dict[str, Any]:
    """Evaluate and draw the landscape of `run` (a run or a sweep directory); return what
    landscape.json holds. `say` hears its cost before it starts."""
    if plane not in PLANES:
        raise UserError(f"plane must be pca or random, got {plane!r}.")
    for key, value in (("resolution", resolution), ("samples", samples), ("batch", batch)):
        check_positive_int(key, value)
    if resolution < 3:
        raise UserError(f"resolution must be 3 or more grid points per axis, got {resolution}.")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
        raise UserError(f"margin must be a number of 0 or more, got {margin!r}.")
    settings = {"resolution": resolution, "margin": margin, "samples": samples, "batch": batch}
    check_config(OmegaConf.create({**settings, "seed": seed}), only="landscape.", root="landscape.")
    root = Path(run).expanduser()
    run_dirs = find_runs(run)
    from experiments.core.rundir import own

    own(root, "run")  # a run or sweep still training is refused; none starts into it meanwhile
    from experiments.evaluate import find_checkpoint, restore

    checkpoint = find_checkpoint(str(run_dirs[0]), "last")
    from experiments.core.quiet import quiet_lightning

    quiet_lightning()
    import torch

    paths, names, shapes = read_paths(run_dirs, root)
    datamodule, model, _ = restore(checkpoint, data_overrides)
    datamodule.load()
    x, y = datamodule.splits["train"]
    x, y = x[:samples], y[:samples]
    chosen = plane_of(paths, plane, names, shapes, seed)
    slices = [(p.name, p.weights[0], p.weights[-1]) for p in paths]
    if len(paths) > 1:
        slices.append(
            (f"{paths[0].name} to {paths[1].name}", paths[0].weights[-1], paths[1].weights[-1])
        )
    points = 2 * resolution
    cost = resolution**2 + points * len(slices) + 2 * len(paths)
    say(
        f"landscape of {len(paths)} run(s) on {len(x)} training samples, {paths[0].weights.shape[1]} "
        f"parameters each: {resolution**2} points of the {chosen['kind']} plane and {len(slices)} "
        f"slice(s) of {points} points (and the runs' starts and ends), {cost} evaluations of the "
        f"loss, {batch} at a time"
    )
    started = time.perf_counter()
    loss = Loss(model, shapes, names, x, y, batch)
    projected = [coordinates(p.weights, chosen) for p in paths]
    # The plane frames the runs that did not blow up (ending at most 10x above their start's
    # loss): one that did would stretch it until the others' paths are a dot. Its path still
    # shows as far as it stays in the frame.
    starts = loss(torch.stack([p.weights[0] for p in paths])).tolist()
    ends = loss(torch.stack([p.weights[-1] for p in paths])).tolist()
    blew_up = [not end <= 10 * start for start, end in zip(starts, ends)]
    framed = [c for c, out in zip(projected, blew_up) if not out]
    every = torch.cat(framed or projected)
    eigen = None
    if chosen["kind"] == "parameters":  # the minimum and its eigen-directions in the picture too
        eigen = line_eigen(model, names, shapes, paths[0].weights[-1], x, y)
        every = torch.cat([every, torch.tensor([eigen["minimum"]], dtype=every.dtype)])
    low, high = every.min(0).values, every.max(0).values
    if chosen["kind"] == "random":
        low, high = (
            torch.minimum(low, torch.full_like(low, -1.0)),
            torch.maximum(high, torch.ones_like(high)),
        )
    span = (high - low).clamp_min(1e-3)
    low, high = low - margin * span, high + margin * span
    a = torch.linspace(low[0], high[0], resolution, dtype=torch.float64)
    b = torch.linspace(low[1], high[1], resolution, dtype=torch.float64)
    grid_a, grid_b = torch.meshgrid(a, b, indexing="xy")
    thetas = (
        chosen["centre"]
        + grid_a.reshape(-1, 1) * chosen["directions"][0]
        + grid_b.reshape(-1, 1) * chosen["directions"][1]
    )
    surface = loss(thetas).view(resolution, resolution)
    alphas = torch.linspace(-0.25, 1.25, points, dtype=torch.float64)
    sliced = [(name, loss(start + alphas[:, None] * (end - start))) for name, start, end in slices]
    seconds = time.perf_counter() - started
    result = {
        "runs": [p.name for p in paths],
        "plane": chosen["kind"],
        "axes": chosen["labels"],
        "a": a.tolist(),
        "b": b.tolist(),
        "loss": surface.tolist(),
        "paths": {p.name: c.tolist() for p, c in zip(paths, projected)},
        "start_loss": dict(zip([p.name for p in paths], starts)),
        "end_loss": dict(zip([p.name for p in paths], ends)),
        "outside": [p.name for p, out in zip(paths, blew_up) if out],
        "slices": {"alpha": alphas.tolist(), **{name: v.tolist() for name, v in sliced}},
        "eigen": eigen,
        "samples": len(x),
        "evaluations": loss.evaluations,
        "seconds": round(seconds, 3),
    }
    write(root, result)
    return result


def line_eigen(
    model: Any, names: list[str], shapes: list, end: Any, x: Any, y: Any
) -> dict[str, Any]:
    """The two-parameter model's Hessian at its minimum on these samples (exact: the loss is
    quadratic, its Hessian the same everywhere), its eigenvalues and eigenvectors, and the minimum."""
    import torch

    from experiments.dynamics.instruments import Curvature

    params = {n: end[k : k + 1].float().view(s) for k, (n, s) in enumerate(zip(names, shapes))}
    hessian = Curvature(model, params, x, y).products(torch.eye(2)).double()
    hessian = (hessian + hessian.T) / 2
    values, vectors = torch.linalg.eigh(hessian)
    features = torch.cat([x.flatten(1).double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    minimum = torch.linalg.lstsq(features, y.double().view(len(y), -1)).solution.flatten()
    return {
        "hessian": hessian.tolist(),
        "eigenvalues": values.tolist(),
        "eigenvectors": vectors.T.tolist(),
        "minimum": minimum.tolist(),
    }


def write(root: Path, result: dict[str, Any]) -> None:
    """plane.png, slices.png, landscape.json and the two as TensorBoard images in root/landscape/."""
    import shutil

    from matplotlib.image import imsave
    from torch.utils.tensorboard import SummaryWriter

    from experiments.core.state import write_json
    from experiments.report.figures import image_of, landscape_figure, slices_figure

    folder = root / FOLDER
    if folder.is_dir():
        shutil.rmtree(folder)  # drawn from the runs' files: the new one replaces it whole
    folder.mkdir(parents=True)
    write_json(folder / "landscape.json", result)
    images = {
        "plane": image_of(landscape_figure(result)),
        "slices": image_of(slices_figure(result)),
    }
    with SummaryWriter(log_dir=str(folder)) as writer:
        for name, pixels in images.items():
            imsave(folder / f"{name}.png", pixels)
            writer.add_image(f"landscape/{name}", pixels, 0, dataformats="HWC")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="landscape")
@one_sentence
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "run"):
        raise UserError(
            "run= is required: pass a run or sweep directory trained with dynamics=... (run=outputs/sweeps/<sweep>)."
        )
    result = landscape(
        str(cfg.run),
        cfg.plane,
        cfg.resolution,
        cfg.margin,
        cfg.samples,
        cfg.batch,
        cfg.seed,
        OmegaConf.to_container(cfg.data),
    )
    folder = Path(str(cfg.run)) / FOLDER
    log.info(
        "%d evaluations in %.1f s; pictures: %s, %s\ntensorboard --logdir %s",
        result["evaluations"],
        result["seconds"],
        folder / "plane.png",
        folder / "slices.png",
        folder,
    )


if __name__ == "__main__":
    run_cli(main, "landscape")
