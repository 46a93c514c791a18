"""Data modules: split sizes, seeded determinism, full-batch mode, MNIST files through torchvision."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from conftest import IDX_NAMES, fake_mnist
from experiments.core.config import UserError
from experiments.data.batching import TensorDataModule, TensorLoader
from experiments.data.idx_files import write_idx
from experiments.data.mnist import FashionMNISTDataModule, MNISTDataModule
from experiments.data.synthetic import SyntheticLineDataModule
from experiments.data.thermometer import T_C, T_U, ThermometerDataModule


def sizes(dm) -> dict[str, int]:
    dm.setup("fit")
    return {name: len(x) for name, (x, _) in dm.splits.items()}


def test_synthetic_splits_follow_the_fractions_and_the_line():
    dm = SyntheticLineDataModule(
        n_samples=500, weight=3.0, bias=0.8, val_fraction=0.1, test_fraction=0.2
    )
    assert sizes(dm) == {"train": 350, "val": 50, "test": 100}
    x, y = dm.splits["train"]
    assert torch.allclose(y, 3.0 * x + 0.8)
    assert 0 <= x.min() and x.max() <= 1


def test_synthetic_grid_is_seed_001s_x_from_0_to_10():
    dm = SyntheticLineDataModule(n_samples=11, weight=2.0, bias=1.0, x_min=0, x_max=10, x_grid=True)
    dm.setup()
    xs = torch.cat([x for x, _ in dm.splits.values()]).flatten().sort().values
    assert xs.tolist() == [float(i) for i in range(11)]


def test_synthetic_noise_has_the_configured_spread():
    dm = SyntheticLineDataModule(n_samples=4000, noise=0.5, val_fraction=0.1, test_fraction=0.1)
    dm.setup()
    x, y = dm.splits["train"]
    assert (y - (3.0 * x + 0.8)).std().item() == pytest.approx(0.5, rel=0.05)


def test_same_seed_same_data_and_order_other_seed_differs():
    def first_batch(seed: int) -> torch.Tensor:
        dm = SyntheticLineDataModule(seed=seed, batch_size=16)
        dm.setup()
        return next(iter(dm.train_dataloader()))[0]

    assert torch.equal(first_batch(0), first_batch(0))
    assert not torch.equal(first_batch(0), first_batch(1))


def test_thermometer_split_is_the_seeds_80_20():
    dm = ThermometerDataModule(val_fraction=0.2, seed=0)
    assert sizes(dm) == {"train": 9, "val": 2, "test": 2}
    x_train, _ = dm.splits["train"]
    x_val, _ = dm.splits["val"]
    all_scaled = sorted(round(0.1 * t, 4) for t in T_U)
    assert sorted(round(v, 4) for v in torch.cat([x_train, x_val]).flatten().tolist()) == all_scaled
    held_out = ThermometerDataModule(val_fraction=0.2, seed=0)
    held_out.setup()
    assert torch.equal(held_out.splits["val"][0], x_val)


def test_thermometer_fit_all_readings_and_unscaled_input():
    dm = ThermometerDataModule(input_scale=None, fit_all_readings=True)
    assert sizes(dm) == {"train": 11, "val": 11, "test": 11}
    x, y = dm.splits["train"]
    assert x.flatten().tolist() == pytest.approx(T_U)
    assert y.flatten().tolist() == pytest.approx(T_C)


def test_full_batch_mode_yields_the_whole_training_set_once_per_epoch():
    dm = SyntheticLineDataModule(n_samples=100, batch_size=None)
    dm.setup()
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(loader) == 1 and len(batches) == 1
    assert len(batches[0][0]) == 80


def test_minibatches_cover_every_sample_once_and_reshuffle_per_epoch():
    x = torch.arange(103.0).unsqueeze(1)
    loader = TensorLoader((x, x), batch_size=10, shuffle=True, seed=3)
    loader.sampler.set_epoch(0)
    epoch0 = torch.cat([b for b, _ in loader]).flatten()
    loader.sampler.set_epoch(1)
    epoch1 = torch.cat([b for b, _ in loader]).flatten()
    assert len(loader) == 11
    assert sorted(epoch0.tolist()) == sorted(epoch1.tolist()) == x.flatten().tolist()
    assert not torch.equal(epoch0, epoch1)
    loader.sampler.set_epoch(0)
    # an epoch's order is replayable
    assert torch.equal(torch.cat([b for b, _ in loader]).flatten(), epoch0)


def test_shards_of_two_processes_see_each_sample_once_in_equal_step_counts():
    x = torch.arange(101.0).unsqueeze(1)
    shards = [
        TensorLoader((x, x), batch_size=10, shuffle=True, seed=1, rank=r, world_size=2)
        for r in range(2)
    ]
    seen = [torch.cat([b for b, _ in loader]).flatten() for loader in shards]
    assert len(shards[0]) == len(shards[1]) == len(list(shards[0])) == len(list(shards[1]))
    assert sorted(torch.cat(seen).tolist()) == x.flatten().tolist()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SyntheticLineDataModule(batch_size=0), "data.batch_size"),
        (lambda: SyntheticLineDataModule(val_fraction=1.0), "data.val_fraction"),
        (lambda: ThermometerDataModule(val_fraction=0.0), "data.val_fraction"),
        (lambda: ThermometerDataModule(input_scale=-1.0), "data.input_scale"),
        (lambda: MNISTDataModule(val_size=60_000), "data.val_size"),
    ],
)
def test_bad_data_settings_name_their_key(make, message):
    with pytest.raises(UserError, match=message):
        make()


def mnist_sizes(root: Path, **kwargs) -> dict[str, int]:
    dm = MNISTDataModule(root=str(root), val_size=40, download=False, **kwargs)
    dm.setup("fit")
    return {name: len(x) for name, (x, _) in dm.splits.items()}


def test_mnist_reads_gzipped_files_flat_in_a_folder(mnist_root: Path):
    assert mnist_sizes(mnist_root) == {"train": 260, "val": 40, "test": 60}


def test_mnist_reads_torchvisions_layout_uncompressed_without_copying(tmp_path: Path):
    root = tmp_path / "tv"
    fake_mnist(root / "MNIST" / "raw", gz=False)
    cache = tmp_path / "cache"
    assert mnist_sizes(root, cache_dir=str(cache)) == {"train": 260, "val": 40, "test": 60}
    assert not cache.exists()


def test_mnist_reads_torchvisions_layout_gzipped(tmp_path: Path):
    fake_mnist(tmp_path / "tv" / "MNIST" / "raw", gz=True)
    assert mnist_sizes(tmp_path / "tv") == {"train": 260, "val": 40, "test": 60}


def test_mnist_tensors_are_normalised_images_with_labels(mnist_root: Path):
    dm = MNISTDataModule(root=str(mnist_root), val_size=40, download=False, mean=0.5, std=0.25)
    dm.setup()
    x, y = dm.splits["test"]
    assert x.shape == (60, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= y.min() and y.max() <= 9
    assert x.max().item() == pytest.approx((1.0 - 0.5) / 0.25)  # the 255 bars


def test_fashion_mnist_uses_its_own_folder_and_constants(tmp_path: Path):
    fake_mnist(tmp_path / "FashionMNIST" / "raw", gz=False)
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=40, download=False)
    dm.setup()
    assert dm.hparams.mean == pytest.approx(0.2860) and dm.hparams.std == pytest.approx(0.3530)
    assert len(dm.splits["test"][0]) == 60


def test_mnist_split_is_seeded(mnist_root: Path):
    def val_labels(seed: int) -> list[int]:
        dm = MNISTDataModule(root=str(mnist_root), val_size=40, download=False, seed=seed)
        dm.setup()
        return dm.splits["val"][1].tolist()

    assert val_labels(0) == val_labels(0)
    assert val_labels(0) != val_labels(1)


def test_missing_files_offline_give_one_sentence_saying_what_was_tried(tmp_path: Path):
    dm = MNISTDataModule(root=str(tmp_path / "empty"), download=True)
    with pytest.raises(UserError) as error:
        dm.setup()
    message = str(error.value)
    assert "\n" not in message
    assert f"{tmp_path / 'empty'}/MNIST/raw/" in message and "downloading them failed" in message
    assert "data.root=PATH" in message


def test_a_validation_set_as_large_as_the_training_files_is_refused(mnist_root: Path):
    with pytest.raises(UserError, match="data.val_size=5000 leaves no training images"):
        MNISTDataModule(root=str(mnist_root), download=False).setup()


def test_missing_files_without_download_say_so(tmp_path: Path):
    with pytest.raises(UserError, match="data.download=false"):
        MNISTDataModule(root=str(tmp_path), download=False).setup()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "truncated"),
        ("magic", "magic number"),
        ("count", "labels"),
        ("gzip", "gzip"),
    ],
)
def test_damaged_idx_files_are_named_with_what_is_wrong(
    mnist_root: Path, damage: str, message: str
):
    images = mnist_root / f"{IDX_NAMES['train', 'images']}.gz"
    labels = mnist_root / f"{IDX_NAMES['train', 'labels']}.gz"
    if damage == "truncate":
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    elif damage == "magic":
        shutil.copy(labels, images)
    elif damage == "count":
        write_idx(labels, torch.zeros(7, dtype=torch.uint8).numpy())
    elif damage == "gzip":
        images.write_bytes(images.read_bytes()[:200])
    with pytest.raises(UserError, match=message) as error:
        MNISTDataModule(root=str(mnist_root), download=False).setup()
    assert str(images.name) in str(error.value) or str(labels.name) in str(error.value)


class Points(TensorDataModule):
    """Tensors a subclass may get wrong: `inputs` and `targets` shapes, as given."""

    task = "regression"
    input_shape = (2,)
    num_outputs = 1

    def __init__(
        self, inputs: tuple[int, ...], targets: tuple[int, ...], task: str = "regression"
    ) -> None:
        super().__init__(None, None, 0)
        self.shapes, self.task = (inputs, targets), task

    def load_splits(self):
        x, y = torch.zeros(10, *self.shapes[0]), torch.zeros(10, *self.shapes[1])
        if self.task == "classification":
            y = torch.full((10,), 3)
        return {split: (x, y) for split in ("train", "val", "test")}


@pytest.mark.parametrize(
    "inputs, targets, task, message",
    [
        (
            (1,),
            (1,),
            "regression",
            r"Points.input_shape is \(2,\), but load_splits\(\) returns train inputs of shape \(1,\) per sample",
        ),
        (
            (2,),
            (3,),
            "regression",
            r"Points.num_outputs is 1, but load_splits\(\) returns train targets of shape \(3,\)",
        ),
        ((2,), (), "classification", r"not class indices from 0 to 0 \(num_outputs\)"),
    ],
)
def test_a_data_module_whose_tensors_disagree_with_what_it_promises_is_one_sentence(
    inputs, targets, task, message
):
    with pytest.raises(UserError, match=message):
        Points(inputs, targets, task).load()
    assert Points((2,), (1,)).load() is None  # what it promises: loads
