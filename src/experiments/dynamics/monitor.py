"""The instruments as a Lightning callback: every `every_n_steps` optimizer steps, for each run a
fit serves (one, or a population's K), the tiers' numbers at that step logged as `dynamics/...`
scalars (totals, and per layer as `dynamics/<name>/<parameter>`) to the run's loggers, summarised
in its metrics.json, and its weights kept in `weights_path.pt` for experiments.landscape.

Lightning's `grad_norm` gives the gradients' norms of one model; Cockpit a full panel for one
model through BackPACK. This gives both kinds of numbers for every run of a population, each
computed from that run's own weights, gradients and batch as its single run computes them."""

from __future__ import annotations

import io
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from experiments.core.state import DynamicsRecord, write_atomically
from experiments.dynamics import instruments

TIERS = ("basic", "noise", "curvature")
WEIGHTS_PATH = "weights_path.pt"  # the weights at each measured step, for experiments.landscape
MAX_POINTS = (
    100  # kept in weights_path.pt: past it, every other point goes and the interval doubles
)


class DynamicsMonitor(pl.Callback):
    """`tiers` of instruments every `every_n_steps` steps (experiments.dynamics.instruments):
    basic always; noise from per-sample gradients of the first `noise_samples` of the step's
    batch; curvature (`lanczos_steps`, `trace_samples`) of the loss on the step's batch."""

    def __init__(
        self,
        runs: Any,
        tiers: list[str],
        every_n_steps: int = 25,
        noise_samples: int = 32,
        lanczos_steps: int = 20,
        trace_samples: int = 16,
        histograms: bool = False,
    ) -> None:
        self.runs = runs
        self.tiers = list(tiers)
        self.every = int(every_n_steps)
        self.noise_samples = int(noise_samples)
        self.lanczos_steps = int(lanczos_steps)
        self.trace_samples = int(trace_samples)
        self.histograms = histograms
        self.batch: Any = None
        self.pending: dict[int, tuple[dict[str, float], dict[str, Tensor]]] = {}
        self.initial: list[dict[str, Tensor]] = []
        self.paths: list[dict[str, Any]] = []

    def running(self) -> list[int]:
        return [i for i, s in enumerate(self.runs.states) if s.status == "running"]

    # -- the start: each run's initial weights, kept or carried from the run it resumes -----------

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = self.runs.parameters(pl_module)
        self.paths, self.initial = [], []
        for state, params in zip(self.runs.states, now):
            earlier = (
                read_weights_path(state.run_dir / WEIGHTS_PATH) if state.info.resumed else None
            )
            if earlier is None:
                earlier = new_path(params)
            self.paths.append(earlier)
            initial = unflatten(earlier["initial"].to(pl_module.device), earlier["shapes"])
            self.initial.append(dict(zip(earlier["names"], initial)))
        for i in range(len(self.runs.states)):
            for logger in self.runs.loggers[i]:
                writer = getattr(logger, "experiment", None)
                if hasattr(writer, "add_custom_scalars"):
                    writer.add_custom_scalars(layout(self.tiers))

    # -- a measured step: the batch, the gradients before the step, the update after it -----------

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batch = batch if trainer.global_step % self.every == 0 else None

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if self.batch is None:
            return
        inputs, targets = self.batch
        step = trainer.global_step
        params, gradients = self.runs.parameters(pl_module), self.runs.gradients(pl_module)
        for i in self.running():
            values: dict[str, float] = {}
            if "noise" in self.tiers and min(len(targets), self.noise_samples) >= 2:
                n = min(len(targets), self.noise_samples)
                model = self.runs.model(i, pl_module)
                samples = instruments.per_sample_gradients(
                    model, params[i], inputs[:n], targets[:n]
                )
                values |= flatten_names(instruments.noise(samples))
            if "curvature" in self.tiers:
                values |= self.curvature(i, pl_module, params[i], inputs, targets, step)
            grad_norms = instruments.norms(gradients[i])
            values |= flatten_names({"grad_norm": grad_norms})
            self.pending[i] = (values, {n: p.clone() for n, p in params[i].items()})
            if self.histograms:
                self.histogram(i, "gradients", gradients[i], step)

    def curvature(
        self,
        i: int,
        pl_module: pl.LightningModule,
        params: dict[str, Tensor],
        inputs: Tensor,
        targets: Tensor,
        step: int,
    ) -> dict[str, float]:
        generator = torch.Generator().manual_seed(
            step
        )  # its own: training's random state untouched
        hessian = instruments.Curvature(self.runs.model(i, pl_module), params, inputs, targets)
        names = ["", *hessian.names]
        tops = hessian.top_eigenvalues(self.lanczos_steps, generator)
        traces = hessian.traces(self.trace_samples, generator)
        values = flatten_names(
            {
                "hessian_top_eigenvalue": dict(zip(names, tops)),
                "hessian_trace": dict(zip(names, traces)),
            }
        )
        threshold = instruments.stability_threshold(self.runs.optimizer(i, pl_module.trainer))
        if threshold is not None:
            values["dynamics/stability_threshold"] = threshold
        return values

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.pending:
            return
        step = trainer.global_step - 1  # the step measured, as it was counted before it was taken
        after = self.runs.parameters(pl_module)
        for i, (values, before) in self.pending.items():
            grad_norms = {"": values["dynamics/grad_norm"]} | {
                name: values[f"dynamics/grad_norm/{name}"] for name in before
            }
            basic = instruments.basic(before, after[i], grad_norms, self.initial[i])
            values = values | flatten_names(basic)
            self.emit(i, values, step)
            if self.histograms:
                self.histogram(i, "weights", before, step)
            self.record_point(i, step, before)
        self.pending = {}

    # -- where the numbers go ----------------------------------------------------------------------

    def emit(self, i: int, values: dict[str, float], step: int) -> None:
        state = self.runs.states[i]
        for name, value in values.items():
            if name.count("/") == 1:  # totals: the summary in metrics.json
                state.dynamics.setdefault(name, DynamicsRecord()).update(value, step)
        for logger in self.runs.loggers[i]:
            logger.log_metrics(values, step)

    def histogram(self, i: int, kind: str, tensors: dict[str, Tensor], step: int) -> None:
        for logger in self.runs.loggers[i]:
            writer = getattr(logger, "experiment", None)
            if hasattr(writer, "add_histogram"):
                for name, tensor in tensors.items():
                    writer.add_histogram(f"dynamics/{kind}/{name}", tensor.detach().cpu(), step)

    def record_point(self, i: int, step: int, weights: dict[str, Tensor]) -> None:
        path = self.paths[i]
        if path["steps"] and step - path["steps"][-1] < path["every"]:
            return
        path["steps"].append(step)
        path["weights"] = torch.cat([path["weights"], flat(weights)[None]])
        if len(path["steps"]) > MAX_POINTS:  # thin out: keep the first and every other one
            keep = list(range(0, len(path["steps"]), 2))
            path["steps"] = [path["steps"][k] for k in keep]
            path["weights"] = path["weights"][keep]
            path["every"] *= 2

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        final = self.runs.parameters(pl_module)
        for i, path in enumerate(self.paths):
            if not path["steps"] or path["steps"][-1] != trainer.global_step:
                path["steps"].append(trainer.global_step)
                path["weights"] = torch.cat([path["weights"], flat(final[i])[None]])
        self.write(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if trainer.state.fn == "fit" and self.paths:
            try:
                self.write(trainer)
            except OSError:  # a full disk: the exception on its way says so
                pass

    def write(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        for state, path in zip(self.runs.states, self.paths):
            buffer = io.BytesIO()
            torch.save({**path, "weights": path["weights"].cpu()}, buffer)
            write_atomically(state.run_dir / WEIGHTS_PATH, buffer.getvalue())


def flatten_names(values: dict[str, dict[str, float]]) -> dict[str, float]:
    """{"grad_norm": {"": total, "net.1.weight": v}} -> dynamics/grad_norm, dynamics/grad_norm/net.1.weight."""
    return {
        f"dynamics/{kind}/{name}" if name else f"dynamics/{kind}": value
        for kind, each in values.items()
        for name, value in each.items()
    }


def flat(params: dict[str, Tensor]) -> Tensor:
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in params.values()])


