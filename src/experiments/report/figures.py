"""The pictures: a fitted line, a confusion matrix, misclassified images, and a sweep's two plots.

Each function returns a matplotlib Figure (or, for the line fits of several runs at once, their
images); `run_images` picks those that suit trained models, as images for TensorBoard. Callers
save the sweep's figures as PNG.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure


def fit_line_figure(
    x: np.ndarray, y: np.ndarray, x_line: np.ndarray, y_line: np.ndarray, title: str = ""
) -> Figure:
    """The data and the fitted line, as tutorial 000 plots y_true against y_pred."""
    fig = Figure(figsize=(5, 3.6), dpi=100)
    ax = fig.add_subplot()
    ax.scatter(x, y, s=12, label="data")
    ax.plot(x_line, y_line, color="tab:red", label="fitted line")
    ax.set_xlabel("input")
    ax.set_ylabel("target")
    ax.set_title(title)
    ax.legend()
    # tight_layout costs more than the drawing
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.14, top=0.9)
    return fig


def image_of(figure: Figure) -> np.ndarray:
    """A figure rendered as an H x W x 3 uint8 image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


LEGEND_LINES = 10  # more lines than this, all of one optimizer: colour by learning rate instead


def lr_colours(lrs: Sequence[float | None], others: Sequence[Any]) -> tuple[list, Any] | None:
    """For many lines that differ only in the learning rate (`others`: everything else that sets
    each line apart, the same for all; seeds may repeat a learning rate): each line's colour on a
    log scale of the learning rate, and what a colorbar needs (a legend of more than ten lines
    repeats its ten colours and hides the plot). None where only a legend tells them apart."""
    if (
        len(lrs) <= LEGEND_LINES
        or any(lr is None for lr in lrs)
        or len(set(lrs)) < 2
        or any(o is None for o in others)
        or len(set(others)) > 1
    ):
        return None
    return lr_scale(lrs)


