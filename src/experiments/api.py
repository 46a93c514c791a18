"""Experiments from Python and Jupyter, with the command line's guarantees:

    from experiments import api

    run = api.train("experiment=thermometer")          # python -m experiments.train experiment=thermometer
    run.status, run.best, run.test, run.parameters      # from its metrics.json
    run.history                                         # every logged scalar: a pandas DataFrame
    sweep = api.sweep("experiment=thermometer", "optimizer=sgd,adam", "seed=0,1,2")
    sweep.configurations                                # mean, std, 95% CI per configuration
    api.load("outputs/runs/<time>")                     # a Run or Sweep the command line wrote
    api.landscape(sweep.sweep_dir)                      # python -m experiments.landscape run=...

`train` and `sweep` run the command line's own Hydra entry point in this process: the same
composition (experiments, presets, `hydra.searchpath`, `resume=`), the same run or sweep directory
with `.hydra/` and `train.log`, the same ownership lock and checks. A mistake raises
`experiments.UserError` with the command line's sentence and leaves nothing behind. The caller's
`sys.argv` (a Jupyter kernel's included), working directory, logging and warnings filters are
as they were afterwards.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.core.config import UserError


def literal(value: Any) -> str:
    """A Python value as one override value: True -> true, None -> null, [1, 2] -> [1,2], and a
    string as it is, quoted where Hydra would read more into it ('/data/a b,c' is one path)."""
    from experiments.core.overrides import quote_value

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(literal(v) for v in value) + "]"
    if isinstance(value, str) and not re.fullmatch(r"[\w.+\-/:@]+", value, re.ASCII):
        return quote_value(value)
    return str(value)


def arguments(overrides: tuple[str, ...], options: dict[str, Any]) -> list[str]:
    """The command line of overrides and keywords (`optimizer__lr=0.01` is `optimizer.lr=0.01`);
    a key given both ways is refused rather than one of them silently winning."""
    from experiments.core.overrides import key_of

    for override in overrides:
        if not isinstance(override, str):
            raise UserError(
                f"overrides are strings such as 'optimizer=adam', got {override!r}; give settings with dots as keywords of their own, as optimizer__lr=0.01 for optimizer.lr."
            )
    given = {key_of(o): o for o in overrides if "=" in o}
    for name, value in options.items():
        key = name.replace("__", ".")
        if key in given:
            raise UserError(
                f"{key} is given twice, as {given[key]!r} and as the keyword {name}={value!r}; give it once."
            )
    return [*overrides, *(f"{k.replace('__', '.')}={literal(v)}" for k, v in options.items())]


def swept(args: list[str]) -> str | None:
    """The first override that gives a key several values (a sweep), as Hydra's parser reads it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from experiments.core.overrides import overrides_of, quote_paths

    try:  # paths (resume=, ckpt_path=) are one value, as the command line reads them
        parsed = OverridesParser.create().parse_overrides(quote_paths(overrides_of(args)))
    except Exception:  # a mistake of grammar: the entry point's sentence names it
        return None
    return next((o.input_line for o in parsed if o.is_sweep_override()), None)


def entry(args: list[str]) -> Path:
    """Run `python -m experiments.train ARGS` in this process; the run or sweep directory. The
    directories it locked are given up when it ends, as the command line's process would."""
    from experiments import hydra_callbacks
    from experiments.cli import in_process
    from experiments.train import main

    hydra_callbacks.CLAIMED.clear()
    code = in_process(main, "train", args)
    if isinstance(code, str):  # a mistake, as the command line prints it
        raise UserError(code.removeprefix("error: ").strip())
    if code in (130, 143):  # Ctrl-C, SIGTERM: the command line's exit codes
        raise KeyboardInterrupt
    if not hydra_callbacks.CLAIMED:
        raise UserError(
            f"{' '.join(args)} runs nothing (--help, --cfg and --info print and stop); use the command line for them."
        )
    return hydra_callbacks.CLAIMED[-1]


