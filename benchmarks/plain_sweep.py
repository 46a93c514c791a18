"""The 15-job sweep in plain PyTorch: tutorial 002's thermometer fit (all 11 readings, input scaled by
0.1, full batch, from w = 1, b = 0, 5000 epochs) with SGD, SGD with momentum 0.9, AdaGrad,
RMSProp and Adam at learning rates 1e-3, 1e-2 and 1e-1, one after another. A fit whose loss stops
being finite is stopped, as the package does.

Usage: python benchmarks/plain_sweep.py [--epochs 5000] [--device cuda]. Prints one JSON line.
"""

import argparse
import json
import math

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
t_un = 0.1 * torch.tensor(
    [35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4], device=device
).unsqueeze(1)
optimizers = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "adagrad": lambda params, lr: torch.optim.Adagrad(params, lr=lr),
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
}
results = []
for name, make in optimizers.items():
    for lr in (1e-3, 1e-2, 1e-1):
        model = torch.nn.Linear(1, 1).to(device)
        with torch.no_grad():
            model.weight.fill_(1.0)
            model.bias.fill_(0.0)
        optimizer = make(model.parameters(), lr)
        status = "finished"
        for epoch in range(args.epochs):
            loss = F.mse_loss(model(t_un), t_c)
            if not math.isfinite(loss.item()):
                status = "diverged"
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        results.append({"optimizer": name, "lr": lr, "status": status, "loss": loss.item()})
print(
    json.dumps(
        {
            "jobs": len(results),
            "diverged": sum(r["status"] == "diverged" for r in results),
            "results": results,
        }
    )
)