def lr_scale(lrs: Sequence[float]) -> tuple[list, Any]:
    """Each learning rate's colour on one log scale, and the scale for a colorbar."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LogNorm

    low, high = min(lrs), max(lrs)
    scale = ScalarMappable(LogNorm(low, high if high > low else low * 10), colormaps["plasma"])
    return [scale.to_rgba(lr) for lr in lrs], scale


def fit_line_images(
    x: np.ndarray, y: np.ndarray, x_line: np.ndarray, y_lines: list[np.ndarray], title: str = ""
) -> list[np.ndarray]:
    """fit_line_figure for several fitted lines over the same data, one image each, drawn on the
    same axes: the data, axes and legend are rendered once and each line is blitted onto them, so
    a population of runs pays for one figure, not one each."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = fit_line_figure(x, y, x_line, y_lines[0], title)
    ax = figure.axes[0]
    line = ax.lines[0]
    finite = [values for values in y_lines if np.isfinite(values).all()]
    low = min(float(np.min(y)), *(float(np.min(v)) for v in finite)) if finite else float(np.min(y))
    high = (
        max(float(np.max(y)), *(float(np.max(v)) for v in finite)) if finite else float(np.max(y))
    )
    pad = 0.05 * (high - low or 1.0)
    ax.set_ylim(low - pad, high + pad)
    line.set_animated(True)  # left out of the shared background
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    background = canvas.copy_from_bbox(figure.bbox)
    images = []
    for values in y_lines:
        canvas.restore_region(background)
        line.set_ydata(values)
        ax.draw_artist(line)
        images.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    return images


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str]) -> Figure:
    fig = Figure(figsize=(6, 5.2), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2
    for i in ticks:
        for j in ticks:
            ax.text(
                j,
                i,
                int(matrix[i, j]),
                ha="center",
                va="center",
                fontsize=6,
                color="white" if matrix[i, j] > threshold else "black",
            )
    # fixed margins: tight_layout costs a drawing
    fig.subplots_adjust(left=0.2, right=0.98, bottom=0.2, top=0.97)
    return fig


def misclassified_figure(
    images: np.ndarray,
    targets: Sequence[int],
    predictions: Sequence[int],
    class_names: Sequence[str],
) -> Figure:
    """A grid of test images the model got wrong, each labelled `true -> predicted`.

    One mosaic in one Axes: a subplot per image would cost more than the whole training epoch.
    """
    n = len(images)
    cols = min(8, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    height, width = images.shape[-2:]
    cell_h, cell_w = height + 12, width + 4  # room for the label above each image
    mosaic = np.full((rows * cell_h, cols * cell_w), np.nan)
    for k in range(n):
        r, c = divmod(k, cols)
        mosaic[
            r * cell_h + 10 : r * cell_h + 10 + height, c * cell_w + 2 : c * cell_w + 2 + width
        ] = images[k].reshape(height, width)
    fig = Figure(figsize=(1.3 * cols, 1.45 * rows), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(mosaic, cmap="gray")
    for k in range(n):
        r, c = divmod(k, cols)
        ax.text(
            c * cell_w + cell_w / 2,
            r * cell_h + 5,
            f"{class_names[targets[k]]} -> {class_names[predictions[k]]}",
            ha="center",
            va="center",
            fontsize=6,
            color="black",
        )
    ax.axis("off")
    return fig


def sweep_figure(
    rows: list[dict[str, Any]], metric: str, colours: dict[str, Any] | None = None
) -> Figure:
    """The monitored best against the learning rate, as DeepOBS draws it: per line (an optimizer,
    with any other setting the sweep varied: `line`) each seed as a dot and the mean over its
    finished seeds as a line; diverged jobs as x above the rest, each line's on a row of its own.
    Both axes logarithmic (the value's only where all are positive); the legend outside the axes."""
    seeds: dict[str, list[tuple[float, float]]] = defaultdict(list)
    diverged: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        lr, value, name = row.get("lr"), row.get("best"), row.get("line") or row["optimizer"]
        if lr is None:
            continue
        if row["status"] == "finished" and value is not None and math.isfinite(value):
            seeds[name].append((lr, value))
        elif row["status"] in ("diverged", "failed"):
            diverged[name].append(lr)
    names = sorted(set(seeds) | set(diverged))
    legend = 0.8 + 0.065 * max((len(name) for name in names), default=10)  # inches, size 8
    width = 6 + legend
    fig = Figure(figsize=(width, 4.2), dpi=100)
    ax = fig.add_subplot()
    values = [v for points in seeds.values() for _, v in points]
    positive = bool(values) and min(values) > 0
    high, low = (max(values), min(values)) if values else (1.0, 0.0)
    colours = colours or dict(zip(names, line_colours(len(names))))
    crossed = 0
    for name in names:
        colour = colours.get(name)
        by_lr: dict[float, list[float]] = defaultdict(list)
        for lr, value in seeds[name]:
            by_lr[lr].append(value)
        lrs = sorted(by_lr)
        means = [math.fsum(by_lr[lr]) / len(by_lr[lr]) for lr in lrs]
        line = ax.plot(
            lrs, means, marker="o", markersize=4, label=name, gid=f"mean:{name}", color=colour
        )[0]
        color = line.get_color()
        if any(len(v) > 1 for v in by_lr.values()):
            ax.scatter(*zip(*seeds[name]), s=10, color=color, alpha=0.45, gid=f"seeds:{name}")
        if diverged[name]:
            # a row of crosses per line, so that two lines diverging at one rate stay apart
            top = (
                high * 3 * 1.6**crossed
                if positive
                else high + (0.15 + 0.08 * crossed) * (high - low or 1.0)
            )
            crossed += 1
            ax.scatter(
                diverged[name],
                [top] * len(diverged[name]),
                marker="x",
                color=color,
                gid=f"diverged:{name}",
            )
    ax.set_xscale("log")
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"best {metric}")
    ax.set_title(
        f"best {metric} by learning rate: mean over seeds (dots: seeds, x: diverged)", fontsize=9
    )
    handles, labels = ax.get_legend_handles_labels()
    right = 1 - legend / width
    fig.subplots_adjust(left=0.85 / width, right=right - 0.01, bottom=0.13, top=0.9)
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(right, 0.9), fontsize=8)
    return fig


def colour_map(lines: Sequence[str]) -> dict[str, Any]:
    """One colour per line of a sweep (an optimizer and its other settings besides the learning
    rate and seed: experiments.report.runs.line_names), in name order, for every picture of the
    sweep: a configuration is the same colour in summary.png, curves.png and paths.png."""
    names = sorted(set(lines))
    return dict(zip(names, line_colours(len(names))))


LINE_STYLES = ("-", "--", ":", "-.")  # lines of one colour, apart by learning rate


def styles_by_lr(items: Sequence[dict[str, Any]]) -> list[str]:
    """Each item's line style: the items of one line (`others`) differ by learning rate, smallest
    first solid, then dashed, dotted, dash-dotted."""
    lrs: dict[Any, list] = defaultdict(list)
    for item in items:
        lrs[item.get("others")].append(item.get("lr"))
    order = {
        line: sorted(set(values), key=lambda v: (v is None, v or 0)) for line, values in lrs.items()
    }
    return [
        LINE_STYLES[order[i.get("others")].index(i.get("lr")) % len(LINE_STYLES)] for i in items
    ]


def log_steps(steps: Sequence[int]) -> bool:
    """Whether a curve's steps want a log axis: the last is 30 times the first logged or more
    (the thermometer's 5000 steps logged every 50), so a linear axis would squeeze where most
    happens into its first tenth; ten epochs validated once each stay linear."""
    positive = [s for s in steps if s > 0]
    return bool(positive) and max(positive) >= 30 * min(positive)


def line_colours(n: int) -> list[Any]:
    """n colours that differ: matplotlib's ten, or twenty paired ones past ten lines."""
    from matplotlib import colormaps

    cycle = colormaps["tab10" if n <= 10 else "tab20"].colors
    return [cycle[k % len(cycle)] for k in range(n)]


def lr_rows(configs: list[dict[str, Any]]) -> list[list[int]] | None:
    """More than ten lines that, apart from their learning rate, fall into a few groups (an
    optimizer, with its other settings: `others`): the lines of each group, a row of panels each,
    coloured by learning rate. None where a legend tells them apart."""
    lrs = [c.get("lr") for c in configs]
    if len(configs) <= LEGEND_LINES or any(lr is None for lr in lrs) or len(set(lrs)) < 2:
        return None
    groups: dict[Any, list[int]] = {}
    for k, config in enumerate(configs):
        groups.setdefault(config.get("others"), []).append(k)
    if None in groups or any(len({lrs[k] for k in g}) < len(g) for g in groups.values()):
        return None
    return list(groups.values())


def curves_figure(
    configs: list[dict[str, Any]], tags: Sequence[str], colours: dict[str, Any] | None = None
) -> Figure:
    """Learning curves against step, one panel per tag: per configuration the mean over its
    finished seeds as a line and their min-max as a band (one validation: a point with its range
    as an error bar); each diverged seed as a dashed line up to where it diverged, ending in an x.
    Losses on a log scale. More than ten lines differing in their learning rate: a row of panels
    per optimizer (and its other settings), coloured by learning rate on one scale, with a
    colorbar. `configs`: name and, per tag, the finished seeds' mean, low and high at common
    steps and the diverged seeds' own points."""
    rows = lr_rows(configs)
    by_lr = lr_scale([c["lr"] for c in configs]) if rows else None
    groups = rows or [list(range(len(configs)))]
    if by_lr:
        colours, styles = by_lr[0], ["-"] * len(configs)
    else:
        lines = [str(c.get("others", c["name"])) for c in configs]
        shared = colours or colour_map(lines)
        colours = [shared[line] for line in lines]
        styles = styles_by_lr(configs)
    legend = (
        0.5
        if by_lr
        else 0.6 + 0.065 * max((len(c["name"]) for c in configs), default=10)  # inches, size 7
    )
    fig = Figure(figsize=(5 * len(tags) + legend, 4.2 * len(groups)), dpi=100)
    grid = fig.subplots(len(groups), len(tags), squeeze=False)
    for panels, group in zip(grid, groups):
        for ax, tag in zip(panels, tags):
            for k in group:
                draw_curve(ax, configs[k], tag, colours[k], styles[k])
                threshold = configs[k]["curves"].get("dynamics/stability_threshold")
                if tag == "dynamics/hessian_top_eigenvalue" and threshold:
                    # the finished seeds' mean, or a diverged seed's own values
                    if threshold["steps"]:
                        steps, values = threshold["steps"], threshold["mean"]
                    elif threshold["diverged"]:
                        steps, values = threshold["diverged"][0]
                    else:
                        continue
                    ax.plot(steps, values, "-.", color=colours[k], lw=0.8)
                    ax.annotate(
                        f"2/lr {values[-1]:.3g} ({configs[k]['name']})",
                        (steps[-1], values[-1]),
                        fontsize=6,
                        color=colours[k],
                        ha="right",
                        va="bottom",
                    )
            if "loss" in tag or tag.startswith("dynamics/"):
                ax.set_yscale("log", nonpositive="mask")
            steps = [s for k in group for s in configs[k]["curves"].get(tag, {}).get("steps", [])]
            if log_steps(steps):
                ax.set_xscale("log", nonpositive="mask")
            ax.set_xlabel("step")
            title = f"{configs[group[0]].get('others')}: {tag}" if rows else tag
            ax.set_title(title, fontsize=10)
    axes = [ax for panels in grid for ax in panels]
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    dotted = any(t == "dynamics/hessian_top_eigenvalue" for t in tags)
    fig.suptitle(
        "mean over seeds, band: min to max, dashed to x: a diverged seed"
        + (
            ", dash-dot: 2 / lr, the sharpness where plain gradient descent turns unstable"
            if dotted
            else ""
        ),
        fontsize=9,
    )
    width = 5 * len(tags) + legend
    right = 1 - legend / width
    top = 1 - 0.6 / (4.2 * len(groups))
    bottom = 0.55 / (4.2 * len(groups))
    fig.subplots_adjust(
        left=0.75 / width, right=right - 0.02, bottom=bottom, top=top, wspace=0.25, hspace=0.35
    )
    if by_lr:
        bar = fig.colorbar(by_lr[1], ax=axes, fraction=0.04, pad=0.02)
        bar.set_label(f"learning rate ({len(configs)} lines)")
    else:
        fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(right, top), fontsize=7)
    return fig


