"""Train many networks of one architecture: batched across seeds, or one at a time.

**Batched** (the default): the models of one chunk share architecture and hyperparameters
and train together in one process. Their parameters and buffers are stacked with
``torch.func.stack_module_state`` and one ``vmap``-ed ``functional_call`` runs all of them;
each model still has its own seed (initialisation), its own data order and its own
optimizer state. The optimizers used here (SGD, Adam, AdamW) act elementwise, so one
optimizer over the stacked tensors *is* one optimizer per model, and the summed loss gives
every model exactly the gradient of its own loss. BatchNorm statistics are stacked buffers
that ``vmap`` updates per model. Dropout draws independent masks per model.

**Sequential** (``batched=False``, or when a model cannot be batched): the same recipe, one
``nn.Module`` at a time. Both paths build every model from ``torch.manual_seed(seed)`` and
draw its data order from ``torch.Generator().manual_seed(seed)``, so a batched model and its
sequential twin differ only by floating-point summation order (and dropout masks).

(Over 400 lines: the batched and sequential paths are kept side by side, in one file, so
that their equal recipe stays visible.)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..arch import build

from .hparams import HParams, TrainError
from ..evaluation import (TRAIN_EVAL_MAX, eval_batched, evaluate, logits,  # noqa: F401
                          metrics, quiet_vmap, recalibrate)
from ..stacked import Stack, unsupported



def make_optimizer(params: list[torch.Tensor], hp: HParams) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW, fused where the device supports it (identical maths, fewer ops)."""
    impl = {"fused": True} if all(p.device.type in ("cpu", "cuda") for p in params) else {}
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    extra = {"momentum": hp.momentum} if hp.optimizer == "sgd" else {}
    return cls[hp.optimizer](params, lr=hp.lr, weight_decay=hp.weight_decay, **extra, **impl)


def make_schedule(opt, hp: HParams, total_steps: int, done_steps: int = 0):
    """The per-step learning-rate schedule, ``done_steps`` into it (training continued)."""
    if hp.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s + done_steps, total_steps)
                                               / total_steps)))
    return None


def init_model(arch: str, seed: int) -> nn.Module:
    """The model a seed names: built right after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return build(arch)


OptState = dict  # parameter name -> {field: tensor} (Adam's step / exp_avg / ..., SGD's momentum)


@dataclass(frozen=True)
class Start:
    """Where a model's training begins: its weights (a full state dict), the ``epoch`` of
    the recipe already done (its data order and learning-rate schedule continue from
    there), and the optimizer's state by parameter name (None: a fresh optimizer).

    ``Start(init_model(arch, s).state_dict())`` is training from scratch; a zoo model's
    checkpoint after K epochs (with its optimizer state) continues it (:mod:`.spawn`)."""

    state: dict
    epoch: int = 0
    optimizer: OptState | None = None


def _opt_export(opt: torch.optim.Optimizer, params: list[torch.Tensor], names: list[str],
                n: int) -> list[OptState]:
    """Each of ``n`` stacked models' optimizer state by parameter name (CPU copies)."""
    out: list[OptState] = [{} for _ in range(n)]
    for p, name in zip(params, names):
        for field, v in opt.state.get(p, {}).items():
            if not isinstance(v, torch.Tensor):
                continue
            for i in range(n):
                # one model: its own shape; stacked: model i's part, flat (any layout)
                part = v if v.dim() == 0 or n == 1 else v.detach().reshape(n, -1)[i]
                out[i].setdefault(name, {})[field] = part.to("cpu").clone()
    return out


def _opt_import(opt: torch.optim.Optimizer, params: list[torch.Tensor], names: list[str],
                states: list[OptState]) -> None:
    """Load per-model optimizer states (by parameter name) into ``opt`` over the stacked
    ``params`` (``[N * ...]`` in any layout that is a reshape of ``[N, *shape]``)."""
    full = opt.state_dict()
    for j, (p, name) in enumerate(zip(params, names)):
        fields = states[0].get(name, {})
        rec = {}
        for field, v in fields.items():
            if v.dim() == 0:
                rec[field] = v.clone()
            else:
                rec[field] = torch.stack([s[name][field].reshape(-1) for s in states]).reshape(
                    p.shape).to(p.device, p.dtype)
        if rec:
            full["state"][j] = rec
    opt.load_state_dict(full)


def snapshot_epochs(epochs: int, k: int) -> list[int]:
    """Epochs (1-based) at which to keep intermediate checkpoints, final epoch excluded."""
    return sorted({round(epochs * j / k) for j in range(1, k)} - {0, epochs})


# A callback gets (epoch, states) after each snapshot epoch; progress gets per-step losses.
SnapshotFn = Callable[[int, list[dict]], None]
StepFn = Callable[[torch.Tensor], None]


