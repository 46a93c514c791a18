"""The instruments' arithmetic on one model's parameters, as plain tensors: norms per layer, the
gradient noise of a sub-batch from per-sample gradients (torch.func), and the curvature of the
loss from Hessian-vector products (Lanczos for the top eigenvalue, Hutchinson for the trace).
Nothing here touches the model's own weights, gradients or the global random state: a run with
instruments trains exactly as one without."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]  # parameter name -> tensor, as named_parameters() names them


def norms(tensors: Params) -> dict[str, float]:
    """Each tensor's 2-norm and the total ("": the norm of all of them as one vector)."""
    each = {name: torch.linalg.vector_norm(t.detach().float()) for name, t in tensors.items()}
    total = torch.linalg.vector_norm(torch.stack(list(each.values())))
    return {"": total.item(), **{name: v.item() for name, v in each.items()}}


def basic(
    before: Params, after: Params, grad: dict[str, float], initial: Params
) -> dict[str, dict[str, float]]:
    """The basic tier at one step, each as {"": total, layer: value}: the gradient's norm, the
    weights' norm (before the step), the update's norm and its ratio to the weights, the effective
    learning rate (update norm over gradient norm: the lr for plain SGD, the adaptive step for
    Adam) and the distance travelled from the initial weights; `grad` holds the gradient's norms
    (norms() of the gradients, taken before the step)."""
    update = {name: after[name] - before[name] for name in before}
    weight = norms(before)
    step = norms(update)
    distance = norms({name: before[name] - initial[name] for name in before})
    return {
        "weight_norm": weight,
        "update_norm": step,
        "update_ratio": {k: ratio(step[k], weight[k]) for k in step},
        "effective_lr": {k: ratio(step[k], grad[k]) for k in step},
        "distance": distance,
    }


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


LossFunction = Callable[[Params, Tensor, Tensor], Tensor]


def loss_function(model: nn.Module) -> LossFunction:
    """The model's loss as a function of its parameters and a batch (torch.func.functional_call)."""
    from torch.func import functional_call

    def loss(params: Params, inputs: Tensor, targets: Tensor) -> Tensor:
        return model.loss(functional_call(model, params, (inputs,)), targets)

    return loss


def per_sample_gradients(
    model: nn.Module, params: Params, inputs: Tensor, targets: Tensor
) -> Params:
    """Each sample's own gradient of the loss, stacked along dim 0 (torch.func.vmap over grad)."""
    from torch.func import grad, vmap

    loss = loss_function(model)

    def one(p: Params, x: Tensor, y: Tensor) -> Tensor:
        return loss(p, x.unsqueeze(0), y.unsqueeze(0))

    detached = {name: p.detach() for name, p in params.items()}
    return vmap(grad(one), in_dims=(None, 0, 0))(detached, inputs, targets)


def noise(samples: Params) -> dict[str, dict[str, float]]:
    """The gradient noise of a sub-batch of B per-sample gradients g_i with mean g, each as
    {"": total, layer: value}:
      - grad_snr: the mean over coordinates of g_j^2 / var_j (Cockpit's mean GSNR; coordinates
        with no variance left out);
      - norm_test: tr(Sigma) / (B |g|^2), Byrd et al.'s norm test (Cockpit's): below 1, the batch
        is large enough for its gradient to point the right way;
      - noise_scale: tr(Sigma) / |g|^2, McCandlish et al.'s simple noise scale, the batch size
        above which a larger batch stops paying ("" only).
    Sigma is the per-sample gradients' covariance, tr(Sigma) = sum_i |g_i - g|^2 / (B - 1)."""
    b = len(next(iter(samples.values())))
    out: dict[str, dict[str, float]] = {"grad_snr": {}, "norm_test": {}, "noise_scale": {}}
    totals = {"mean_sq": 0.0, "trace": 0.0, "snr_sum": 0.0, "snr_count": 0}
    for name, g in samples.items():
        g = g.detach().double().flatten(1)
        mean = g.mean(0)
        var = (g - mean).square().sum(0) / (b - 1)
        mean_sq, trace = mean.square().sum().item(), var.sum().item()
        kept = var > 0
        snr = (mean[kept].square() / var[kept]).sum().item()
        out["grad_snr"][name] = snr / int(kept.sum()) if kept.any() else math.nan
        out["norm_test"][name] = ratio(trace, b * mean_sq)
        for key, value in (("mean_sq", mean_sq), ("trace", trace), ("snr_sum", snr)):
            totals[key] += value
        totals["snr_count"] += int(kept.sum())
    out["grad_snr"][""] = ratio(totals["snr_sum"], totals["snr_count"])
    out["norm_test"][""] = ratio(totals["trace"], b * totals["mean_sq"])
    out["noise_scale"][""] = ratio(totals["trace"], totals["mean_sq"])
    return out