def draw_curve(ax: Any, config: dict[str, Any], tag: str, colour: Any, style: str = "-") -> None:
    curve = config["curves"].get(tag)
    if not curve:
        return
    name = config["name"]
    if len(curve["steps"]) == 1:  # one validation: a band would be a hairline
        line = ax.plot(
            curve["steps"], curve["mean"], marker="o", label=name, gid=f"mean:{name}", color=colour
        )[0]
        if len(curve["runs"]) > 1:
            below, above = curve["mean"][0] - curve["low"][0], curve["high"][0] - curve["mean"][0]
            ax.errorbar(
                curve["steps"], curve["mean"], yerr=[[below], [above]], color=colour, capsize=4
            )
    else:
        line = ax.plot(
            curve["steps"],
            curve["mean"],
            label=name,
            gid=f"mean:{name}",
            color=colour,
            linestyle=style,
        )[0]
        if len(curve["runs"]) > 1:
            ax.fill_between(
                curve["steps"], curve["low"], curve["high"], color=line.get_color(), alpha=0.2
            )
    for steps, values in curve["diverged"]:
        ax.plot(steps, values, linestyle="--", linewidth=0.8, color=line.get_color())
        if steps:
            ax.scatter(steps[-1:], values[-1:], marker="x", color=line.get_color())


