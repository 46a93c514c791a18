"""The tutorial's MNIST loop over tensors decoded once: the same 784-28-10 net, Adam 1e-3, batch 128,
but each batch is a slice of a seeded permutation of a preloaded tensor, no per-sample transforms.

It trains on the same 55k/5k split of the 60k training images as the package does, so their
epochs are the same size. Usage: python benchmarks/plain_preloaded.py ROOT [--fashion] [--epochs 2]
[--device cuda]. Prints one JSON line.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.datasets import MNIST, FashionMNIST

parser = argparse.ArgumentParser()
parser.add_argument("root")
parser.add_argument("--fashion", action="store_true")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--val-size", type=int, default=5000)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--device", default="cpu")
args = parser.parse_args()
torch.manual_seed(args.seed)
device = torch.device(args.device)
Dataset = FashionMNIST if args.fashion else MNIST
mean, std = (0.2860, 0.3530) if args.fashion else (0.1307, 0.3081)


def load(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = Dataset(args.root, train=train)
    x = (dataset.data.unsqueeze(1).float() / 255 - mean) / std
    return x.to(device), dataset.targets.to(device)


train_x, train_y = load(train=True)
order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(args.seed)).to(device)
train_x, train_y = (
    train_x[order[: len(order) - args.val_size]],
    train_y[order[: len(order) - args.val_size]],
)
test_x, test_y = load(train=False)

net = nn.Sequential(nn.Flatten(), nn.Linear(784, 28), nn.ReLU(), nn.Linear(28, 10)).to(device)
optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
epoch_seconds = []
for epoch in range(args.epochs):
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    permutation = torch.randperm(
        len(train_x), generator=torch.Generator().manual_seed(args.seed * 100_003 + epoch)
    ).to(device)
    for batch in permutation.split(128):
        loss = F.cross_entropy(net(train_x[batch]), train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    epoch_seconds.append(time.perf_counter() - started)
with torch.no_grad():
    accuracy = (net(test_x).argmax(1) == test_y).float().mean().item()
print(
    json.dumps(
        {
            "epoch_seconds": epoch_seconds,
            "steps_per_epoch": -(-len(train_x) // 128),
            "test_acc": accuracy,
        }
    )
)
