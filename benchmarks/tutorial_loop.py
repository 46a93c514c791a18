"""Tutorial 000's plain PyTorch MNIST loop, as written there: torchvision dataset with per-sample
ToTensor and Normalize, DataLoader(batch_size=128, shuffle=True), the 784-28-10 MnistNet, Adam 1e-3.

Usage: python benchmarks/tutorial_loop.py ROOT [--fashion] [--epochs 2]
ROOT holds the four IDX files in torchvision's layout (ROOT/MNIST/raw/ or ROOT/FashionMNIST/raw/).
Prints one JSON line: per-epoch train seconds, test accuracy, total seconds.
"""

import argparse
import json
import time

start = time.perf_counter()

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import Adam
from torch.utils.data import DataLoader
from torchvision.datasets import MNIST, FashionMNIST
from torchvision.transforms import Compose, Normalize, ToTensor

parser = argparse.ArgumentParser()
parser.add_argument("root")
parser.add_argument("--fashion", action="store_true")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--device", default="cpu")
args = parser.parse_args()
torch.manual_seed(args.seed)
device = torch.device(args.device)

BATCH_SIZE = 128
Dataset = FashionMNIST if args.fashion else MNIST
MEAN, STD = ((0.2860,), (0.3530,)) if args.fashion else ((0.1307,), (0.3081,))


def get_dataloader(train=True):
    transform_fn = Compose([ToTensor(), Normalize(mean=MEAN, std=STD)])
    dataset = Dataset(root=args.root, train=train, transform=transform_fn)
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True)


class MnistNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 28)
        self.fc2 = nn.Linear(28, 10)

    def forward(self, x):
        x = x.view(-1, 28 * 28)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


criterion = nn.CrossEntropyLoss()
mnist_net = MnistNet().to(device)
optimizer = Adam(mnist_net.parameters(), lr=0.001)
train_loader = get_dataloader()
test_loader = get_dataloader(train=False)


def test():
    correct = 0
    mnist_net.eval()
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            pred = mnist_net(data).max(1, keepdim=True)[1]
            correct += pred.eq(target.view_as(pred)).sum().item()
    mnist_net.train()
    return correct / len(test_loader.dataset)


epoch_seconds = []
for epoch in range(args.epochs):
    t = time.perf_counter()
    for inputs, labels in train_loader:
        inputs, labels = inputs.to(device), labels.to(device)
        loss = criterion(mnist_net(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    epoch_seconds.append(time.perf_counter() - t)
accuracy = test()
print(
    json.dumps(
        {"epoch_seconds": epoch_seconds, "steps_per_epoch": len(train_loader), "test_acc": accuracy}
    )
)