def paths_figure(
    trajectories: list[dict[str, Any]], colours: dict[str, Any] | None = None
) -> Figure:
    """The MSE loss surface over (w, b) as contours, and each job's path on it, one panel per optimizer."""
    x = np.asarray(trajectories[0]["x"], dtype=float)
    y = np.asarray(trajectories[0]["y"], dtype=float)
    w_opt, b_opt = np.polyfit(x, y, 1)
    # The view covers the runs that converged; a diverged path is drawn up to where it leaves it.
    framing = [t for t in trajectories if t["status"] == "finished"] or trajectories
    finite = [
        (w, b)
        for t in framing
        for w, b in zip(t["w"], t["b"])
        if math.isfinite(w) and math.isfinite(b)
    ]
    ws, bs = np.array([p[0] for p in finite] + [w_opt]), np.array([p[1] for p in finite] + [b_opt])
    w_span = max(ws.max() - ws.min(), 1e-3) * 0.15
    b_span = max(bs.max() - bs.min(), 1e-3) * 0.15
    w_lim = (min(ws.min(), w_opt) - w_span, max(ws.max(), w_opt) + w_span)
    b_lim = (min(bs.min(), b_opt) - b_span, max(bs.max(), b_opt) + b_span)
    grid_w, grid_b = np.meshgrid(np.linspace(*w_lim, 200), np.linspace(*b_lim, 200))
    # the MSE is quadratic in (w, b): its least-squares value plus the offset's quadratic form,
    # exact and without a pass over the points per grid node (40000 x 500 for the default data)
    dw, db = grid_w - w_opt, grid_b - b_opt
    least = float(((w_opt * x + b_opt - y) ** 2).mean())
    x_mean, x_square = float(x.mean()), float((x * x).mean())
    loss = least + x_square * dw**2 + 2 * x_mean * dw * db + db**2

    colours = colours or colour_map([str(t.get("others")) for t in trajectories])
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in trajectories:
        groups[t["optimizer"]].append(t)
    names = sorted(groups)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.6 * rows), dpi=100)
    for k, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, k + 1)
        paths = sorted(groups[name], key=lambda t: (t.get("lr") or 0, t.get("seed") or 0))
        # what tells a panel's paths apart besides the learning rate: another setting swept
        # (the line's name past its optimizer), then the seed
        settings = {str(t.get("others") or "").removeprefix(name).strip() for t in paths}
        repeated = Counter((t.get("lr"), str(t.get("others"))) for t in paths)
        by_lr = lr_colours([t.get("lr") for t in paths], [t.get("others") for t in paths])
        styles = styles_by_lr(paths)
        ax.contour(
            grid_w,
            grid_b,
            np.log10(loss + 1e-12),
            levels=25,
            cmap="Greys" if by_lr else "viridis",  # grey under paths coloured by learning rate
            linewidths=0.6,
        )
        for j, t in enumerate(paths):
            w, b = np.asarray(t["w"], dtype=float), np.asarray(t["b"], dtype=float)
            inside = (w >= w_lim[0]) & (w <= w_lim[1]) & (b >= b_lim[0]) & (b <= b_lim[1])
            # up to the first point outside
            end = len(w) if inside.all() else int(np.argmin(inside)) + 1
            w, b = np.clip(w[:end], *w_lim), np.clip(b[:end], *b_lim)
            label = f"lr={t['lr']:g}" if t.get("lr") is not None else t["name"]
            if len(settings) > 1 and isinstance(t.get("others"), str):
                label += f", {t['others'].removeprefix(name).strip() or name}"
            if repeated[(t.get("lr"), str(t.get("others")))] > 1 and t.get("seed") is not None:
                label += f", seed {t['seed']}"
            diverged = t["status"] == "diverged"
            ax.plot(
                w,
                b,
                linewidth=1.2,
                label=label + (" (diverged)" if diverged else ""),
                color=by_lr[0][j] if by_lr else colours.get(str(t.get("others"))),
                linestyle=("--" if diverged else "-") if by_lr else styles[j],
                gid=f"path:{t['name']}",
            )
        ax.plot([w_opt], [b_opt], marker="*", color="black", markersize=9)
        ax.set_xlim(*w_lim)
        ax.set_ylim(*b_lim)
        ax.set_title(name)
        ax.set_xlabel("w")
        ax.set_ylabel("b")
        if by_lr:
            bar = fig.colorbar(by_lr[1], ax=ax, fraction=0.06, pad=0.02)
            bar.set_label(f"learning rate ({len(paths)} paths; dashed: diverged)", fontsize=7)
        else:
            ax.legend(fontsize=7)
    fig.suptitle(
        "paths over the loss surface (contours: log10 MSE, star: least squares)",
        fontsize=10 if cols > 1 else 8,
    )
    fig.tight_layout()
    return fig