def new_path(params: dict[str, Tensor]) -> dict[str, Any]:
    return {
        "names": list(params),
        "shapes": [list(p.shape) for p in params.values()],
        "steps": [],
        "weights": torch.empty(0, sum(p.numel() for p in params.values())),
        "every": 1,
        "initial": flat(params),
    }


def read_weights_path(path: Any) -> dict[str, Any] | None:
    try:
        return torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None


def unflatten(vector: Tensor, shapes: list[list[int]]) -> list[Tensor]:
    out, offset = [], 0
    for shape in shapes:
        n = int(torch.Size(shape).numel())
        out.append(vector[offset : offset + n].view(shape))
        offset += n
    return out


def layout(tiers: list[str]) -> dict[str, Any]:
    """TensorBoard's custom-scalars layout of a run's instruments: each total on a chart of its
    own, and the sharpness beside the stability threshold 2 / lr on one."""
    names = ["grad_norm", "update_norm", "update_ratio", "effective_lr", "distance"]
    charts = {}
    if "curvature" in tiers:
        charts["sharpness and 2 / lr"] = [
            "Multiline",
            [r"^dynamics/hessian_top_eigenvalue$", r"^dynamics/stability_threshold$"],
        ]
        names = ["hessian_trace", *names]
    if "noise" in tiers:
        names += ["grad_snr", "norm_test", "noise_scale"]
    charts |= {name: ["Multiline", [rf"^dynamics/{name}$"]] for name in names}
    return {"dynamics": charts}
