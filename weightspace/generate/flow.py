"""Flow matching over codes: a time-conditioned MLP velocity field on a straight path.

Training: ``x_t = (1 - t) x0 + t x1`` with ``x0 ~ N(0, sigma^2 I)`` and ``x1`` a training
code; the network regresses the constant velocity ``x1 - x0``. ``ot=True`` pairs noise and
data inside each batch by an optimal assignment (minibatch OT: straighter paths, fewer
integration steps). An EMA of the weights is what samples. Training runs under
``accelerate`` (DDP when launched on several processes) and resumes from the last
checkpoint in the generator directory.

Sampling: ``torchdiffeq.odeint`` from t = 0 to 1 (euler, midpoint, rk4 with fixed steps,
or dopri5), batched, deterministic given a seed; the number of function evaluations is
counted.
"""
from __future__ import annotations

import copy
import math

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

METHODS = ("euler", "midpoint", "rk4", "dopri5")


class Velocity(nn.Module):
    """MLP over ``[x, embed(t)]`` with a sinusoidal + learned time embedding; the output
    layer starts at zero (the initial field is 0)."""

    def __init__(self, dim: int, width: int = 512, depth: int = 3, temb: int = 64):
        super().__init__()
        self.dim, self.width, self.depth, self.temb_dim = dim, width, depth, temb
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000), temb // 2)),
                             persistent=False)
        self.temb = nn.Sequential(nn.Linear(temb, width), nn.SiLU(), nn.Linear(width, width))
        layers, d = [], dim + width
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, 1).expand(len(x), 1)
        ang = t * self.freqs[None, :]
        e = self.temb(torch.cat([ang.sin(), ang.cos()], 1))
        return self.out(self.body(torch.cat([x, e], 1)))

    def config(self) -> dict:
        return {"dim": self.dim, "width": self.width, "depth": self.depth,
                "temb": self.temb_dim}


def ot_pair(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """x0 reordered so that pair i is the optimal-transport partner of x1[i]."""
    cost = torch.cdist(x1.double(), x0.double()).pow(2).cpu().numpy()
    _, cols = linear_sum_assignment(cost)
    return x0[torch.from_numpy(cols).to(x0.device)]


def train_flow(codes: torch.Tensor, steps: int = 3000, batch_size: int = 128,
               lr: float = 1e-3, width: int = 512, depth: int = 3, sigma: float = 1.0,
               ot: bool = True, ema: float = 0.999, seed: int = 0, state: dict | None = None,
               on_step=None, checkpoint_every: int = 500, on_checkpoint=None,
               until: int | None = None):
    """Train a velocity field on ``codes`` [N, D]; resume from ``state`` if given.

    Returns ``(ema_model, training_state)`` where the state holds the raw and EMA weights,
    optimizer state and step, for :func:`train_flow` to resume from. ``until`` stops after
    that step (a time-boxed run; call again with the state to continue)."""
    from accelerate import Accelerator
    acc = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(seed)
    model = Velocity(codes.shape[1], width, depth)
    avg = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        avg.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
    model, opt = acc.prepare(model, opt)
    avg.to(acc.device)
    data = codes.to(acc.device)
    gen = torch.Generator().manual_seed(seed + 1000 * acc.process_index)
    for _ in range(start):  # replay the random stream so a resumed run equals a fresh one
        torch.randint(len(data), (batch_size,), generator=gen)
        torch.randn(batch_size, data.shape[1], generator=gen)
        torch.rand(batch_size, generator=gen)
    step = start
    for step in range(start + 1, min(steps, until or steps) + 1):
        x1 = data[torch.randint(len(data), (batch_size,), generator=gen).to(acc.device)]
        x0 = sigma * torch.randn(batch_size, data.shape[1], generator=gen).to(acc.device)
        t = torch.rand(batch_size, generator=gen).to(acc.device)
        if ot:
            x0 = ot_pair(x0, x1)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        loss = (model(t, xt) - (x1 - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        with torch.no_grad():
            raw = acc.unwrap_model(model)
            decay = min(ema, (1 + step) / (10 + step))
            for pa, pm in zip(avg.parameters(), raw.parameters()):
                pa.lerp_(pm, 1 - decay)
        if on_step is not None:
            on_step(step, float(loss.detach()))
        last = step == steps or step == until
        if on_checkpoint is not None and (step % checkpoint_every == 0 or last) \
                and acc.is_main_process:
            on_checkpoint(_state(acc, model, avg, opt, step))
    return avg.cpu().eval(), _state(acc, model, avg, opt, step)


def _state(acc, model, avg, opt, step) -> dict:
    return {"model": {k: v.detach().cpu().clone()
                      for k, v in acc.unwrap_model(model).state_dict().items()},
            "ema": {k: v.detach().cpu().clone() for k, v in avg.state_dict().items()},
            "opt": opt.state_dict(), "step": step}


@torch.no_grad()
def sample(model: Velocity, n: int, steps: int = 10, method: str = "midpoint",
           sigma: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, int]:
    """``n`` codes by integrating the field from noise; returns (codes, function evals)."""
    from torchdiffeq import odeint
    if method not in METHODS:
        raise ValueError(f"unknown ODE method {method!r}; methods: {', '.join(METHODS)}")
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    gen = torch.Generator().manual_seed(seed)
    x0 = sigma * torch.randn(n, model.dim, generator=gen)
    nfe = 0

    def f(t, x):
        nonlocal nfe
        nfe += 1
        return model(t.expand(len(x)), x)

    ts = torch.tensor([0.0, 1.0])
    if method == "dopri5":
        out = odeint(f, x0, ts, method="dopri5", rtol=1e-4, atol=1e-4)
    else:
        out = odeint(f, x0, ts, method=method, options={"step_size": 1.0 / steps})
    return out[-1], nfe