class _Order:
    """Per-model data order: one generator per seed, a fresh permutation per epoch."""

    def __init__(self, seeds: list[int], n: int, batch_size: int, skip: int = 0):
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.n, self.bs = n, batch_size
        for _ in range(skip):  # epochs already trained: their orders are drawn, not used
            self.epoch()

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.bs)

    def epoch(self) -> torch.Tensor:  # [models, n]
        return torch.stack([torch.randperm(self.n, generator=g) for g in self.gens])


class _Engine:
    """N models as trainable tensors: what one training step reads and writes.

    ``forward`` maps the models' input batches ``[N, B, *input]`` to logits ``[N, B, C]``;
    ``states`` returns N detached CPU state dicts; ``params`` are the optimizer's leaves.
    """

    def __init__(self, params: list[torch.Tensor], forward: Callable, states: Callable, n: int):
        self.params, self.forward, self.states, self.n = params, forward, states, n
        self.names: list[str] = []  # the parameter name of each of ``params``


def _stacked_engine(arch: str, states: list[dict], device) -> _Engine:
    """Models stacked along channels (:mod:`.stacked`): one grouped conv per layer."""
    base = build(arch).to("meta")
    stack = Stack(base, len(states))
    tensors = stack.stack(states, device)
    names = [name for name, _ in base.named_parameters()]
    for k in names:
        tensors[k] = tensors[k].detach().requires_grad_()
    engine = _Engine([tensors[k] for k in stack.shapes if k in set(names)],
                     lambda xb: stack.forward(tensors, xb, True),
                     lambda: stack.unstack(tensors), len(states))
    engine.names = [k for k in stack.shapes if k in set(names)]
    return engine


def _vmap_engine(arch: str, states: list[dict], device) -> _Engine:
    """Any architecture ``functional_call`` can run: ``vmap`` over stacked module states."""
    base = build(arch).to("meta").train()
    names = [k for k, _ in base.named_parameters()]
    params = {k: torch.stack([s[k] for s in states]).detach().to(device).requires_grad_()
              for k in names}
    extra = [k for k, _ in base.named_buffers() if k not in states[0]]
    own = dict(build(arch).named_buffers()) if extra else {}  # non-persistent buffers
    buffers = {k: torch.stack([s[k] if k in s else own[k] for s in states]).to(device)
               for k, _ in base.named_buffers()}

    def f(p, b, xb):
        return functional_call(base, (p, b), (xb,))

    fwd = vmap(f, randomness="different")
    engine = _Engine(list(params.values()), lambda xb: fwd(params, buffers, xb),
                     lambda: _unstack(params, buffers, len(states)), len(states))
    engine.names = names
    return engine


def batched_impl(arch: str) -> str:
    """``stacked`` where :mod:`.stacked` knows the architecture, else ``vmap``."""
    try:
        return "vmap" if unsupported(build(arch).to("meta")) else "stacked"
    except Exception:  # noqa: BLE001 - a model that cannot go to meta: let vmap try
        return "vmap"


def _engine(arch: str, states: list[dict], device, impl: str) -> _Engine:
    """The engine of models starting from ``states`` (one state dict per model)."""
    if impl == "auto":
        impl = batched_impl(arch)
    if impl == "stacked":
        return _stacked_engine(arch, states, device)
    if impl == "vmap":
        return _vmap_engine(arch, states, device)
    raise TrainError(f"batched implementation must be auto, stacked or vmap, got {impl!r}")


def _starts(arch: str, seeds: list[int], starts: list[Start] | None) -> list[Start]:
    """Where each model begins: ``starts`` as given (checked: one per model, one epoch),
    else every seed's own initialisation."""
    if starts is None:
        return [Start(init_model(arch, s).state_dict()) for s in seeds]
    if len(starts) != len(seeds):
        raise TrainError(f"starts must be one per seed ({len(seeds)}), got {len(starts)}")
    if len({s.epoch for s in starts}) > 1 or len({s.optimizer is None for s in starts}) > 1:
        raise TrainError("starts trained together must share their epoch and all have (or "
                         "all lack) an optimizer state")
    return list(starts)


def _batched_step(engine: _Engine, opt, x: torch.Tensor, y: torch.Tensor,
                  idx: torch.Tensor) -> torch.Tensor:
    """One step for all models: the summed loss gives each model its own gradient."""
    with quiet_vmap():
        out = engine.forward(x[idx])
        losses = F.cross_entropy(out.flatten(0, 1), y[idx].flatten(),
                                 reduction="none").view(engine.n, -1).mean(1)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
    opt.step()
    return losses.detach()


