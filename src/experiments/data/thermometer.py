"""Tutorial 002's thermometer: 11 readings in unknown units (t_u) against the Celsius values (t_c)."""

from __future__ import annotations

import torch
from torch import Tensor

from experiments.core.config import UserError, check_fraction
from experiments.data.batching import Split, TensorDataModule, seeded_split

T_C = [0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0]
T_U = [35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4]


class ThermometerDataModule(TensorDataModule):
    """Inputs are t_u * input_scale, targets t_c.

    With `fit_all_readings` the model is fitted to all 11 readings, as the tutorial's 5000-epoch loop
    does, and validation and test score that fit on the same readings. Otherwise a seeded
    n_val = int(val_fraction * 11) readings are held out, as in the tutorial's split, and serve as both
    validation and test set (11 readings leave no room for a third set).
    """

    task = "regression"
    input_shape = (1,)
    num_outputs = 1

    def __init__(
        self,
        input_scale: float | None = 0.1,
        val_fraction: float = 0.2,
        fit_all_readings: bool = False,
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size, eval_batch_size, seed)
        check_fraction("data.val_fraction", val_fraction)
        if input_scale is not None and not input_scale > 0:
            raise UserError(
                f"data.input_scale must be a positive number or null (raw readings), got {input_scale!r}."
            )
        self.save_hyperparameters()
        self.n_val = int(val_fraction * len(T_C))
        if not 1 <= self.n_val < len(T_C):
            raise UserError(
                f"data.val_fraction={val_fraction} holds out {self.n_val} of 11 readings; pick 0.1 to 0.9."
            )

    def transform_inputs(self, raw: Tensor) -> Tensor:
        scale = self.hparams.input_scale
        return raw if scale is None else raw * scale

    def load_splits(self) -> dict[str, Split]:
        x = self.transform_inputs(torch.tensor(T_U).unsqueeze(1))
        y = torch.tensor(T_C).unsqueeze(1)
        if self.hparams.fit_all_readings:
            return {"train": (x, y), "val": (x, y), "test": (x, y)}
        train, val, _ = seeded_split(len(x), self.n_val, 0, self.seed)
        return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[val], y[val])}
