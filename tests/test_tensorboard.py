"""TensorBoard event files, read back with TensorBoard's own reader and its HParams plugin data."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import train_in_process


def hparams_data(accumulator: EventAccumulator) -> dict[str, plugin_data_pb2.HParamsPluginData]:
    content = accumulator.PluginTagToContent("hparams")
    return {
        tag: plugin_data_pb2.HParamsPluginData.FromString(data) for tag, data in content.items()
    }


@pytest.fixture(scope="module")
def thermometer_events(tmp_path_factory: pytest.TempPathFactory) -> EventAccumulator:
    run_dir = tmp_path_factory.mktemp("tb")
    train_in_process(
        [
            "experiment=thermometer",
            "trainer.max_epochs=1000",
            "trainer.check_val_every_n_epoch=100",
        ],
        run_dir,
    )
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return accumulator


def test_scalars_of_every_stage_are_logged(thermometer_events: EventAccumulator):
    tags = set(thermometer_events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "test/loss", "best/val_loss"} <= tags
    train = thermometer_events.Scalars("train/loss")
    assert 20 <= len(train) <= 22  # every 50 steps over 1000 full-batch epochs, plus the first
    assert train[-1].value < train[0].value
    assert len(thermometer_events.Scalars("val/loss")) == 10


def test_hparams_hold_flat_settings_and_real_metric_values(thermometer_events: EventAccumulator):
    data = hparams_data(thermometer_events)
    start = next(d.session_start_info for d in data.values() if d.HasField("session_start_info"))
    hparams = {k: v.ListFields()[0][1] for k, v in start.hparams.items()}
    assert hparams["optimizer"] == "sgd" and hparams["optimizer.lr"] == pytest.approx(0.01)
    assert (
        hparams["experiment"] == "thermometer"
        and hparams["data"] == "thermometer"
        and hparams["model"] == "linear"
    )
    assert hparams["batch_size"] == 11 and hparams["seed"] == 0
    experiment = next(d.experiment for d in data.values() if d.HasField("experiment"))
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert metric_tags == {"best/val_loss", "test/loss"}
    assert "hp_metric" not in thermometer_events.Tags()["scalars"]
    best = thermometer_events.Scalars("best/val_loss")[-1].value
    assert best == pytest.approx(thermometer_events.Scalars("val/loss")[-1].value) and best > 0


def test_a_line_fit_logs_the_data_and_fitted_line_as_a_figure(thermometer_events: EventAccumulator):
    assert "fit/line" in thermometer_events.Tags()["images"]
    image = thermometer_events.Images("fit/line")[-1]
    assert image.width >= 400 and image.height >= 300


def test_a_classifier_logs_a_confusion_matrix_and_misclassified_test_images(
    tmp_path: Path, mnist_root: Path
):
    train_in_process(
        ["experiment=mnist", f"data.root={mnist_root}", "data.val_size=40", "trainer.max_epochs=1"],
        tmp_path,
    )
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert {"test/confusion_matrix", "test/misclassified"} <= set(accumulator.Tags()["images"])
    assert {"train/acc", "val/acc", "test/acc", "best/val_acc"} <= set(
        accumulator.Tags()["scalars"]
    )


def test_every_run_has_every_optimizer_setting_with_neutral_fill(tmp_path: Path):
    def session_hparams(optimizer: str) -> dict:
        run_dir = tmp_path / optimizer
        train_in_process(
            ["experiment=thermometer", f"optimizer={optimizer}", "trainer.max_epochs=5"], run_dir
        )
        accumulator = EventAccumulator(str(run_dir))
        accumulator.Reload()
        start = next(
            d.session_start_info
            for d in hparams_data(accumulator).values()
            if d.HasField("session_start_info")
        )
        return dict(start.hparams)

    adam, sgd = session_hparams("adam"), session_hparams("sgd")
    assert set(adam) == set(sgd)
    assert (
        adam["optimizer.momentum"].number_value == 0.0
        and adam["optimizer.betas"].string_value == "[0.9, 0.999]"
    )
    assert (
        sgd["optimizer.betas"].string_value == "" and sgd["optimizer.nesterov"].number_value == 0.0
    )
