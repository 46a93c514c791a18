"""sweep=compare's fits in plain PyTorch, one after another: stage 1 fits every optimizer at every
learning rate of the grid with seed 0, stage 2 fits each optimizer's best learning rate (by its
stage-1 validation value) with seeds 1 to N-1. Every fit starts from torch's random initialisation
drawn from its seed, as the package's comparison does.

  thermometer: tutorial 002's 11 readings (input scaled by 0.1), full batch, 5000 epochs, 5 optimizers,
      a 13-point log grid of learning rates from 1e-4 to 1, 10 seeds; the validation value is the
      loss on all readings every 500 epochs, its best kept.
  mnist ROOT [--fashion]: the 784-28-10 MLP on (Fashion-)MNIST from preloaded tensors (55k/5k split drawn by
      the seed, batch 128, batches in a seeded order), 2 epochs, adam, sgd and momentum at 5
      learning rates from 1e-4 to 1e-1, 5 seeds; the validation value is the accuracy after each epoch.

Usage: python benchmarks/plain_compare.py thermometer | mnist ROOT [--fashion] [--device cuda] [--epochs N]
[--optimizers a,b] [--lrs x,y] [--seeds N].
Prints one JSON line.
"""

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("task", choices=["thermometer", "mnist"])
parser.add_argument("--fashion", action="store_true", help="mnist: the Fashion-MNIST files")
parser.add_argument("root", nargs="?")
parser.add_argument("--device", default="cpu")
parser.add_argument("--epochs", type=int, default=None)
parser.add_argument("--optimizers", default=None, help="comma-separated, as optimizer=...")
parser.add_argument("--lrs", default=None, help="comma-separated learning rates")
parser.add_argument("--seeds", type=int, default=None)
args = parser.parse_args()
device = torch.device(args.device)
OPTIMIZERS = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "adagrad": lambda params, lr: torch.optim.Adagrad(params, lr=lr),
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
}


def thermometer_fit(name: str, lr: float, seed: int, epochs: int) -> float:
    """The best loss on all readings, checked every 500 epochs and at the end; inf if it diverged."""
    torch.manual_seed(seed)
    model = nn.Linear(1, 1).to(device)
    optimizer = OPTIMIZERS[name](model.parameters(), lr)
    best = math.inf
    for epoch in range(epochs):
        loss = F.mse_loss(model(T_UN), T_C)
        if not math.isfinite(loss.item()):
            return math.inf
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 500 == 0 or epoch + 1 == epochs:
            with torch.no_grad():
                best = min(best, F.mse_loss(model(T_UN), T_C).item())
    return best


def mnist_fit(name: str, lr: float, seed: int, epochs: int) -> float:
    """The best validation accuracy after an epoch, negated (lower is better); inf if it diverged."""
    torch.manual_seed(seed)
    order = torch.randperm(len(TRAIN_X), generator=torch.Generator().manual_seed(seed)).to(device)
    train, val = order[:-5000], order[-5000:]
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 28), nn.ReLU(), nn.Linear(28, 10)).to(device)
    optimizer = OPTIMIZERS[name](net.parameters(), lr)
    best = -math.inf
    for epoch in range(epochs):
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        for batch in train[torch.randperm(len(train), generator=generator).to(device)].split(128):
            loss = F.cross_entropy(net(TRAIN_X[batch]), TRAIN_Y[batch])
            if not math.isfinite(loss.item()):
                return math.inf
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            best = max(best, (net(TRAIN_X[val]).argmax(1) == TRAIN_Y[val]).float().mean().item())
    return -best


if args.task == "thermometer":
    T_C = torch.tensor(
        [0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0], device=device
    ).unsqueeze(1)
    T_UN = 0.1 * torch.tensor(
        [35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4], device=device
    ).unsqueeze(1)
    fit, epochs, seeds = thermometer_fit, args.epochs or 5000, 10
    names = ["sgd", "momentum", "adagrad", "rmsprop", "adam"]
    grid = [float(f"{10 ** (-4 + k / 3):.3g}") for k in range(13)]
else:
    from torchvision.datasets import MNIST, FashionMNIST

    dataset = (FashionMNIST if args.fashion else MNIST)(args.root, train=True)
    mean, std = (0.2860, 0.3530) if args.fashion else (0.1307, 0.3081)
    TRAIN_X = ((dataset.data.unsqueeze(1).float() / 255 - mean) / std).to(device)
    TRAIN_Y = dataset.targets.to(device)
    fit, epochs, seeds = mnist_fit, args.epochs or 2, 5
    names = ["adam", "sgd", "momentum"]
    grid = [1e-4, 1e-3, 1e-2, 3e-2, 1e-1]

names = args.optimizers.split(",") if args.optimizers else names
grid = [float(lr) for lr in args.lrs.split(",")] if args.lrs else grid
seeds = args.seeds or seeds
stage_one = {(name, lr): fit(name, lr, 0, epochs) for name in names for lr in grid}
chosen = {
    name: min(grid, key=lambda lr: stage_one[(name, lr)])
    for name in names
    if any(math.isfinite(stage_one[(name, lr)]) for lr in grid)
}
stage_two = {
    name: [stage_one[(name, lr)]] + [fit(name, lr, seed, epochs) for seed in range(1, seeds)]
    for name, lr in chosen.items()
}
print(
    json.dumps(
        {
            "fits": len(stage_one) + sum(len(v) - 1 for v in stage_two.values()),
            "chosen": chosen,
            "means": {name: sum(v) / len(v) for name, v in stage_two.items()},
        }
    )
)
