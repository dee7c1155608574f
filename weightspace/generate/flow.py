"""Flow matching over codes: a time-conditioned velocity field on a straight path.

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
from dataclasses import replace

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .config import ODE_SOLVERS, VELOCITY_KINDS, EncodingError, FlowSettings, GenerateError


class _Embeddings(nn.Module):
    """Time embedding (sinusoidal + learned), plus an optional scalar condition with a
    learned "no condition" vector (classifier-free guidance drops the condition)."""

    def __init__(self, width: int, temb: int, cond: int):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000), temb // 2)),
                             persistent=False)
        self.temb = nn.Sequential(nn.Linear(temb, width), nn.SiLU(), nn.Linear(width, width))
        if cond:
            self.cemb = nn.Sequential(nn.Linear(cond, width), nn.SiLU(), nn.Linear(width, width))
            self.null = nn.Parameter(torch.zeros(width))

    def forward(self, t, n, c=None, keep=None):
        ang = t.reshape(-1, 1).expand(n, 1) * self.freqs[None, :]
        e = self.temb(torch.cat([ang.sin(), ang.cos()], 1))
        if hasattr(self, "cemb"):
            ce = self.null.expand(n, -1)
            if c is not None:
                ce = self.cemb(c.reshape(n, -1))
                if keep is not None:  # training: some rows see no condition
                    ce = torch.where(keep[:, None], ce, self.null.expand(n, -1))
            e = e + ce
        return e


class Velocity(nn.Module):
    """MLP over ``[x, embed(t[, c])]``; the output layer starts at zero (the initial field
    is 0). The default for PCA codes (at most one number per zoo model)."""

    kind = "mlp"

    def __init__(self, dim: int, width: int = 512, depth: int = 3, temb: int = 64,
                 cond: int = 0):
        super().__init__()
        self.dim, self.width, self.depth, self.temb_dim, self.cond = dim, width, depth, temb, cond
        self.emb = _Embeddings(width, temb, cond)
        layers, d = [], dim + width
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, t, x, c=None, keep=None):
        e = self.emb(t, len(x), c, keep)
        return self.out(self.body(torch.cat([x, e], 1)))

    def config(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "width": self.width, "depth": self.depth,
                "temb": self.temb_dim, "cond": self.cond}


class TokenVelocity(nn.Module):
    """Transformer over per-layer tokens, for full (uncompressed) encodings of large models.

    The flat vector is cut tensor by tensor into tokens of ``token`` numbers (the last
    token of a tensor is zero-padded, so no token mixes two layers); each token is embedded
    linearly, gets a learned position, and the time (and condition) embedding is added.
    Pre-norm encoder layers, a zero-initialised linear read-out per token. Parameters grow
    with ``token`` and ``width``, not with the model size."""

    kind = "transformer"

    def __init__(self, dim: int, sizes: list[int], token: int = 256, width: int = 256,
                 depth: int = 4, heads: int = 4, temb: int = 64, cond: int = 0):
        super().__init__()
        if sum(sizes) != dim:
            raise EncodingError(f"tensor sizes sum to {sum(sizes)}, not the code dimension {dim}")
        self.dim, self.sizes, self.token, self.width = dim, list(sizes), token, width
        self.depth, self.heads, self.temb_dim, self.cond = depth, heads, temb, cond
        index, off = [], 0
        for n in sizes:  # gather index into [x, 0]: padding reads the appended zero
            k = -(-n // token)
            idx = torch.full((k * token,), dim, dtype=torch.long)
            idx[:n] = torch.arange(off, off + n)
            index.append(idx)
            off += n
        index = torch.cat(index)
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("valid", index < dim, persistent=False)
        self.tokens = len(index) // token
        self.emb = _Embeddings(width, temb, cond)
        self.inp = nn.Linear(token, width)
        self.pos = nn.Parameter(torch.randn(self.tokens, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True,
                                           norm_first=True)
        self.body = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, token)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, t, x, c=None, keep=None):
        n = len(x)
        tok = torch.cat([x, x.new_zeros(n, 1)], 1)[:, self.index].view(n, self.tokens, -1)
        h = self.inp(tok) + self.pos[None] + self.emb(t, n, c, keep)[:, None]
        y = self.out(self.norm(self.body(h))).reshape(n, -1)
        out = x.new_zeros(n, self.dim + 1)
        out[:, self.index[self.valid]] = y[:, self.valid]
        return out[:, :self.dim]

    def config(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "sizes": self.sizes, "token": self.token,
                "width": self.width, "depth": self.depth, "heads": self.heads,
                "temb": self.temb_dim, "cond": self.cond}


VELOCITIES = dict(zip(VELOCITY_KINDS, (Velocity, TokenVelocity)))


MAX_VELOCITY_PARAMETERS = 2_000_000_000

_INT_BOUNDS = {"dim": (1, 10**10), "width": (1, 65536), "depth": (1, 256), "temb": (1, 65536),
               "cond": (0, 4096), "token": (1, 10**7), "heads": (1, 4096)}


def check_velocity_config(cfg, where: str = "velocity") -> dict:
    """A velocity config (from flags or a generator file) that can be built: known kind,
    integers in range, heads dividing the width, tensor sizes summing to the dimension,
    and a parameter count that fits in memory. Raises :class:`GenerateError`."""
    def bad(msg):
        raise GenerateError(f"{where}: {msg}")
    if not isinstance(cfg, dict):
        bad("the velocity config must be a JSON object")
    kind = cfg.get("kind", "mlp")
    if kind not in VELOCITIES:
        bad(f"unknown velocity model {kind!r}; known: {', '.join(VELOCITIES)}")
    for k, v in cfg.items():
        if k in _INT_BOUNDS:
            lo, hi = _INT_BOUNDS[k]
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                bad(f"{k} must be an integer in [{lo}, {hi}], got {v!r}")
    width, depth = cfg.get("width", 512), cfg.get("depth", 3)
    if kind == "transformer":
        heads, sizes = cfg.get("heads", 4), cfg.get("sizes")
        if width % heads:
            bad(f"width {width} is not divisible by heads {heads}")
        if not isinstance(sizes, list) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes) \
                or sum(sizes) != cfg.get("dim"):
            bad("sizes must be positive integers summing to dim")
        tokens = sum(-(-n // cfg.get("token", 256)) for n in sizes)
        params = depth * 12 * width * width + tokens * width + 2 * cfg.get("token", 256) * width
    else:
        params = (cfg.get("dim", 1) + width) * width * 2 + depth * width * width
    if params > MAX_VELOCITY_PARAMETERS:
        bad(f"about {params:.2e} parameters is more than fits in memory "
            f"(at most {MAX_VELOCITY_PARAMETERS:.0e}); use a smaller width or depth")
    return cfg


def make_velocity(cfg: dict) -> nn.Module:
    """A velocity field from its ``config()`` (saved with the generator)."""
    cfg = dict(check_velocity_config(cfg))
    kind = cfg.pop("kind", "mlp")
    try:
        return VELOCITIES[kind](**cfg)
    except TypeError as e:
        raise GenerateError(f"velocity config: {e}") from None


def ot_pair(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """x0 reordered so that pair i is the optimal-transport partner of x1[i]."""
    cost = torch.cdist(x1.double(), x0.double()).pow(2).cpu().numpy()
    _, cols = linear_sum_assignment(cost)
    return x0[torch.from_numpy(cols).to(x0.device)]


def straight_path(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor):
    """The straight probability path between noise ``x0`` and data ``x1`` [B, D] at times
    ``t`` [B]: ``(x_t, u)`` with ``x_t = (1 - t) x0 + t x1`` and its velocity ``u = x1 - x0``."""
    return (1 - t[:, None]) * x0 + t[:, None] * x1, x1 - x0


def flow_matching_loss(model: nn.Module, t, xt, u, c=None, keep=None) -> torch.Tensor:
    """Mean squared error between the field at ``(t, x_t)`` and the path's velocity ``u``."""
    return (model(t, xt, c, keep) - u).pow(2).mean()


