"""In-memory batching shared by every data set.

Each data set is decoded once into tensors; a batch is a slice of a seeded permutation, not a
collation of samples one by one, which is what keeps Lightning nearly free for tiny models.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import lightning.pytorch as pl
import torch
from torch import Tensor

from experiments.core.config import UserError, check_batch_size

Split = tuple[Tensor, Tensor]


class EpochOrder:
    """The sample order of one epoch for one process.

    The permutation depends only on (seed, epoch), so a resumed run replays the order an
    uninterrupted one would have used. Lightning calls `set_epoch` on a loader's `sampler`.
    """

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> Tensor | None:
        """This process's sample indices in order, or None for all samples in stored order."""
        if not self.shuffle and self.world_size == 1:
            return None
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        # Each process takes every world_size-th sample: every sample is seen once per epoch.
        return order[self.rank :: self.world_size]


class TensorLoader:
    """Batches sliced from tensors held in memory (on the accelerator when there is one).

    Lightning treats it as a DataLoader: it calls `sampler.set_epoch` and reads `batch_sampler`.
    It is also resumable: a checkpoint taken mid-epoch records how many batches of the epoch were
    served (Lightning fetches no batch ahead from a loader with a length), and the resumed run
    starts the same epoch's order after them.
    """

    batch_sampler = None

    def __init__(
        self,
        split: Split,
        batch_size: int | None,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.inputs, self.targets = split
        n = len(self.inputs)
        self.local_n = len(range(rank, n, world_size))
        self.sampler = EpochOrder(n, shuffle and (batch_size or n) < n, seed, rank, world_size)
        # Every process must take the same number of steps, or distributed training waits forever.
        self.num_batches = max(1, math.ceil(math.ceil(n / world_size) / (batch_size or n)))
        self.batch_size = batch_size
        self.served = 0  # batches of the current epoch handed out so far
        self._resume: tuple[int, int] | None = None  # (epoch, batches already served)

    def __len__(self) -> int:
        return self.num_batches

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (state["epoch"], state["served"])

    def __iter__(self) -> Iterator[Split]:
        skip = (
            self._resume[1]
            if self._resume is not None and self._resume[0] == self.sampler.epoch
            else 0
        )
        self._resume = None
        self.served = skip
        for batch in itertools.islice(self.batches(), skip, None):
            self.served += 1
            yield batch

    def batches(self) -> Iterator[Split]:
        order = self.sampler.indices()
        if order is None:
            if self.num_batches == 1:
                yield self.inputs, self.targets
                return
            for start in range(0, self.local_n, self.batch_size):
                yield (
                    self.inputs[start : start + self.batch_size],
                    self.targets[start : start + self.batch_size],
                )
            return
        order = order.to(self.inputs.device)
        for chunk in (
            order.tensor_split(self.num_batches)
            if self._uneven()
            else order.split(self.batch_size or len(order))
        ):
            yield self.inputs[chunk], self.targets[chunk]

    def _uneven(self) -> bool:
        # With several processes the local shard may not divide into num_batches slices of batch_size.
        return (
            self.batch_size is not None
            and math.ceil(self.local_n / self.batch_size) != self.num_batches
        )


class TensorDataModule(pl.LightningDataModule):
    """A data set held as (inputs, targets) tensors for train, val and test.

    Subclasses set `task`, `input_shape` and `num_outputs` (so a model is sized from its data) and
    implement `load_splits`.
    """

    task: str  # "regression" or "classification"
    input_shape: tuple[int, ...]
    num_outputs: int

    def __init__(self, batch_size: int | None, eval_batch_size: int | None, seed: int):
        super().__init__()
        check_batch_size("data.batch_size", batch_size)
        check_batch_size("data.eval_batch_size", eval_batch_size)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise UserError(f"data.seed must be an integer from 0 to {2**32 - 1}, got {seed!r}.")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.splits: dict[str, Split] | None = None

    def load_splits(self) -> dict[str, Split]:
        """Return {"train": (x, y), "val": (x, y), "test": (x, y)}."""
        raise NotImplementedError

    def transform_inputs(self, raw: Tensor) -> Tensor:
        """Map raw inputs (as a user would type them) to what the model sees."""
        return raw

    def load(self) -> None:
        """Read or make the data, once; its mistakes (a missing or damaged file) surface here."""
        if self.splits is None:
            self.splits = self.load_splits()
            self.check_splits()

    def check_splits(self) -> None:
        """The tensors are what `input_shape`, `num_outputs` and `task` promise the model."""
        name = type(self).__name__
        for split, (inputs, targets) in self.splits.items():
            if tuple(inputs.shape[1:]) != tuple(self.input_shape):
                raise UserError(
                    f"{name}.input_shape is {tuple(self.input_shape)}, but load_splits() returns {split} inputs of shape "
                    f"{tuple(inputs.shape[1:])} per sample; make input_shape match the tensors."
                )
            if len(targets) != len(inputs):
                raise UserError(
                    f"{name}.load_splits() returns {len(inputs)} {split} inputs but {len(targets)} targets; give one target per input."
                )
            if self.task == "regression" and tuple(targets.shape[1:]) != (self.num_outputs,):
                raise UserError(
                    f"{name}.num_outputs is {self.num_outputs}, but load_splits() returns {split} targets of shape "
                    f"{tuple(targets.shape[1:])} per sample; regression targets are ({self.num_outputs},) per sample."
                )
            if (
                self.task == "classification"
                and len(targets)
                and (
                    targets.is_floating_point()
                    or targets.ndim != 1
                    or not 0 <= int(targets.min()) <= int(targets.max()) < self.num_outputs
                )
            ):
                raise UserError(
                    f"{name}.load_splits() returns {split} targets that are not class indices from 0 to {self.num_outputs - 1} (num_outputs); give one integer label per sample."
                )

    def setup(self, stage: str | None = None) -> None:
        self.load()
        device = (
            self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        )
        self.splits = {name: (x.to(device), y.to(device)) for name, (x, y) in self.splits.items()}

    def _loader(self, name: str, batch_size: int | None, shuffle: bool) -> TensorLoader:
        if self.splits is None:
            self.setup()
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return TensorLoader(self.splits[name], batch_size, shuffle, self.seed, rank, world)

    def train_dataloader(self) -> TensorLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> TensorLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> TensorLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    @property
    def train_size(self) -> int:
        if self.splits is None:
            self.setup()
        return len(self.splits["train"][0])


def seeded_split(n: int, n_val: int, n_test: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Train, val and test indices from one seeded permutation (the tutorial's randperm split)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = n - n_val - n_test
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