def train(*overrides: str, **options: Any) -> Run:
    """Train one run, as `python -m experiments.train OVERRIDES` does; keywords are overrides too
    (`optimizer__lr=0.01` is `optimizer.lr=0.01`). Returns the Run, whatever its status; a
    mistake raises experiments.UserError with the command line's sentence."""
    from experiments.cli import asks_for_multirun
    from experiments.core.overrides import key_of, one_value

    args = arguments(overrides, options)
    if asks_for_multirun(args) or any(
        a.replace(" ", "").startswith("sweep=") and not a.endswith("=null") for a in args
    ):
        raise UserError(
            "experiments.api.train runs one configuration; give a sweep to experiments.api.sweep."
        )
    if (several := swept(args)) is not None:
        advice = one_value(several)
        raise UserError(
            f"{several} gives {key_of(several)} several {'values' if advice else 'options'}, a sweep: "
            "experiments.api.sweep runs a job for each"
            + (f"; for one value {advice}." if advice else ".")
        )
    return Run(entry(args))


def sweep(
    *overrides: str, launcher: str | None = None, sweeper: str | None = None, **options: Any
) -> Sweep:
    """Run a sweep, as `python -m experiments.train -m OVERRIDES` (or a sweep=... preset) does.
    `launcher` and `sweeper` pick Hydra's (`launcher="vectorized"` is `hydra/launcher=vectorized`;
    `sweeper="optuna"`); other keywords are overrides. Returns the Sweep with its tables and
    pictures."""
    args = arguments(overrides, options)
    args += [
        f"hydra/{group}={name}"
        for group, name in (("launcher", launcher), ("sweeper", sweeper))
        if name
    ]
    if not any(a.replace(" ", "").startswith("sweep=") for a in args):
        args = ["-m", *args]
    return Sweep(entry(args))


def landscape(path: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """`python -m experiments.landscape run=PATH` with its options as keywords (plane="random",
    resolution=41, ...): what its landscape.json holds, and under "pictures" the paths of
    plane.png and slices.png. Its cost is printed before it starts."""
    from experiments.core.rundir import holdings, release_since
    from experiments.landscape import FOLDER
    from experiments.landscape import landscape as draw

    earlier = holdings()
    try:
        result = draw(str(path), say=print, **options)
    finally:
        release_since(earlier)  # the run or sweep is free again once its landscape is drawn
    folder = Path(path) / FOLDER
    return {**result, "pictures": {name: folder / f"{name}.png" for name in ("plane", "slices")}}


def load(path: str | os.PathLike[str]) -> Run | Sweep:
    """A run or a sweep directory that the command line (or this module) wrote."""
    folder = Path(path)
    from experiments.core.state import METRICS

    if (folder / METRICS).is_file():
        return Run(folder)
    if (folder / "multirun.yaml").is_file():
        return Sweep(folder)
    raise UserError(
        f"{folder} holds neither a run (metrics.json) nor a sweep (multirun.yaml); give a folder of outputs/runs/ or outputs/sweeps/."
    )


def image_html(png: bytes, width: int = 480) -> str:
    import base64

    return f'<img width="{width}" src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'


@dataclass
class Run:
    """One run directory: what its metrics.json, event files and checkpoints hold."""

    run_dir: Path

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)

    @property
    def record(self) -> dict[str, Any]:
        """metrics.json, read afresh."""
        from experiments.core.state import read_record

        record = read_record(self.run_dir)
        if record is None:
            raise UserError(
                f"{self.run_dir} holds no readable metrics.json: the run never started here, or was deleted."
            )
        return record

    @property
    def status(self) -> str:
        return self.record["status"]

    @property
    def reason(self) -> str | None:
        return self.record.get("reason")

    @property
    def best(self) -> float | None:
        """The monitored metric's best value (`monitor`, val/loss unless set)."""
        return (self.record.get("monitor") or {}).get("best")

    @property
    def test(self) -> dict[str, float]:
        return self.record.get("test") or {}

    @property
    def parameters(self) -> dict[str, Any] | None:
        """A line's fitted weight and bias (None for other models)."""
        return self.record.get("parameters")

    @property
    def history(self) -> Any:
        """Every logged scalar, one row per step, one column per metric (pandas): from its
        TensorBoard event files, or its metrics.csv with logger=csv."""
        import pandas as pd

        from experiments.report.runs import scalars

        if logged := scalars(self.run_dir):
            frame = pd.DataFrame(logged).sort_index()
            frame.index.name = "step"
            return frame
        raise UserError(
            f"{self.run_dir} holds no logged scalars (no TensorBoard event files, no metrics.csv: it ran with logger=none); "
            "train with logger=tensorboard (the default) or logger=csv to keep a history."
        )

    @property
    def images(self) -> dict[str, bytes]:
        """The run's TensorBoard images (fit/line, test/confusion_matrix, ...) as PNG bytes, the last of each."""
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(self.run_dir), size_guidance={"images": 0})
        events.Reload()
        return {tag: events.Images(tag)[-1].encoded_image_string for tag in events.Tags()["images"]}

    @property
    def checkpoints(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted((self.run_dir / "checkpoints").glob("*.ckpt"))}

    def __repr__(self) -> str:
        return f"Run({str(self.run_dir)!r}, status={self.status!r}, best={self.best!r})"

    def _repr_html_(self) -> str:
        import html

        record = self.record
        rows = {
            "run_dir": str(self.run_dir),
            "status": record["status"] + (f" ({record['reason']})" if record.get("reason") else ""),
            f"best {(record.get('monitor') or {}).get('name')}": self.best,
            **self.test,
            **(self.parameters or {}),
        }
        table = "".join(
            f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
            for k, v in rows.items()
        )
        images = self.images
        main = next((images[t] for t in ("fit/line", "test/confusion_matrix") if t in images), None)
        return f"<table>{table}</table>" + (image_html(main) if main else "")