def train_batched(arch: str, seeds: list[int], hp: HParams, x: torch.Tensor, y: torch.Tensor,
                  on_step: StepFn | None = None, on_snapshot: SnapshotFn | None = None,
                  snapshots: list[int] = (), impl: str = "auto",
                  starts: list[Start] | None = None) -> list[dict]:
    """Train ``len(seeds)`` models together; returns their state dicts.

    ``impl``: ``stacked`` (models along channels, built-in architectures: no per-layer
    transposes), ``vmap`` (any architecture ``functional_call`` runs), or ``auto``: stacked
    where supported, else vmap. (Channels-last memory was tried for the stacked layout: a
    few percent faster at 28x28 on a CPU, but its results drifted from the other paths.)
    ``starts``: where each model begins (:class:`Start`; default: seed ``s`` initialises
    model ``s``); the seeds still name each model's data order and dropout.
    """
    return train_batched_from(arch, seeds, hp, x, y, on_step, on_snapshot, snapshots, impl,
                              starts)[0]


def train_batched_from(arch: str, seeds: list[int], hp: HParams, x: torch.Tensor,
                       y: torch.Tensor, on_step: StepFn | None = None,
                       on_snapshot: SnapshotFn | None = None, snapshots: list[int] = (),
                       impl: str = "auto", starts: list[Start] | None = None,
                       until: int | None = None) -> tuple[list[dict], list[OptState]]:
    """:func:`train_batched` up to epoch ``until`` (default: the recipe's last), also
    returning each model's optimizer state by parameter name (to continue it later)."""
    device = x.device
    starts = _starts(arch, seeds, starts)
    engine = _engine(arch, [s.state for s in starts], device, impl)
    order = _Order(seeds, len(y), hp.batch_size, skip=starts[0].epoch)
    opt = make_optimizer(engine.params, hp)
    if starts[0].optimizer is not None:
        _opt_import(opt, engine.params, engine.names, [s.optimizer for s in starts])
    sched = make_schedule(opt, hp, hp.epochs * order.steps_per_epoch,
                          starts[0].epoch * order.steps_per_epoch)
    torch.manual_seed(seeds[0])  # the stream dropout draws from
    states = _epochs(hp, lambda: order.epoch().to(device).split(hp.batch_size, dim=1),
                     lambda idx: _batched_step(engine, opt, x, y, idx), sched, engine.states,
                     on_step, on_snapshot, snapshots, starts[0].epoch, until)
    return states, _opt_export(opt, engine.params, engine.names, len(seeds))


def _epochs(hp: HParams, batches, step, sched, states, on_step, on_snapshot, snapshots,
            first: int = 0, until: int | None = None):
    """The loop both paths share: per epoch after ``first`` up to ``until`` (default: the
    last), ``step`` every index batch of ``batches()`` (one new data order per call),
    advance the schedule, report, snapshot; returns ``states()``."""
    last = hp.epochs if until is None else until
    if not first <= last <= hp.epochs:
        raise TrainError(f"cannot train from epoch {first} to epoch {last} of a recipe of "
                         f"{hp.epochs} epochs")
    for epoch in range(first + 1, last + 1):
        for idx in batches():
            losses = step(idx)
            if sched is not None:
                sched.step()
            if on_step is not None:
                on_step(losses)
        if on_snapshot is not None and epoch in snapshots:
            on_snapshot(epoch, states())
    return states()


def _unstack(params: dict, buffers: dict, n: int) -> list[dict]:
    both = {**params, **buffers}
    return [{k: v[i].detach().to("cpu").clone() for k, v in both.items()} for i in range(n)]