@torch.no_grad()
def ema_update(avg: nn.Module, model: nn.Module, step: int, decay: float) -> None:
    """``avg <- avg + (1 - d) (model - avg)`` with the warm-up ``d = min(decay, (1 + step) /
    (10 + step))`` (early averages do not remember the random initialisation)."""
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(avg.parameters()), list(model.parameters()), 1 - d)


def train_flow(codes: torch.Tensor, settings: FlowSettings | None = None, *,
               velocity: dict | None = None, cond: torch.Tensor | None = None,
               state: dict | None = None, on_step=None, checkpoint_every: int = 500,
               on_checkpoint=None, until: int | None = None, **overrides):
    """Train a velocity field on ``codes`` [N, D]; resume from ``state`` if given.

    ``settings`` (or its fields as keyword ``overrides``) is the recipe; ``velocity`` a
    :func:`make_velocity` config (default: ``settings``' network over the whole code).
    ``cond`` [N] or [N, C] conditions the field (one row per model); each training row
    drops it with probability ``p_uncond`` so the same network also learns the
    unconditional field (classifier-free guidance). Each step: draw data, noise and times,
    couple noise to data (minibatch OT), regress the straight path's velocity, update the
    EMA. (One loop with its resume state and callbacks: splitting it would pass the same
    nine things between the pieces.)

    Returns ``(ema_model, training_state)`` where the state holds the raw and EMA weights,
    optimizer state and step, for :func:`train_flow` to resume from. ``until`` stops after
    that step (a time-boxed run; call again with the state to continue)."""
    from accelerate import Accelerator
    s = settings if settings is not None else FlowSettings(**overrides)
    if settings is not None and overrides:
        s = replace(settings, **overrides)
    acc = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(s.seed)
    if cond is not None:
        cond = cond.reshape(len(codes), -1).float()
    velocity = velocity or s.velocity_config(codes.shape[1], [codes.shape[1]])
    model = make_velocity({**velocity, "cond": 0 if cond is None else cond.shape[1]})
    avg = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.0, foreach=True)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        avg.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
    model, opt = acc.prepare(model, opt)
    avg.to(acc.device)
    data = codes.to(acc.device)
    cdata = None if cond is None else cond.to(acc.device)
    gen = torch.Generator().manual_seed(s.seed + 1000 * acc.process_index)

    def draw():
        return (torch.randint(len(data), (s.batch_size,), generator=gen),
                torch.randn(s.batch_size, data.shape[1], generator=gen),
                torch.rand(s.batch_size, generator=gen),
                torch.rand(s.batch_size, generator=gen) >= s.p_uncond)

    for _ in range(start):  # replay the random stream so a resumed run equals a fresh one
        draw()
    step = start
    for step in range(start + 1, min(s.steps, until or s.steps) + 1):
        idx, x0, t, keep = (v.to(acc.device) for v in draw())
        x1, x0 = data[idx], s.sigma * x0
        if s.ot:
            x0 = ot_pair(x0, x1)
        xt, u = straight_path(x0, x1, t)
        loss = flow_matching_loss(model, t, xt, u, None if cdata is None else cdata[idx], keep)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        ema_update(avg, acc.unwrap_model(model), step, s.ema)
        if on_step is not None:
            on_step(step, float(loss.detach()))
        last = step == s.steps or step == until
        if on_checkpoint is not None and (step % checkpoint_every == 0 or last) \
                and acc.is_main_process:
            on_checkpoint(_state(acc, model, avg, opt, step))
    return avg.cpu().eval(), _state(acc, model, avg, opt, step)


