"""Evaluation of many networks of one architecture, one place for zoo, merge and generate:
outputs, loss and accuracy, per-example errors and probabilities, and BatchNorm
recalibration (running statistics recomputed on train data, never test).

Many models run stacked along channels where the architecture allows (built-in ones), else
under ``vmap``, else one at a time. Recalibration is one idea with one name:
:func:`recalibrate` for many state dicts of an architecture, :func:`recalibrate_state` for
one model; both use at most :data:`CALIBRATION_EXAMPLES` train examples unless told.
"""
from __future__ import annotations

import contextlib
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from .arch import build
from .stacked import Stack, unsupported

TRAIN_EVAL_MAX = 10_000  # train metrics are measured on at most this many train examples
CALIBRATION_EXAMPLES = 2048  # train examples BatchNorm statistics are recomputed on


@contextlib.contextmanager
def quiet_vmap():
    """vmap runs ops without a batching rule (e.g. CPU flash attention) one model at a time
    and says so in a UserWarning; callers already say which path they take in one line, so
    the raw warning is noise in a verb's output. Silenced here, where it is raised."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning,
                                message="There is a performance drop because we have not "
                                        "yet implemented the batching rule")
        yield


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def reset_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Recompute every BatchNorm's running statistics of ``model`` in place on ``x`` (a
    train-split sample): cumulative average over batches of ``batch_size``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    was = model.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for lo in range(0, len(x), batch_size):
        model(x[lo:lo + batch_size])
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.train(was)
    return model


def recalibrate_state(model: nn.Module, state: dict, x: torch.Tensor) -> dict:
    """``state`` with every BatchNorm's running statistics recomputed on ``x`` (a sample of
    the train split, never test): the step every interpolated, merged or generated model
    needs before it is evaluated. ``model`` serves as scratch (it ends up holding the
    result); a model without BatchNorm returns ``state`` as it is."""
    if not has_batchnorm(model):
        return state
    model.load_state_dict(state)
    reset_bn(model, x)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def loss_acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: dict | None = None,
             batch_size: int = 2048) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (with ``state`` if given) in eval mode."""
    was = model.training
    model.eval()
    tot, correct = 0.0, 0
    for lo in range(0, len(y), batch_size):
        xb, yb = x[lo:lo + batch_size], y[lo:lo + batch_size]
        out = model(xb) if state is None else functional_call(model, state, (xb,))
        tot += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(1) == yb).sum())
    model.train(was)
    n = max(len(y), 1)
    loss = tot / n
    return (loss if math.isfinite(loss) else float("inf")), correct / n


EVAL_ELEMENTS = 1 << 25  # cap on one stacked activation (floats) when evaluating many models