@dataclass
class Sweep:
    """One sweep directory: its tables (pandas) and pictures."""

    sweep_dir: Path

    def __post_init__(self) -> None:
        self.sweep_dir = Path(self.sweep_dir)

    @property
    def runs(self) -> list[Run]:
        from experiments.core.state import METRICS

        return [Run(p.parent) for p in sorted(self.sweep_dir.glob(f"**/{METRICS}"))]

    def frame(self, which: str) -> Any:
        """A table of the sweep read from its jobs' files now, as its CSV file holds it once the
        sweep ends: a sweep stopped part way (Ctrl-C) has no CSV files but its jobs' tables."""
        import pandas as pd

        from experiments.report.runs import read_sweep
        from experiments.report.tables import configuration_table, csv_text, job_table

        report = read_sweep(self.sweep_dir)
        if not report.rows:
            raise UserError(f"{self.sweep_dir} holds no job that has started training yet.")
        header, body = (
            job_table(report.rows) if which == "runs" else configuration_table(report.configs)
        )
        return pd.read_csv(io.StringIO(csv_text(header, body)))

    @property
    def table(self) -> Any:
        """One row per job, best first (runs.csv)."""
        return self.frame("runs")

    @property
    def configurations(self) -> Any:
        """One row per configuration, its seeds' mean, std and 95% t-interval (summary.csv)."""
        return self.frame("configurations")

    @property
    def comparison(self) -> str | None:
        """sweep=compare's verdict (the last line of comparison.md): on the top two, or why
        there is nothing to compare; None for another sweep, or one that has not ended."""
        path = self.sweep_dir / "comparison.md"
        if not path.is_file():
            return None
        last = path.read_text().strip().splitlines()[-1]
        return None if last.startswith("mean ± ") else last  # an older version's, without one

    @property
    def pairs(self) -> Any:
        """sweep=compare's every pair of tuned optimizers (pairs.csv): the difference of means
        with its 95% interval, P(first better on a seed), Welch's p and Holm's; None for another
        sweep, or one that has not ended."""
        import pandas as pd

        path = self.sweep_dir / "pairs.csv"
        return pd.read_csv(path) if path.is_file() else None

    @property
    def pictures(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted(self.sweep_dir.glob("*.png"))}

    def __repr__(self) -> str:
        return f"Sweep({str(self.sweep_dir)!r}, jobs={len(self.runs)})"

    def _repr_html_(self) -> str:
        import html

        table = self.configurations
        if len(table) == len(self.table):
            table = self.table
        verdict = f"<p>{html.escape(self.comparison)}</p>" if self.comparison else ""
        picture = self.sweep_dir / "summary.png"
        return (
            table.to_html(index=False)
            + verdict
            + (image_html(picture.read_bytes(), 640) if picture.is_file() else "")
        )