def run_images(
    models: list[Any], datamodule: Any, stage: str, max_misclassified: int = 32
) -> list[dict[str, np.ndarray]]:
    """Each trained model's pictures, as images. After fitting ("fit"): the data and fitted line
    of a one-input regression. After testing ("test"): a classifier's confusion matrix and a grid
    of the test images it got wrong."""
    import torch

    images: list[dict[str, np.ndarray]] = [{} for _ in models]
    if not models:
        return images
    dtype = next(models[0].parameters()).dtype  # float64 with trainer.precision=64-true
    with torch.no_grad():
        if stage == "fit" and models[0].task == "regression":
            x, y = datamodule.splits["train"]
            if x.shape[1:] == (1,) and y.shape[1:] == (1,):
                line = torch.linspace(
                    x.min().item(), x.max().item(), 50, device=x.device
                ).unsqueeze(1)
                fitted = [model(line.to(dtype)).float().cpu().numpy() for model in models]
                drawn = fit_line_images(
                    x.cpu().numpy(),
                    y.cpu().numpy(),
                    line.cpu().numpy(),
                    fitted,
                    "training data and fitted line",
                )
                for own, image in zip(images, drawn):
                    own["fit/line"] = image
        if stage == "test" and models[0].task == "classification":
            from torchmetrics.functional.classification import multiclass_confusion_matrix

            x, y = datamodule.splits["test"]
            names = datamodule.class_names
            for own, model in zip(images, models):
                predictions = torch.cat(
                    [model(chunk.to(dtype)).argmax(1) for chunk in x.split(4096)]
                )
                matrix = (
                    multiclass_confusion_matrix(predictions, y, num_classes=len(names))
                    .cpu()
                    .numpy()
                )
                own["test/confusion_matrix"] = image_of(confusion_matrix_figure(matrix, names))
                wrong = (predictions != y).nonzero().flatten()[:max_misclassified]
                if len(wrong):
                    pictures = datamodule.denormalise(x[wrong]).cpu().numpy()
                    own["test/misclassified"] = image_of(
                        misclassified_figure(
                            pictures, y[wrong].tolist(), predictions[wrong].tolist(), names
                        )
                    )
    return images


