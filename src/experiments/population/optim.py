"""One optimizer for a population: K replicas whose weights are the K rows of one flat tensor,
each with its own torch.optim settings, updated together.

Every replica keeps a real torch.optim optimizer over views of its row. Its param_groups hold the
replica's settings (a learning-rate schedule changes them there, as in a single run) and its
state_dict() is the replica's optimizer state in torch's own format, which is what goes into the
replica's checkpoint. Replicas whose optimizer has a rule here (SGD, Adam, AdamW, Adagrad, RMSprop,
every setting the package offers) are updated by a few tensor operations over all their rows at
once, following torch's single-tensor implementation step by step; any other optimizer, or an
implementation flag the rules do not cover, steps each replica through its own torch.optim object
on the same views. A replica marked frozen (it diverged) keeps its weights from then on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

UNSUPPORTED_FLAGS = ("capturable", "differentiable", "fused")


def row_views(flat: Tensor, k: int, shapes: list[torch.Size]) -> list[Tensor]:
    """Replica k's parameters as views of its row of `flat` (leaves, sharing its storage)."""
    views, offset = [], 0
    data = flat.detach()
    for shape in shapes:
        n = shape.numel()
        views.append(data[k, offset : offset + n].view(shape))
        offset += n
    return views


class Rule:
    """The update of one optimizer class, over the rows [start, stop) of the population.

    Each rule follows torch's single-tensor implementation operation by operation, with each
    replica's settings as a column where torch has a Python number: a number torch computes in
    double precision (1 - beta1, a bias correction, -lr) is computed so here too, row by row, and
    `x.add_(y, alpha=a)` becomes `x.addcmul_(y, a)`, which rounds as it does. A row's result is
    then the same, bit for bit, as its own torch.optim optimizer's on CPU."""

    state_names: tuple[str, ...] = ()
    has_step = True

    def __init__(
        self,
        start: int,
        stop: int,
        optimizers: list[torch.optim.Optimizer],
        flat: Tensor,
        shapes: list[torch.Size],
    ) -> None:
        self.start, self.stop = start, stop
        self.optimizers = optimizers  # one per row, each over that row's views
        self.shapes = shapes
        self.steps = 0
        self.state: dict[str, Tensor] = {}
        self._cache: dict[str, Tensor] = {}
        self._any: dict[str, Any] = {}
        self.like = flat.detach()[start:stop]

    def values(self, name: str, index: int | None = None) -> list[Any]:
        return [
            o.param_groups[0][name] if index is None else o.param_groups[0][name][index]
            for o in self.optimizers
        ]

    def column(self, key: str, values: Callable[[], list[float]]) -> Tensor:
        """Numbers per row as a (rows, 1) tensor of the weights' dtype, made once, and again after
        a schedule changed a setting (`settings_changed`)."""
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = torch.tensor(
                values(), dtype=self.like.dtype, device=self.like.device
            ).unsqueeze(1)
        return cached

    def settings_changed(self) -> None:
        self._cache.clear()
        self._any.clear()

    def any(self, name: str) -> bool:
        """Whether any row's setting is non-zero (so its operations are needed at all)."""
        if name not in self._any:
            self._any[name] = any(self.values(name))
        return self._any[name]

    def fresh(self, values: list[float]) -> Tensor:
        """Numbers that change every step, per row, as a column."""
        return torch.tensor(values, dtype=self.like.dtype, device=self.like.device).unsqueeze(1)

    def setting(self, name: str, index: int | None = None) -> Tensor:
        return self.column(f"{name}{index}", lambda: self.values(name, index))

    def derived(self, key: str, compute: Callable[[dict[str, Any]], float]) -> Tensor:
        """A number torch derives from a row's settings in Python (double precision), per row."""
        return self.column(key, lambda: [compute(o.param_groups[0]) for o in self.optimizers])

    def flag(self, name: str) -> Tensor:
        return self.column(f"flag:{name}", lambda: [float(bool(v)) for v in self.values(name)]) != 0

    def maximized(self, grad: Tensor) -> Tensor:
        return torch.where(self.flag("maximize"), -grad, grad) if self.any("maximize") else grad

    def zeros(self) -> Tensor:
        return torch.zeros_like(self.like)

    def step(self, param: Tensor, grad: Tensor) -> None:
        raise NotImplementedError

    def export(self, row: int) -> list[dict[str, Any]]:
        """The torch.optim state of this row's replica, one dict per parameter."""
        if not self.steps:
            return [{} for _ in self.shapes]
        states: list[dict[str, Any]] = []
        offset = 0
        for shape in self.shapes:
            n = shape.numel()
            state: dict[str, Any] = {
                name: tensor[row, offset : offset + n].reshape(shape).clone()
                for name, tensor in self.state.items()
            }
            if self.has_step:
                state["step"] = torch.tensor(float(self.steps))
            states.append(state)
            offset += n
        return states

    def load(self, row: int, states: list[dict[str, Any]]) -> None:
        """Take this row's replica's torch.optim state (after a resume)."""
        if not states or not states[0]:
            return
        if "step" in states[0]:
            self.steps = int(float(states[0]["step"]))
        for name in self.state_names:
            if name not in states[0]:
                continue
            if name not in self.state:
                self.state[name] = self.zeros()
            self.state[name][row] = torch.cat([s[name].reshape(-1).to(self.like) for s in states])