def _eval_batch(base: nn.Module, n: int, x: torch.Tensor, batch: int) -> int:
    """Examples per stacked forward: ``batch``, fewer when N models' widest activation
    (first layer, ``N*C*H*W`` floats per example) would not fit :data:`EVAL_ELEMENTS`."""
    first = next((m for m in base.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    width = first.out_channels * x[0, 0].numel() if isinstance(first, nn.Conv2d) else \
        getattr(first, "out_features", 1)
    return max(1, min(batch, EVAL_ELEMENTS // max(1, n * width)))


def eval_batched(arch: str, states: list[dict], x: torch.Tensor) -> bool:
    """Whether evaluation runs ``states`` together by default: on a GPU, where one model at
    a time leaves it idle; not on a CPU, where a forward pass has no optimizer or autograd
    work to share and the stacked layers measured slower than the loop
    (``scripts/benchmarks/zoo_throughput.py --eval``; docs/results.md). A timed probe on a
    small batch picked the wrong path, and one on the real batch costs more than it saves."""
    return len(states) > 1 and x.device.type == "cuda"


def _forward_fn(arch: str, states: list[dict], x: torch.Tensor, batched: bool | None):
    """All models on one batch, ``[n, b, C]``: with ``batched`` (None: :func:`eval_batched`)
    stacked along channels (built-in architectures), else under vmap; else (or unbatched)
    one model at a time. Returns the function and the largest batch it takes."""
    if batched is None:
        batched = eval_batched(arch, states, x)
    device, n = x.device, len(states)
    base = build(arch).to("meta").eval()
    if batched and n > 1 and not unsupported(base):
        stack = Stack(base, n)
        tensors = stack.stack(states, device)
        return (lambda xb: stack.forward(tensors, xb, False, shared=True)), \
            _eval_batch(base, n, x, 2048)
    if batched and n > 1:
        try:
            stacked = {k: torch.stack([s[k] for s in states]).to(device) for k in states[0]}
            fwd = vmap(lambda s, xb: functional_call(base, s, (xb,)), in_dims=(0, None))
            with quiet_vmap():
                fwd(stacked, x[:1])

            def run(xb):
                with quiet_vmap():
                    return fwd(stacked, xb)
            return run, 2048
        except Exception:  # noqa: BLE001 - fall back to one model at a time
            pass
    on_device = [{k: v.to(device) for k, v in s.items()} for s in states]
    return (lambda xb: torch.stack([functional_call(base, s, (xb,)) for s in on_device])), 2048


@torch.no_grad()
def recalibrate(arch: str, states: list[dict], x: torch.Tensor, batch_size: int = 256
                ) -> list[dict]:
    """``states`` with every BatchNorm's running statistics recomputed on ``x`` (a train
    sample, never test), as :func:`recalibrate_state` does one model at
    a time (cumulative average over batches of ``batch_size``), for many models of a
    built-in architecture in one stacked forward per batch where evaluation runs models
    together (:func:`eval_batched`). Models without BatchNorm come back as they are."""
    base = build(arch).to("meta")
    if not states or not has_batchnorm(base):
        return list(states)
    if unsupported(base) or not eval_batched(arch, states, x):
        net = build(arch)
        return [recalibrate_state(net, s, x) for s in states]
    # models per stacked pass: as many as keep one activation under EVAL_ELEMENTS floats
    chunk = _eval_batch(base, 1, x, EVAL_ELEMENTS) // batch_size or 1
    out = []
    for lo in range(0, len(states), chunk):
        part = states[lo:lo + chunk]
        stack = Stack(base, len(part))
        p = stack.stack(part, x.device)
        for k, v in p.items():  # reset_running_stats
            if k.endswith("running_mean") or k.endswith("num_batches_tracked"):
                v.zero_()
            elif k.endswith("running_var"):
                v.fill_(1.0)
        for i, b in enumerate(range(0, len(x), batch_size), 1):  # momentum None: 1 / i
            stack.forward(p, x[b:b + batch_size], True, shared=True, momentum=1.0 / i)
        out += stack.unstack(p)
    return out


@torch.no_grad()
def logits(arch: str, states: list[dict], x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    """``[models, examples, classes]``: every model's outputs on ``x`` (eval mode), run as
    :func:`evaluate` runs them (stacked, else vmap, else one at a time)."""
    fwd, cap = _forward_fn(arch, states, x, None)
    batch = min(batch, cap)
    return torch.cat([fwd(x[lo:lo + batch]) for lo in range(0, len(x), batch)], 1)


@torch.no_grad()
def evaluate(arch: str, states: list[dict], x: torch.Tensor, y: torch.Tensor,
             batch: int = 2048, batched: bool | None = None
             ) -> tuple[list[float], list[float]]:
    """Loss and accuracy of each model (eval mode) on (x, y).

    ``batched`` True: all models at once (built-in architectures stacked along channels,
    one grouped layer for all models; others under ``vmap`` if it can); False: one model
    at a time; None: the default of :func:`eval_batched` (together on a GPU only).
    """
    n = len(states)
    fwd, cap = _forward_fn(arch, states, x, batched)
    batch = min(batch, cap)
    loss_sum = torch.zeros(n, dtype=torch.float64)
    correct = torch.zeros(n, dtype=torch.long)
    for lo in range(0, len(y), batch):
        xb, yb = x[lo:lo + batch], y[lo:lo + batch]
        out = fwd(xb)                                                # [n, b, C]
        ce = F.cross_entropy(out.flatten(0, 1).float(), yb.repeat(n), reduction="none")
        loss_sum += ce.view(n, -1).sum(1).double().cpu()
        correct += (out.argmax(-1) == yb).sum(1).cpu()
    m = max(len(y), 1)
    return (loss_sum / m).tolist(), (correct.double() / m).tolist()


def metrics(arch: str, states: list[dict], data, device, splits=("train", "val", "test"),
            batched: bool | None = None) -> list[dict]:
    """Per-model ``{split}_loss`` / ``{split}_acc`` (train on its first TRAIN_EVAL_MAX)."""
    out = [{} for _ in states]
    for split in splits:
        x, y = data[split]
        if split == "train":
            x, y = x[:TRAIN_EVAL_MAX], y[:TRAIN_EVAL_MAX]
        losses, accs = evaluate(arch, states, x.to(device), y.to(device), batched=batched)
        for o, lo, a in zip(out, losses, accs):
            o[f"{split}_loss"] = lo if math.isfinite(lo) else None
            o[f"{split}_acc"] = a
    return out


@torch.no_grad()
def probabilities(arch: str, states: list[dict], x: torch.Tensor) -> torch.Tensor:
    """[models, examples, classes] softmax outputs (eval mode, run as :func:`logits`)."""
    return logits(arch, states, x).float().softmax(-1)


def errors(arch: str, states: list[dict], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[models, examples] bool: where each model's prediction is wrong."""
    return probabilities(arch, states, x).argmax(-1) != y