def landscape_figure(result: dict[str, Any]) -> Figure:
    """The loss over a plane through the weights (experiments.landscape), log-scaled contours,
    with each run's path from its start (o) to its end (x); for a two-parameter model, the
    Hessian's eigen-directions at the minimum, each labelled with its eigenvalue."""
    a, b = np.asarray(result["a"]), np.asarray(result["b"])
    loss = np.asarray(result["loss"], dtype=float)
    fig = Figure(figsize=(7.5, 6), dpi=100)
    ax = fig.add_subplot()
    finite = loss[np.isfinite(loss) & (loss > 0)]
    shown = np.log10(np.clip(loss, finite.min() if finite.size else 1e-12, None))
    filled = ax.contourf(a, b, shown, levels=30, cmap="viridis")
    ax.contour(a, b, shown, levels=12, colors="white", linewidths=0.4, alpha=0.5)
    fig.colorbar(filled, ax=ax).set_label("log10 loss")
    colours = line_colours(len(result["paths"]))
    for colour, (name, points) in zip(colours, result["paths"].items()):
        points = np.asarray(points)
        ax.plot(points[:, 0], points[:, 1], "-", color=colour, lw=1.2, label=name)
        ax.plot(*points[0], "o", color=colour, ms=5)
        ax.plot(*points[-1], "x", color=colour, ms=7, mew=2)
    eigen = result.get("eigen")
    if eigen:
        centre = np.asarray(eigen["minimum"])
        reach = 0.3 * min(a[-1] - a[0], b[-1] - b[0])
        for value, vector in zip(eigen["eigenvalues"], eigen["eigenvectors"]):
            tip = centre + reach * np.asarray(vector)
            ax.annotate(
                "", tip, centre, arrowprops={"arrowstyle": "->", "color": "white", "lw": 1.5}
            )
            ax.annotate(f"λ = {value:.3g}", tip, color="white", fontsize=8)
    ax.set_xlim(a[0], a[-1])
    ax.set_ylim(b[0], b[-1])
    ax.set_xlabel(result["axes"][0])
    ax.set_ylabel(result["axes"][1])
    ax.set_title(
        f"loss on {result['samples']} training samples, {result['plane']} plane "
        f"({result['evaluations']} evaluations); o start, x end"
        + (
            f"\n{len(result['outside'])} run(s) that blew up (end loss > 10x start) frame nothing"
            if result.get("outside")
            else ""
        ),
        fontsize=9,
    )
    if len(result["paths"]) <= LEGEND_LINES:
        ax.legend(fontsize=7, loc="upper right")
    fig.subplots_adjust(left=0.11, right=0.98, bottom=0.09, top=0.93)
    return fig