class SGDRule(Rule):
    state_names = ("momentum_buffer",)
    has_step = False

    def step(self, param: Tensor, grad: Tensor) -> None:
        grad = self.maximized(grad)
        if self.any("weight_decay"):
            grad = torch.addcmul(grad, param, self.setting("weight_decay"))
        if self.any("momentum"):
            momentum = self.setting("momentum")
            if "momentum_buffer" not in self.state:
                # torch starts the buffer at the first gradient
                self.state["momentum_buffer"] = grad.detach().clone()
            else:
                self.state["momentum_buffer"].mul_(momentum).addcmul_(
                    grad, self.derived("1-dampening", lambda g: 1 - g["dampening"])
                )
            buf = self.state["momentum_buffer"]
            moved = (
                torch.where(self.flag("nesterov"), torch.addcmul(grad, buf, momentum), buf)
                if self.any("nesterov")
                else buf
            )
            grad = torch.where(momentum != 0, moved, grad)
        param.addcmul_(grad, self.derived("-lr", lambda g: -g["lr"]))
        self.steps += 1

    def export(self, row: int) -> list[dict[str, Any]]:
        if (
            self.optimizers[row].param_groups[0]["momentum"] == 0
            or "momentum_buffer" not in self.state
        ):
            return [{} for _ in self.shapes]
        return super().export(row)


class AdamRule(Rule):
    """Adam and AdamW (AdamW is Adam with decoupled_weight_decay=True)."""

    state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def step(self, param: Tensor, grad: Tensor) -> None:
        if not self.state:
            self.state = {"exp_avg": self.zeros(), "exp_avg_sq": self.zeros()}
            if self.any("amsgrad"):
                self.state["max_exp_avg_sq"] = self.zeros()
        self.steps += 1
        step = self.steps
        grad = self.maximized(grad)
        if self.any("weight_decay"):
            decoupled = self.flag("decoupled_weight_decay")
            param.copy_(
                torch.where(
                    decoupled,
                    param * self.derived("1-lr*wd", lambda g: 1 - g["lr"] * g["weight_decay"]),
                    param,
                )
            )
            grad = torch.where(
                decoupled, grad, torch.addcmul(grad, param, self.setting("weight_decay"))
            )
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        exp_avg.lerp_(grad, self.derived("1-beta1", lambda g: 1 - g["betas"][0]))
        exp_avg_sq.mul_(self.setting("betas", 1)).addcmul_(
            grad * self.derived("1-beta2", lambda g: 1 - g["betas"][1]), grad
        )
        second = exp_avg_sq
        if "max_exp_avg_sq" in self.state:
            torch.maximum(
                self.state["max_exp_avg_sq"], exp_avg_sq, out=self.state["max_exp_avg_sq"]
            )
            second = torch.where(self.flag("amsgrad"), self.state["max_exp_avg_sq"], exp_avg_sq)
        lrs, beta1s, beta2s = self.numbers()  # the bias corrections change every step
        correction2 = self.fresh([(1 - b2**step) ** 0.5 for b2 in beta2s])
        denom = (second.sqrt() / correction2).add_(self.setting("eps"))
        param.addcdiv_(
            exp_avg * self.fresh([-(lr / (1 - b1**step)) for lr, b1 in zip(lrs, beta1s)]), denom
        )

    def numbers(self) -> tuple[list[float], list[float], list[float]]:
        if "numbers" not in self._any:
            groups = [o.param_groups[0] for o in self.optimizers]
            self._any["numbers"] = (
                [g["lr"] for g in groups],
                [g["betas"][0] for g in groups],
                [g["betas"][1] for g in groups],
            )
        return self._any["numbers"]

    def export(self, row: int) -> list[dict[str, Any]]:
        states = super().export(row)
        if not self.optimizers[row].param_groups[0]["amsgrad"]:
            for state in states:
                state.pop("max_exp_avg_sq", None)
        return states