def _state(acc, model, avg, opt, step) -> dict:
    return {"config": acc.unwrap_model(model).config(),
            "model": {k: v.detach().cpu().clone()
                      for k, v in acc.unwrap_model(model).state_dict().items()},
            "ema": {k: v.detach().cpu().clone() for k, v in avg.state_dict().items()},
            "opt": opt.state_dict(), "step": step}


@torch.no_grad()
def sample(model: nn.Module, n: int, steps: int = 10, method: str = "midpoint",
           sigma: float = 1.0, seed: int = 0, cond=None, guidance: float = 1.0
           ) -> tuple[torch.Tensor, int]:
    """``n`` codes by integrating the field from noise; returns (codes, function evals).

    With a conditional field, ``cond`` (a value, or one row per sample) picks the
    condition and ``guidance`` w mixes ``v_uncond + w (v_cond - v_uncond)`` (w = 1: plain
    conditional sampling; each evaluation then runs both in one batch)."""
    from torchdiffeq import odeint
    if method not in ODE_SOLVERS:
        raise GenerateError(f"unknown ODE method {method!r}; methods: "
                            f"{', '.join(ODE_SOLVERS)}")
    if steps < 1:
        raise GenerateError(f"steps must be >= 1, got {steps}")
    if cond is not None and not getattr(model, "cond", 0):
        raise GenerateError("this generator was fitted without a condition")
    gen = torch.Generator().manual_seed(seed)
    x0 = sigma * torch.randn(n, model.dim, generator=gen)
    if cond is not None:
        cond = torch.as_tensor(cond, dtype=torch.float32).reshape(-1, model.cond)
        cond = cond.expand(n, -1) if len(cond) == 1 else cond
    nfe = 0

    def f(t, x):
        nonlocal nfe
        nfe += 1
        if cond is None:
            return model(t.expand(len(x)), x)
        if guidance == 1.0:
            return model(t.expand(len(x)), x, cond)
        both = model(t.expand(2 * len(x)), torch.cat([x, x]), torch.cat([cond, cond]),
                     torch.arange(2 * len(x)) < len(x))
        vc, vu = both[:len(x)], both[len(x):]
        return vu + guidance * (vc - vu)

    ts = torch.tensor([0.0, 1.0])
    if method == "dopri5":
        out = odeint(f, x0, ts, method="dopri5", rtol=1e-4, atol=1e-4)
    else:
        out = odeint(f, x0, ts, method=method, options={"step_size": 1.0 / steps})
    return out[-1], nfe