def slices_figure(result: dict[str, Any]) -> Figure:
    """The loss along straight lines through the weights: each run's start (0) to its end (1),
    and between two runs' ends, a quarter beyond each."""
    slices = dict(result["slices"])
    alpha = np.asarray(slices.pop("alpha"))
    fig = Figure(figsize=(7.5, 4.5), dpi=100)
    ax = fig.add_subplot()
    for colour, (name, values) in zip(line_colours(len(slices)), slices.items()):
        ax.plot(alpha, np.asarray(values, dtype=float), color=colour, label=name)
    for at, text in ((0.0, "start"), (1.0, "end")):
        ax.axvline(at, color="grey", lw=0.6, ls=":")
        ax.text(
            at, 1.0, text, transform=ax.get_xaxis_transform(), fontsize=8, ha="center", va="bottom"
        )
    ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel("alpha: weights = start + alpha (end - start); for 'A to B', from A's end to B's")
    ax.set_ylabel("training loss")
    if len(slices) <= LEGEND_LINES + 1:
        ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.11, right=0.98, bottom=0.12, top=0.92)
    return fig


def tuning_figure(
    curves: list[dict[str, Any]],
    metric: str,
    defaults: dict[str, float] | None = None,
    colours: dict[str, Any] | None = None,
) -> Figure:
    """A comparison's tuning curves: per optimizer the expected best after n of its grid points
    tried at random, the mean over the studies as a line and their range as a band, and its mean
    at its defaults (the baseline) as a dotted level in the same colour."""
    names = [c["optimizer"] or "(configured)" for c in curves]
    legend = 0.8 + 0.065 * max((len(n) for n in names), default=10)
    width = 6 + legend
    fig = Figure(figsize=(width, 4.2), dpi=100)
    ax = fig.add_subplot()
    colours = colours or {}
    fallback = dict(zip(names, line_colours(len(names))))
    values = []
    for curve, name in zip(curves, names):
        colour = colours.get(name, fallback[name])
        shown = [
            (n, m, lo, hi)
            for n, m, lo, hi in zip(curve["points"], curve["mean"], curve["low"], curve["high"])
            if m is not None
        ]
        if shown:
            n, mean, low, high = (list(v) for v in zip(*shown))
            ax.plot(
                n, mean, marker="o", markersize=3, color=colour, label=name, gid=f"tuning:{name}"
            )
            if low != high:
                ax.fill_between(n, low, high, color=colour, alpha=0.2, linewidth=0)
            values += low + high
        level = (defaults or {}).get(curve["optimizer"])
        if level is not None and math.isfinite(level):
            ax.axhline(level, color=colour, linestyle=":", linewidth=1.2, gid=f"default:{name}")
            values.append(level)
    if values and min(values) > 0 and max(values) >= 10 * min(values):  # losses spanning decades
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("grid points tried (at random, without replacement)")
    ax.set_ylabel(f"expected best {metric}")
    ax.set_title(
        "tuning curve: line, mean over studies; band, their range; dotted, at the defaults",
        fontsize=9,
    )
    handles, labels = ax.get_legend_handles_labels()
    right = 1 - legend / width
    fig.subplots_adjust(left=0.85 / width, right=right - 0.01, bottom=0.13, top=0.9)
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(right, 0.9), fontsize=8)
    return fig