class AdagradRule(Rule):
    state_names = ("sum",)

    def step(self, param: Tensor, grad: Tensor) -> None:
        if not self.state:
            self.state = {"sum": self.zeros().add_(self.setting("initial_accumulator_value"))}
        self.steps += 1
        step = self.steps
        grad = self.maximized(grad)
        if self.any("weight_decay"):
            grad = torch.addcmul(grad, param, self.setting("weight_decay"))
        state_sum = self.state["sum"]
        state_sum.addcmul_(grad, grad, value=1)
        std = state_sum.sqrt().add_(self.setting("eps"))
        if self.any("lr_decay"):
            neg_clr = self.fresh(
                [
                    -(g["lr"] / (1 + (step - 1) * g["lr_decay"]))
                    for g in (o.param_groups[0] for o in self.optimizers)
                ]
            )
        else:
            neg_clr = self.derived("-lr", lambda g: -g["lr"])
        param.addcdiv_(grad * neg_clr, std)

    def export(self, row: int) -> list[dict[str, Any]]:
        if not self.steps:  # torch holds the accumulator from the start
            value = float(self.optimizers[row].param_groups[0]["initial_accumulator_value"])
            return [
                {"step": torch.tensor(0.0), "sum": torch.full(shape, value, dtype=self.like.dtype)}
                for shape in self.shapes
            ]
        return super().export(row)


class RMSpropRule(Rule):
    state_names = ("square_avg", "momentum_buffer", "grad_avg")

    def step(self, param: Tensor, grad: Tensor) -> None:
        if not self.state:
            self.state = {"square_avg": self.zeros()}
            if self.any("momentum"):
                self.state["momentum_buffer"] = self.zeros()
            if self.any("centered"):
                self.state["grad_avg"] = self.zeros()
        self.steps += 1
        grad = self.maximized(grad)
        if self.any("weight_decay"):
            grad = torch.addcmul(grad, param, self.setting("weight_decay"))
        square_avg = self.state["square_avg"]
        square_avg.mul_(self.setting("alpha")).addcmul_(
            grad * self.derived("1-alpha", lambda g: 1 - g["alpha"]), grad
        )
        if "grad_avg" in self.state:
            grad_avg = self.state["grad_avg"]
            grad_avg.lerp_(grad, self.derived("1-alpha", lambda g: 1 - g["alpha"]))
            avg = torch.where(
                self.flag("centered"), square_avg.addcmul(grad_avg, grad_avg, value=-1), square_avg
            ).sqrt()
        else:
            avg = square_avg.sqrt()
        avg = avg.add_(self.setting("eps"))
        neg_lr = self.derived("-lr", lambda g: -g["lr"])
        plain = param.addcdiv(grad * neg_lr, avg)
        if "momentum_buffer" in self.state:
            buf = self.state["momentum_buffer"]
            buf.mul_(self.setting("momentum")).addcdiv_(grad, avg)
            param.copy_(
                torch.where(self.setting("momentum") > 0, torch.addcmul(param, buf, neg_lr), plain)
            )
        else:
            param.copy_(plain)

    def export(self, row: int) -> list[dict[str, Any]]:
        group = self.optimizers[row].param_groups[0]
        states = super().export(row)
        for state in states:
            if group["momentum"] <= 0:
                state.pop("momentum_buffer", None)
            if not group["centered"]:
                state.pop("grad_avg", None)
        return states