class Curvature:
    """The Hessian of the loss on one batch at `params`, seen through Hessian-vector products of
    the flat parameter vector (the gradient of the gradient's dot product with v), many at once."""

    def __init__(self, model: nn.Module, params: Params, inputs: Tensor, targets: Tensor) -> None:
        from torch.func import grad, vmap

        self.names = list(params)
        self.shapes = [params[n].shape for n in self.names]
        sizes = [s.numel() for s in self.shapes]
        starts = torch.tensor([0, *sizes]).cumsum(0).tolist()
        self.bounds = [(start, start + n) for start, n in zip(starts, sizes)]
        self.theta = torch.cat([params[n].detach().reshape(-1) for n in self.names])
        loss = loss_function(model)

        def flat_loss(theta: Tensor) -> Tensor:
            return loss(self.unflatten(theta), inputs, targets)

        def hvp(v: Tensor) -> Tensor:  # reverse over reverse: jvp meets ZeroTensors in mse_loss
            return grad(lambda theta: torch.dot(grad(flat_loss)(theta), v))(self.theta)

        self.products = vmap(hvp)  # (m, P) vectors -> their (m, P) products

    @property
    def size(self) -> int:
        return self.theta.numel()

    def unflatten(self, theta: Tensor) -> Params:
        return {
            name: theta[a:b].view(shape)
            for name, (a, b), shape in zip(self.names, self.bounds, self.shapes)
        }

    def masks(self) -> Tensor:
        """Row 0 all ones (the whole Hessian), then one row per layer (its diagonal block)."""
        rows = torch.zeros(1 + len(self.names), self.size, dtype=self.theta.dtype)
        rows[0] = 1
        for k, (a, b) in enumerate(self.bounds, start=1):
            rows[k, a:b] = 1
        return rows.to(self.theta.device)

    def top_eigenvalues(self, steps: int, generator: torch.Generator) -> list[float]:
        """The largest eigenvalue of the whole Hessian and of each layer's diagonal block, by
        `steps` Lanczos iterations with full reorthogonalisation, all blocks in one batch of
        products per iteration. Exact once `steps` reaches a block's size."""
        mask = self.masks()
        dims = mask.sum(1).long().tolist()
        q = torch.randn(mask.shape, generator=generator, dtype=mask.dtype).to(mask.device) * mask
        q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True)
        basis = q.new_zeros(len(dims), steps, q.shape[1])  # (C, steps, P): the Lanczos vectors
        basis[:, 0] = q
        alphas, betas = [], []
        done = [False] * len(dims)
        length = [0] * len(dims)
        for j in range(steps):
            w = self.products(q) * mask
            alpha = (w * q).sum(1)
            alphas.append(alpha)
            stacked = basis[:, : j + 1]
            for _ in range(2):  # reorthogonalise twice: float32 loses orthogonality fast
                w = w - torch.einsum("cj,cjp->cp", torch.einsum("cjp,cp->cj", stacked, w), stacked)
            beta = torch.linalg.vector_norm(w, dim=1)
            scale = torch.stack(alphas).abs().amax(0).clamp_min(1e-30)
            for c in range(len(dims)):
                if not done[c]:
                    length[c] = j + 1
                    done[c] = j + 1 >= dims[c] or beta[c].item() <= 1e-6 * scale[c].item()
            if all(done) or j + 1 == steps:
                break
            betas.append(beta)
            q = torch.where(beta[:, None] > 0, w / beta.clamp_min(1e-30)[:, None], 0.0)
            basis[:, j + 1] = q
        tops = []
        for c, m in enumerate(length):
            a = torch.stack([alphas[j][c] for j in range(m)]).double()
            b = torch.stack([betas[j][c] for j in range(m - 1)]).double() if m > 1 else a[:0]
            tridiagonal = torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1)
            tops.append(torch.linalg.eigvalsh(tridiagonal.cpu()).max().item())
        return tops

    def traces(self, samples: int, generator: torch.Generator) -> list[float]:
        """The trace of the whole Hessian and of each layer's diagonal block: Hutchinson's
        estimate mean(z^T H z) over `samples` Rademacher vectors z, or exact (z the unit
        vectors) when the model has at most `samples` parameters."""
        if self.size <= samples:
            z = torch.eye(self.size, dtype=self.theta.dtype, device=self.theta.device)
            scale = 1.0
        else:
            z = (
                torch.randint(0, 2, (samples, self.size), generator=generator).to(self.theta) * 2
                - 1
            )
            scale = 1.0 / samples
        quadratic = (z * self.products(z)).sum(0) * scale  # per coordinate, summed over vectors
        total = quadratic.sum().item()
        return [total, *[quadratic[a:b].sum().item() for a, b in self.bounds]]


def stability_threshold(optimizer: torch.optim.Optimizer) -> float | None:
    """The sharpness above which plain gradient descent on a quadratic diverges, 2 / lr, and
    (2 + 2 momentum) / lr with heavy-ball momentum (Cohen et al. 2021); None for other optimizers."""
    if type(optimizer) is not torch.optim.SGD:
        return None
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if lr <= 0 or group.get("nesterov"):
        return None
    return (2 + 2 * float(group.get("momentum") or 0.0)) / lr
