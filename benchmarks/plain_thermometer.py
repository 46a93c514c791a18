"""Tutorial 002's thermometer fit in plain PyTorch: t_c = w * (0.1 * t_u) + b on all 11 readings,
full-batch SGD with lr 1e-2 from w = 1, b = 0, for 5000 epochs; then the loss of the fit.

Usage: python benchmarks/plain_thermometer.py [--epochs 5000] [--device cuda]. Prints one JSON line.
"""

import argparse
import json

import torch
import torch.nn.functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=5000)
parser.add_argument("--device", default="cpu")
args = parser.parse_args()
device = torch.device(args.device)

t_c = torch.tensor(
    [0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0], device=device
).unsqueeze(1)
t_u = torch.tensor(
    [35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4], device=device
).unsqueeze(1)
t_un = 0.1 * t_u

model = torch.nn.Linear(1, 1).to(device)
with torch.no_grad():
    model.weight.fill_(1.0)
    model.bias.fill_(0.0)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
for epoch in range(args.epochs):
    loss = F.mse_loss(model(t_un), t_c)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
with torch.no_grad():
    final_loss = F.mse_loss(model(t_un), t_c).item()
print(json.dumps({"weight": model.weight.item(), "bias": model.bias.item(), "loss": final_loss}))
