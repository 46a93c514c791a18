"""Points on a known line, y = weight * x + bias + noise: tutorial 000's y = 3x + 0.8 and tutorial 001's y = 2x + 1."""

from __future__ import annotations

import torch

from experiments.core.config import UserError, check_fraction
from experiments.data.batching import Split, TensorDataModule, seeded_split


class SyntheticLineDataModule(TensorDataModule):
    task = "regression"
    input_shape = (1,)
    num_outputs = 1

    def __init__(
        self,
        n_samples: int = 500,
        weight: float = 3.0,
        bias: float = 0.8,
        noise: float = 0.0,
        x_min: float = 0.0,
        x_max: float = 1.0,
        x_grid: bool = False,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int | None = 50,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size, eval_batch_size, seed)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 3:
            raise UserError(
                f"data.n_samples must be an integer of at least 3 (one per split), got {n_samples!r}."
            )
        check_fraction("data.val_fraction", val_fraction)
        check_fraction("data.test_fraction", test_fraction)
        if noise < 0:
            raise UserError(
                f"data.noise is a standard deviation and must be 0 or more, got {noise!r}."
            )
        if not x_min < x_max:
            raise UserError(f"data.x_min must be below data.x_max, got {x_min!r} and {x_max!r}.")
        self.save_hyperparameters()
        self.n_val = max(1, int(val_fraction * n_samples))
        self.n_test = max(1, int(test_fraction * n_samples))
        if self.n_val + self.n_test >= n_samples:
            raise UserError(
                f"data.val_fraction + data.test_fraction leave no training points out of {n_samples}; lower them."
            )

    def load_splits(self) -> dict[str, Split]:
        h = self.hparams
        generator = torch.Generator().manual_seed(self.seed)
        if h.x_grid:  # evenly spaced, as tutorial 001's x = 0, 1, ..., 10
            x = torch.linspace(h.x_min, h.x_max, h.n_samples).unsqueeze(1)
        else:  # uniform, as tutorial 000's torch.rand([500, 1])
            x = h.x_min + (h.x_max - h.x_min) * torch.rand(h.n_samples, 1, generator=generator)
        y = h.weight * x + h.bias + h.noise * torch.randn(h.n_samples, 1, generator=generator)
        train, val, test = seeded_split(h.n_samples, self.n_val, self.n_test, self.seed)
        return {"train": (x[train], y[train]), "val": (x[val], y[val]), "test": (x[test], y[test])}
