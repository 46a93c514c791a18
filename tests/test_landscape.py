"""python -m experiments.landscape: the line's exact surface with its Hessian's eigen-directions at
the tutorial's fit, the MLP's principal and filter-normalised random planes with every job's path,
its cost said before it starts, its pictures read back, and its mistakes in one sentence."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import cli, fake_mnist, population, train_in_process
from experiments.core.config import UserError
from experiments.landscape import landscape

THERMOMETER = [
    "experiment=thermometer",
    "dynamics=basic",
    "dynamics.every_n_steps=250",
    "trainer.check_val_every_n_epoch=1000",
]


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "landscape" not in p.relative_to(folder).parts
    }


def test_the_lines_landscape_is_its_exact_quadratic_with_the_tutorials_minimum(tmp_path: Path):
    run_dir = tmp_path / "run"
    train_in_process(THERMOMETER, run_dir)
    before = hashes(run_dir)
    done = cli([f"run={run_dir}", "resolution=11"], tmp_path, module="experiments.landscape")
    assert done.returncode == 0, done.stderr
    assert hashes(run_dir) == before  # it adds landscape/ and touches nothing else
    # the cost, said before it starts: 11 x 11 plane, one slice of 22, the run's start and end
    assert "121 points of the parameters plane and 1 slice(s) of 22 points" in done.stdout
    assert "145 evaluations of the loss, 64 at a time" in done.stdout
    result = json.loads((run_dir / "landscape" / "landscape.json").read_text())
    assert result["evaluations"] == 145 and result["axes"] == ["linear.weight", "linear.bias"]
    data = json.loads((run_dir / "trajectory.json").read_text())
    x, y = (
        torch.tensor(data["x"], dtype=torch.float64),
        torch.tensor(data["y"], dtype=torch.float64),
    )
    features = torch.stack([x, torch.ones_like(x)], 1)
    exact = 2 * features.T @ features / len(x)
    eigen = result["eigen"]
    assert torch.tensor(eigen["hessian"]) == pytest.approx(exact, rel=1e-5)
    assert eigen["eigenvalues"] == pytest.approx(torch.linalg.eigvalsh(exact).tolist(), rel=1e-4)
    # tutorial 002's fit: the minimum of the mean squared error over its 11 readings
    assert eigen["minimum"] == pytest.approx([5.367, -17.30], abs=5e-3)
    # every grid point is the loss itself there (float32 arithmetic against float64)
    for i, j in [(0, 0), (5, 7), (10, 10)]:
        w, b = result["a"][j], result["b"][i]
        assert result["loss"][i][j] == pytest.approx(((w * x + b - y) ** 2).mean().item(), rel=1e-4)
    kept = torch.load(run_dir / "weights_path.pt", weights_only=True)
    assert torch.tensor(result["paths"]["run"]) == pytest.approx(kept["weights"].double(), rel=1e-6)
    events = EventAccumulator(str(run_dir / "landscape"), size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"landscape/plane", "landscape/slices"}
    assert {p.name for p in (run_dir / "landscape").glob("*.png")} == {"plane.png", "slices.png"}


@pytest.fixture(scope="module")
def mlp_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("mlp")
    root = fake_mnist(tmp / "digits", n_train=200, n_test=40)
    base = [
        "experiment=fashion_mnist",
        f"data.root={root}",
        "data.val_size=40",
        "data.batch_size=32",
        "trainer.max_epochs=2",
        "dynamics=basic",
        "dynamics.every_n_steps=2",
    ]
    jobs = [
        [*base, "optimizer=adam", "optimizer.lr=0.01"],
        [*base, "optimizer=sgd", "optimizer.lr=0.1"],
    ]
    population(jobs, tmp / "sweep")
    return tmp / "sweep"


def test_the_mlps_principal_plane_holds_every_jobs_path(mlp_sweep: Path):
    result = landscape(str(mlp_sweep), resolution=9, samples=100)
    assert result["plane"] == "pca" and result["runs"] == ["job0", "job1"]
    shares = [float(label.split("(")[1].split("%")[0]) for label in result["axes"]]
    assert 50 < shares[0] <= 100 and 0 < shares[1] <= shares[0] and sum(shares) <= 100.05
    assert result["paths"]["job0"][-1] == pytest.approx([0.0, 0.0], abs=1e-6)  # the centre
    # a grid point's loss is the model's loss at those weights, computed alone
    kept = [
        torch.load(mlp_sweep / j / "weights_path.pt", weights_only=True) for j in ("job0", "job1")
    ]
    centre = kept[0]["weights"][-1].double()
    points = torch.cat([k["weights"].double() for k in kept]) - centre
    directions = torch.linalg.svd(points, full_matrices=False).Vh[:2]
    from experiments.evaluate import find_checkpoint, restore

    datamodule, model, _ = restore(find_checkpoint(str(mlp_sweep / "job0"), "last"))
    datamodule.load()
    x, y = (t[:100] for t in datamodule.splits["train"])
    theta = centre + result["a"][2] * directions[0] + result["b"][6] * directions[1]
    torch.nn.utils.vector_to_parameters(theta.float(), model.parameters())
    with torch.no_grad():
        alone = model.loss(model(x), y).item()
    assert result["loss"][6][2] == pytest.approx(alone, rel=1e-4)
    assert len(result["slices"]) == 1 + 2 + 1  # alpha, each job, between the ends
    assert result["evaluations"] == 81 + 3 * 18 + 4


def test_the_random_plane_is_filter_normalised(mlp_sweep: Path):
    from experiments.landscape import find_runs, plane_of, read_paths

    paths, names, shapes = read_paths(find_runs(str(mlp_sweep)), mlp_sweep)
    chosen = plane_of(paths, "random", names, shapes, seed=3)
    centre, offset = paths[0].weights[-1], 0
    for shape in shapes:
        n = math.prod(shape)
        for direction in chosen["directions"]:
            part = direction[offset : offset + n].view(shape)
            if len(shape) == 1:
                assert not part.any()  # biases left out, as Li et al. do
            else:
                rows = centre[offset : offset + n].view(shape).norm(dim=1)
                assert part.norm(dim=1) == pytest.approx(rows, rel=1e-9)
        offset += n
    result = landscape(str(mlp_sweep), plane="random", resolution=5, samples=50)
    assert result["plane"] == "random" and all(
        math.isfinite(v) for row in result["loss"] for v in row
    )


def test_a_landscape_mistake_is_one_sentence_and_leaves_nothing(tmp_path: Path):
    run_dir = tmp_path / "plain"
    train_in_process(["experiment=thermometer", "trainer.max_epochs=3"], run_dir)
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(
        UserError,
        match=r"kept no path of its weights \(weights_path.pt\); train it with dynamics=basic",
    ):
        landscape(str(run_dir))
    with pytest.raises(UserError, match="does not exist"):
        landscape(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="plane must be pca or random, got 'flat'."):
        landscape(str(run_dir), plane="flat")
    with pytest.raises(UserError, match="resolution must be 3 or more"):
        landscape(str(run_dir), resolution=2)
    done = cli([f"run={run_dir}"], tmp_path, module="experiments.landscape")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "dynamics=basic" in done.stderr
    done = cli([f"run={run_dir}", "-m"], tmp_path, module="experiments.landscape")
    assert done.returncode == 1 and done.stderr == (
        "error: experiments.landscape draws the landscape of one run or sweep (a sweep's jobs all "
        "on one plane); run it without -m (once per setting).\n"
    )
    assert not (tmp_path / "outputs").exists()
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_a_run_a_live_process_holds_is_refused(tmp_path: Path):
    run_dir = tmp_path / "run"
    train_in_process(THERMOMETER, run_dir)
    holder = subprocess.Popen(  # a process holding the run's lock, as a live run does
        [
            sys.executable,
            "-c",
            f"import fcntl, os, time; fd = os.open({str(run_dir)!r}, os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match="is in use by another run that is still training"):
            landscape(str(run_dir))
    finally:
        holder.kill()
        holder.wait()
    assert not (run_dir / "landscape").exists()