def _sequential_step(model: nn.Module, opt, x: torch.Tensor, y: torch.Tensor,
                     idx: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(model(x[idx]), y[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach().view(1)


def train_sequential(arch: str, seed: int, hp: HParams, x: torch.Tensor, y: torch.Tensor,
                     on_step: StepFn | None = None, on_snapshot: SnapshotFn | None = None,
                     snapshots: list[int] = (), start: Start | None = None) -> list[dict]:
    """Train one model as a plain ``nn.Module`` (same recipe as the batched path);
    ``start``: where it begins (default: seed ``seed``'s initialisation)."""
    return train_sequential_from(arch, seed, hp, x, y, on_step, on_snapshot, snapshots,
                                 start)[0]


def train_sequential_from(arch: str, seed: int, hp: HParams, x: torch.Tensor,
                          y: torch.Tensor, on_step: StepFn | None = None,
                          on_snapshot: SnapshotFn | None = None, snapshots: list[int] = (),
                          start: Start | None = None, until: int | None = None
                          ) -> tuple[list[dict], list[OptState]]:
    """:func:`train_sequential` up to epoch ``until`` (default: the last), also returning
    the optimizer state by parameter name (to continue it later: :class:`Start`)."""
    start = _starts(arch, [seed], None if start is None else [start])[0]
    model = build(arch)
    model.load_state_dict(start.state)
    model = model.to(x.device).train()
    order = _Order([seed], len(y), hp.batch_size, skip=start.epoch)
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, hp)
    if start.optimizer is not None:
        _opt_import(opt, params, names, [start.optimizer])
    sched = make_schedule(opt, hp, hp.epochs * order.steps_per_epoch,
                          start.epoch * order.steps_per_epoch)
    torch.manual_seed(seed)

    def state():
        return [{k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}]

    states = _epochs(hp, lambda: order.epoch()[0].to(x.device).split(hp.batch_size),
                     lambda idx: _sequential_step(model, opt, x, y, idx), sched, state,
                     on_step, on_snapshot, snapshots, start.epoch, until)
    return states, _opt_export(opt, params, names, 1)


def can_batch(arch: str, x: torch.Tensor, y: torch.Tensor) -> str | None:
    """None if two models of ``arch`` train batched (stacked or vmap); else why not."""
    if batched_impl(arch) == "stacked":
        return None
    try:
        hp = HParams(epochs=1, batch_size=2)
        train_batched(arch, [0, 1], hp, x[:2], y[:2], impl="vmap")
    except Exception as e:  # noqa: BLE001 - anything vmap cannot do means "sequential"
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return None


# ---------------------------------------------------------------------- batched or not
def _time_steps(step: Callable[[torch.Tensor], torch.Tensor], batches: list[torch.Tensor],
                warmup: int, budget_s: float) -> float:
    """Fastest of the measured steps (after ``warmup``): robust to a busy machine's spikes.

    Stops measuring once ``budget_s`` is spent (at least one measured step).
    """
    for idx in batches[:warmup]:
        step(idx)
    best, spent = math.inf, 0.0
    for idx in batches[warmup:]:
        t = time.perf_counter()
        float(step(idx).sum())  # a sync point: on a GPU the step has finished
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
        if spent > budget_s:
            break
    return best


def step_seconds(arch: str, n: int, hp: HParams, x: torch.Tensor, y: torch.Tensor,
                 path: str, warmup: int = 2, measure: int = 3, budget_s: float = 5.0) -> float:
    """Seconds one training step of ``n`` models takes on ``path`` (real shapes and data).

    ``path`` is ``sequential`` (one model measured, times ``n``: the models are alike) or a
    batched implementation (``stacked``, ``vmap``). Models are throw-away.
    """
    seeds = list(range(n))
    order = _Order(seeds, len(y), hp.batch_size)
    steps = warmup + measure
    batches = [b for b in order.epoch().to(x.device).split(hp.batch_size, dim=1)
               if b.shape[1] == min(hp.batch_size, len(y))]
    batches = (batches * steps)[:steps]
    hp1 = HParams(**{**hp.to_dict(), "schedule": "none"})
    if path == "sequential":
        model = init_model(arch, 0).to(x.device).train()
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad], hp1)
        return n * _time_steps(lambda idx: _sequential_step(model, opt, x, y, idx[0]),
                               batches, warmup, budget_s / n)
    engine = _engine(arch, [init_model(arch, s).state_dict() for s in seeds], x.device, path)
    opt = make_optimizer(engine.params, hp1)
    return _time_steps(lambda idx: _batched_step(engine, opt, x, y, idx), batches, warmup,
                       budget_s)


def choose_path(arch: str, n: int, hp: HParams, x: torch.Tensor, y: torch.Tensor,
                log: Callable[[str], None] | None = None) -> dict:
    """Time one step of the batched and the sequential path on these shapes; pick the faster.

    Returns the record a zoo manifest keeps: ``{"path": "batched"|"sequential", "impl",
    "batched_step_s", "sequential_step_s", "models", "batch_size", "reason"}``. Batching is
    never chosen for one model, nor for an architecture that cannot be batched.
    """
    rec = {"models": n, "batch_size": hp.batch_size, "input_shape": list(x.shape[1:]),
           "impl": None, "batched_step_s": None, "sequential_step_s": None}
    if n < 2:
        return {**rec, "path": "sequential", "reason": "one model per chunk"}
    # measuring seeds and draws: it must not change what the zoo trains afterwards
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        why = can_batch(arch, x, y)
        if why:
            return {**rec, "path": "sequential", "reason": f"cannot batch: {why}"}
        impl = batched_impl(arch)
        t_b = step_seconds(arch, n, hp, x, y, impl)
        t_s = step_seconds(arch, n, hp, x, y, "sequential")
    path = "batched" if t_b <= t_s else "sequential"
    return {**rec, "path": path, "impl": impl, "batched_step_s": round(t_b, 6),
            "sequential_step_s": round(t_s, 6),
            "reason": f"measured: one step of {n} models {t_b * 1e3:.1f} ms batched ({impl}) "
                      f"vs {t_s * 1e3:.1f} ms one at a time"}
