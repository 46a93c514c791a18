"""Check the gradient: `python -m experiments.gradcheck experiment=...`, tutorial 002's first lesson.

At the model's initial weights and on the first training batch, autograd's gradient of the loss
against the central finite difference (L(w + h) - L(w - h)) / 2h, in float64 as
torch.autograd.gradcheck takes it, and for a line against the derivative tutorial 002 works out by
hand: dL/dw = mean(2 (w x + b - t) x), dL/db = mean(2 (w x + b - t)). Every coordinate of a small
model is compared, a seeded sample of a larger one's. A relative difference above
`gradcheck.tolerance` exits with 1.

The relative difference of a coordinate is |a - b| / max(|a|, |b|, 1e-3 * g), g the largest
gradient compared: a coordinate whose gradient is a thousandth of the largest, or less, is
compared on that scale, so the finite difference's rounding near zero counts for nothing.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from experiments.cli import one_sentence, run_cli
from experiments.core.config import CONF_DIR, UserError, register_resolvers

register_resolvers()  # conf/ resolves ${job_dir:...} and its siblings

log = logging.getLogger("experiments")


def line_gradient(model: Any, x: Any, y: Any) -> list[Any] | None:
    """The hand-derived gradient of a line's mean squared error, or None for another model."""
    import torch

    from experiments.models.linear import LinearRegression

    if not isinstance(model, LinearRegression):
        return None
    inputs = x.flatten(1)
    residual = model(inputs) - y  # N x out
    scale = 2.0 / residual.numel()
    with torch.no_grad():
        return [scale * residual.T @ inputs, scale * residual.sum(0)]  # dL/dW, dL/db


def check_gradient(
    model: Any, batch: tuple[Any, Any], eps: float = 1e-6, coordinates: int = 48, seed: int = 0
) -> dict[str, Any]:
    """Autograd against finite differences (and the hand-derived line gradient) for `model`'s loss
    on `batch`, in float64; the rows compared and the largest relative difference."""
    import torch

    model = copy.deepcopy(model).double()
    x, y = batch
    x = x.double()
    y = y.double() if y.is_floating_point() else y
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    loss = model.loss(model(x), y)
    autograd = torch.autograd.grad(loss, [p for _, p in named])
    analytic = line_gradient(model, x, y)
    everything = [(i, index) for i, (_, p) in enumerate(named) for index in range(p.numel())]
    if len(everything) > coordinates:
        picked = (
            torch.randperm(len(everything), generator=torch.Generator().manual_seed(seed))[
                :coordinates
            ]
            .sort()
            .values
        )
        everything = [everything[k] for k in picked.tolist()]
    rows = []
    with torch.no_grad():
        for i, index in everything:
            name, parameter = named[i]
            flat = parameter.view(-1)
            kept = flat[index].item()
            flat[index] = kept + eps
            above = model.loss(model(x), y).item()
            flat[index] = kept - eps
            below = model.loss(model(x), y).item()
            flat[index] = kept
            position = (
                tuple(int(v) for v in torch.unravel_index(torch.tensor(index), parameter.shape))
                if parameter.dim()
                else ()
            )
            rows.append(
                {
                    "coordinate": f"{name}[{', '.join(map(str, position))}]",
                    "autograd": autograd[i].reshape(-1)[index].item(),
                    "finite_difference": (above - below) / (2 * eps),
                    "analytic": None if analytic is None else analytic[i].reshape(-1)[index].item(),
                }
            )
    scale = 1e-3 * max((abs(r["autograd"]) for r in rows), default=0.0)
    for row in rows:
        others = [
            v for k, v in row.items() if k in ("finite_difference", "analytic") and v is not None
        ]
        row["relative_difference"] = max(
            abs(row["autograd"] - v) / max(abs(row["autograd"]), abs(v), scale, 1e-300)
            for v in others
        )
    worst = max(rows, key=lambda r: r["relative_difference"])
    return {
        "loss": loss.item(),
        "rows": rows,
        "largest_relative_difference": worst["relative_difference"],
        "worst": worst["coordinate"],
        "parameters": sum(p.numel() for _, p in named),
    }


def print_report(result: dict[str, Any], tolerance: float) -> None:
    from rich.console import Console
    from rich.table import Table

    analytic = any(r["analytic"] is not None for r in result["rows"])
    title = f"loss {result['loss']:.6g} at the initial weights, first batch; {len(result['rows'])} of {result['parameters']} coordinates"
    table = Table(title=title, title_justify="left")
    for column in (
        "coordinate",
        "autograd",
        "finite difference",
        *(["by hand"] if analytic else []),
        "relative difference",
    ):
        table.add_column(column, justify="left" if column == "coordinate" else "right")
    for row in result["rows"]:
        cells = [row["coordinate"], f"{row['autograd']:.9g}", f"{row['finite_difference']:.9g}"]
        if analytic:
            cells.append(f"{row['analytic']:.9g}")
        table.add_row(
            *cells,
            f"{row['relative_difference']:.2e}",
            style="red" if row["relative_difference"] > tolerance else None,
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    print(
        f"largest relative difference: {result['largest_relative_difference']:.2e} at {result['worst']} (tolerance {tolerance:g})"
    )


def gradient_check_of(cfg: DictConfig) -> dict[str, Any]:
    """The check for the configured experiment: its model at its initial weights, its first batch."""
    from experiments.core.config import check_positive, check_positive_int
    from experiments.core.quiet import quiet_lightning

    check_positive("gradcheck.eps", cfg.gradcheck.eps)
    check_positive("gradcheck.tolerance", cfg.gradcheck.tolerance)
    check_positive_int("gradcheck.coordinates", cfg.gradcheck.coordinates)
    from experiments.core.domains import check_config

    check_config(cfg, only="gradcheck.")
    quiet_lightning()
    import lightning.pytorch as pl

    from experiments.build import build

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model = build(cfg)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    return check_gradient(model, batch, cfg.gradcheck.eps, cfg.gradcheck.coordinates, cfg.seed)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="gradcheck")
@one_sentence
def main(cfg: DictConfig) -> None:
    """Its mistakes, and a gradient beyond the tolerance, end as one sentence (experiments.cli)."""
    result = gradient_check_of(cfg)
    tolerance = cfg.gradcheck.tolerance
    print_report(result, tolerance)
    worst = result["largest_relative_difference"]
    if not worst <= tolerance or not math.isfinite(worst):
        raise UserError(
            f"autograd and the finite differences disagree by {worst:.2e} (relative) at {result['worst']}, "
            f"beyond gradcheck.tolerance={tolerance:g}."
        )


if __name__ == "__main__":
    run_cli(main, "gradcheck")
