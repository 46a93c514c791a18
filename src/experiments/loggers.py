"""Lightning's loggers, with what a resumed run needs of them."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger


class ResumableCSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, keeping the rows a run wrote before it was resumed: Lightning's own
    deletes metrics.csv when it opens a directory that has one. (A new run never opens such a
    directory: experiments.core.rundir refuses to start a run where another one lives.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        path = Path(self.log_dir) / "metrics.csv"
        self._earlier: list[dict[str, str]] = []
        if path.is_file():
            with path.open(newline="") as earlier:
                self._earlier = list(csv.DictReader(earlier))

    @property
    def experiment(self) -> Any:
        writer = super().experiment
        rows, self._earlier = self._earlier, []
        for row in rows:
            step = row.pop("step", "")
            writer.log_metrics(
                {k: number(v) for k, v in row.items() if v not in ("", None)},
                int(float(step)) if step else None,
            )
        return writer


def number(text: str) -> int | float:
    value = float(text)
    return (
        int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
    )