class TorchRule(Rule):
    """Any other optimizer: each replica's own torch.optim object steps its views."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.views = [opt.param_groups[0]["params"] for opt in self.optimizers]
        self.frozen: set[int] = set()

    def step(self, param: Tensor, grad: Tensor) -> None:
        for row, (optimizer, views) in enumerate(zip(self.optimizers, self.views)):
            if row in self.frozen:
                continue
            offset = 0
            for view in views:
                n = view.numel()
                view.grad = grad[row, offset : offset + n].view(view.shape)
                offset += n
            optimizer.step()
            for view in views:
                view.grad = None
        self.steps += 1

    def export(self, row: int) -> list[dict[str, Any]]:
        optimizer = self.optimizers[row]
        return [dict(optimizer.state.get(view, {})) for view in self.views[row]]

    def load(self, row: int, states: list[dict[str, Any]]) -> None:
        pass  # its optimizer's own load_state_dict already put the state on the views


RULES: dict[type, type[Rule]] = {
    torch.optim.SGD: SGDRule,
    torch.optim.Adam: AdamRule,
    torch.optim.AdamW: AdamRule,
    torch.optim.Adagrad: AdagradRule,
    torch.optim.RMSprop: RMSpropRule,
}


def rule_for(optimizer: torch.optim.Optimizer) -> type[Rule]:
    group = optimizer.param_groups[0]
    vectorised = RULES.get(type(optimizer))
    if (
        vectorised is None
        or len(optimizer.param_groups) != 1
        or any(group.get(flag) for flag in UNSUPPORTED_FLAGS)
    ):
        return TorchRule
    return vectorised


class PopulationOptimizer(torch.optim.Optimizer):
    """The optimizer Lightning steps for a population. `factories[k]` builds replica k's torch
    optimizer; replicas are laid out so that those sharing a rule are contiguous rows."""

    def __init__(
        self,
        flat: nn.Parameter,
        shapes: list[torch.Size],
        factories: list[Callable[[Iterable[Tensor]], torch.optim.Optimizer]],
    ) -> None:
        super().__init__([flat], {})
        self.flat = flat
        self.shapes = shapes
        self.replicas = [factory(row_views(flat, k, shapes)) for k, factory in enumerate(factories)]
        self.frozen = torch.zeros(len(factories), dtype=torch.bool, device=flat.device)
        self.any_frozen = False
        self.rules: list[Rule] = []
        start = 0
        while start < len(self.replicas):
            kind = rule_for(self.replicas[start])
            stop = start + 1
            while (
                stop < len(self.replicas)
                and rule_for(self.replicas[stop]) is kind
                and type(self.replicas[stop]) is type(self.replicas[start])
            ):
                stop += 1
            self.rules.append(kind(start, stop, self.replicas[start:stop], flat, shapes))
            start = stop

    def settings_changed(self) -> None:
        """A schedule changed a replica's settings: the rules read them again."""
        for rule in self.rules:
            rule.settings_changed()

    def freeze(self, rows: list[int]) -> None:
        """These replicas keep their weights from now on (they diverged)."""
        self.frozen[rows] = True
        self.any_frozen = True
        for rule in self.rules:
            if isinstance(rule, TorchRule):
                rule.frozen.update(r - rule.start for r in rows if rule.start <= r < rule.stop)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad = self.flat.grad
        if grad is None:
            return loss
        data = self.flat.data
        kept = data.clone() if self.any_frozen else None
        for rule in self.rules:
            rule.step(data[rule.start : rule.stop], grad[rule.start : rule.stop])
        # a frozen row keeps its weights (without reading the mask on the host)
        if kept is not None:
            data.copy_(torch.where(self.frozen.unsqueeze(1), kept, data))
        return loss

    def replica_state_dict(self, k: int) -> dict[str, Any]:
        """Replica k's optimizer state exactly as its own torch.optim optimizer would save it."""
        rule = next(r for r in self.rules if r.start <= k < r.stop)
        optimizer = self.replicas[k]
        if not isinstance(rule, TorchRule):
            optimizer.state.clear()
            for view, state in zip(
                optimizer.param_groups[0]["params"], rule.export(k - rule.start)
            ):
                if state:
                    optimizer.state[view] = state
        return optimizer.state_dict()

    def load_replica_state_dict(self, k: int, state_dict: dict[str, Any]) -> None:
        rule = next(r for r in self.rules if r.start <= k < r.stop)
        optimizer = self.replicas[k]
        optimizer.load_state_dict(state_dict)
        rule.load(
            k - rule.start,
            [optimizer.state.get(view, {}) for view in optimizer.param_groups[0]["params"]],
        )
        if not isinstance(rule, TorchRule):
            optimizer.state.clear()

    def state_dict(self) -> dict[str, Any]:
        """Nothing of its own: each replica's state goes into that run's checkpoint
        (replica_state_dict), and a population resumes from those (load_state_dict)."""
        return {"replicas": None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for k, replica in enumerate(state_dict["replicas"]):
            self.load_replica_state_dict(k, replica)
