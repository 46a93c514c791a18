"""MNIST and Fashion-MNIST through torchvision, decoded once into normalised tensors.

The official test set is the test split; the 60k training images are split into train and val
by a seeded permutation (55k/5k by default).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from experiments.core.config import UserError
from experiments.data import idx_files
from experiments.data.batching import Split, TensorDataModule, seeded_split


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "experiments"


class MNISTDataModule(TensorDataModule):
    task = "classification"
    input_shape = (1, 28, 28)
    num_outputs = 10
    dataset_name = "MNIST"  # torchvision's class, and its folder under root

    def __init__(
        self,
        root: str = "data",
        download: bool = True,
        val_size: int = 5000,
        mean: float = 0.1307,
        std: float = 0.3081,
        batch_size: int | None = 128,
        eval_batch_size: int | None = 1000,
        cache_dir: str | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size, eval_batch_size, seed)
        if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 < val_size < 60_000:
            raise UserError(
                f"data.val_size must be an integer from 1 to 59999 (taken from the 60k training images), got {val_size!r}."
            )
        if not std > 0:
            raise UserError(f"data.std must be positive, got {std!r}.")
        self.save_hyperparameters()
        self.root = Path(root).expanduser()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()

    def torchvision_class(self) -> type:
        import torchvision.datasets

        return getattr(torchvision.datasets, self.dataset_name)

    def prepare_data(self) -> None:
        self.torchvision_root()

    def torchvision_root(self) -> Path:
        """The folder torchvision reads from, downloading first if allowed and needed."""
        try:
            return idx_files.prepare(self.root, self.dataset_name, self.cache_dir)
        except FileNotFoundError:
            pass
        found = idx_files.find_files(self.root, self.dataset_name)
        missing = [name for key, name in idx_files.FILES.items() if key not in found]
        looked = f"{self.root}/ and {self.root}/{self.dataset_name}/raw/"
        what = (
            f"No {self.dataset_name} files in {looked}"
            if not found
            else f"{looked} lack {', '.join(missing)} (gzipped or not)"
        )
        how = f"copy the four IDX files ({', '.join(idx_files.FILES.values())}, gzipped or not) into {self.root}/ or pass data.root=PATH"
        if not self.hparams.download:
            raise UserError(f"{what} and data.download=false; {how}.")
        try:
            idx_files.download(self.torchvision_class(), self.root, self.cache_dir)
        except (
            Exception
        ) as error:  # torchvision raises RuntimeError, URLError or OSError when offline
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            # torchvision puts the network error last
            reason = lines[-1] if lines else type(error).__name__
            raise UserError(f"{what} and downloading them failed ({reason}); {how}.") from None
        return idx_files.prepare(self.root, self.dataset_name, self.cache_dir)

    def load_splits(self) -> dict[str, Split]:
        root = str(self.torchvision_root())
        dataset = self.torchvision_class()
        train = dataset(root, train=True, download=False)
        test = dataset(root, train=False, download=False)
        train_x, test_x = self.normalise(train.data), self.normalise(test.data)
        n_val = self.hparams.val_size
        if n_val >= len(train_x):
            raise UserError(
                f"data.val_size={n_val} leaves no training images: the files under {root} hold {len(train_x)}; lower it."
            )
        train_idx, val_idx, _ = seeded_split(len(train_x), n_val, 0, self.seed)
        return {
            "train": (train_x[train_idx], train.targets[train_idx]),
            "val": (train_x[val_idx], train.targets[val_idx]),
            "test": (test_x, test.targets),
        }

    @property
    def class_names(self) -> list[str]:
        return [str(digit) for digit in range(10)]

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.hparams.std + self.hparams.mean

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 N x 28 x 28 -> float N x 1 x 28 x 28, as ToTensor() then Normalize(mean, std)."""
        x = images.unsqueeze(1).float().div_(255)
        return x.sub_(self.hparams.mean).div_(self.hparams.std)


class FashionMNISTDataModule(MNISTDataModule):
    dataset_name = "FashionMNIST"

    @property
    def class_names(self) -> list[str]:
        return list(self.torchvision_class().classes)

    def __init__(self, mean: float = 0.2860, std: float = 0.3530, **kwargs):
        super().__init__(mean=mean, std=std, **kwargs)
