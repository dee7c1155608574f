"""Many models of one built-in architecture run as one network, stacked along channels.

``vmap`` over a conv net turns every convolution into a grouped one *and* wraps it in
transposes that move the model axis in and out of the channel axis, on every layer, forward
and backward. Here the models live in the channel axis for the whole network instead:
activations are ``[B, N*C, H, W]`` (model ``k`` owns channels ``k*C .. (k+1)*C``), a conv is
one ``groups=N`` convolution, BatchNorm over ``N*C`` channels *is* per-model BatchNorm (each
channel's statistics are taken over its own model's batch), pooling and activations act per
channel. Linear layers keep the model axis in front (``[N, B, F]``) and are one ``baddbmm``.

Parameters are stored as the stacked per-model tensors (``[N, *shape]``, the layout of
``torch.func.stack_module_state``) merged into the leading axis where a layer wants that
(``[N*Cout, Cin, k, k]`` for conv weights): a view, so the optimizer sees exactly the
elements of N separate models and, being elementwise, updates each as its own optimizer
would.

Only the built-in ``mlp``, ``vgg11`` and ``resnet20`` (``weightspace.models``) are known
here; :func:`unsupported` says why another model is not, and callers fall back to ``vmap``
or one model at a time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .models import ACTIVATIONS, MLP, VGG, BasicBlock, LayerNorm2d, ResNet20

_PLAIN = (nn.Flatten, nn.Identity, nn.Dropout, nn.MaxPool2d, nn.Sequential, BasicBlock,
          nn.Linear, *ACTIVATIONS.values())


def unsupported(model: nn.Module) -> str | None:
    """None if :class:`Stack` can run ``model``; else the first reason it cannot."""
    if type(model) not in (MLP, VGG, ResNet20):
        return f"{type(model).__name__} is not a built-in mlp, vgg or resnet"
    for name, m in model.named_modules():
        where = f"{name or 'model'} ({type(m).__name__})"
        if type(m) is nn.Conv2d:
            if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                return f"{where}: only ungrouped, zero-padded convolutions"
        elif type(m) is nn.BatchNorm2d:
            if not (m.affine and m.track_running_stats) or m.momentum is None:
                return f"{where}: only affine BatchNorm with running stats and a momentum"
        elif type(m) is LayerNorm2d:
            if m.weight is None or m.bias is None:
                return f"{where}: only affine LayerNorm"
        elif type(m) is nn.AdaptiveAvgPool2d:
            if m.output_size not in (1, (1, 1)):
                return f"{where}: only global average pooling"
        elif type(m) in (MLP, VGG, ResNet20) and m is model:
            continue
        elif type(m) not in _PLAIN:
            return f"{where}: layer type not supported by the stacked path"
    return None


class Stack:
    """The stacked layout of ``n`` models shaped like ``template`` (any device, even meta).

    ``stack`` / ``unstack`` convert between per-model state dicts and the stacked dict;
    ``forward`` runs all models at once and returns logits ``[N, B, classes]``.
    """

    def __init__(self, template: nn.Module, n: int):
        why = unsupported(template)
        if why:
            raise ValueError(why)
        self.model, self.n = template, n
        self.names = {m: name for name, m in template.named_modules()}
        state = template.state_dict(keep_vars=True)
        self.shapes = {k: tuple(v.shape) for k, v in state.items()}
        # tensors whose model axis merges into their first axis (conv, BatchNorm, conv bias)
        self.merged = set()
        for m, name in self.names.items():
            if type(m) in (nn.Conv2d, nn.BatchNorm2d):
                self.merged |= {f"{name}.{k}" for k in ("weight", "bias", "running_mean",
                                                        "running_var") if f"{name}.{k}" in state}

    # ------------------------------------------------------------------ layout
    def merge(self, key: str, t: torch.Tensor) -> torch.Tensor:
        """``[N, *shape]`` -> the layout the stacked forward reads (a view when contiguous)."""
        return t.reshape(-1, *t.shape[2:]) if key in self.merged else t

    def stack(self, states: list[dict], device=None) -> dict[str, torch.Tensor]:
        """Per-model state dicts -> one stacked dict (parameters and buffers)."""
        if len(states) != self.n:
            raise ValueError(f"expected {self.n} state dicts, got {len(states)}")
        return {k: self.merge(k, torch.stack([s[k] for s in states]).to(device))
                for k in self.shapes}

    def unstack(self, stacked: dict[str, torch.Tensor]) -> list[dict]:
        """The stacked dict -> ``n`` detached CPU state dicts (the keys of ``state_dict()``)."""
        return [{k: stacked[k].detach().view(self.n, *shape)[i].to("cpu").clone()
                 for k, shape in self.shapes.items()} for i in range(self.n)]

    # ------------------------------------------------------------------ forward
    def forward(self, p: dict[str, torch.Tensor], x: torch.Tensor, training: bool,
                shared: bool = False, momentum: float | None = None) -> torch.Tensor:
        """Logits ``[N, B, classes]``.

        ``x`` is ``[N, B, *input]`` (each model its own batch) or, with ``shared``, one
        batch ``[B, *input]`` that every model sees (evaluation): then the first layer is a
        plain (ungrouped) conv / linear with all models' filters, and nothing is copied N
        times. In training mode BatchNorm uses and updates per-model batch statistics, with
        ``momentum`` in place of each layer's own when given.
        """
        run = _Run(self, p, training, shared, momentum)
        if isinstance(self.model, MLP):
            return run.mlp(x)
        n, c = self.n, x.shape[-3]
        h = x if shared else x.transpose(0, 1).reshape(x.shape[1], n * c, *x.shape[-2:])
        body = run.vgg if isinstance(self.model, VGG) else run.resnet
        return body(h)


class _Run:
    """One forward pass: reads parameters by module name, tracks the 'first layer' state."""

    def __init__(self, stack: Stack, p: dict, training: bool, shared: bool,
                 momentum: float | None = None):
        self.s, self.p, self.training, self.first = stack, p, training, shared
        self.momentum = momentum

    def _get(self, m: nn.Module, key: str) -> torch.Tensor | None:
        return self.p.get(f"{self.s.names[m]}.{key}")

    def conv(self, m: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
        groups = 1 if self.first else self.s.n  # shared input: every filter sees all of it
        self.first = False
        return F.conv2d(h, self._get(m, "weight"), self._get(m, "bias"), m.stride, m.padding,
                        m.dilation, groups)

    def norm(self, m: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if type(m) is nn.BatchNorm2d:
            if self.training:
                self._get(m, "num_batches_tracked").add_(1)
            return F.batch_norm(h, self._get(m, "running_mean"), self._get(m, "running_var"),
                                self._get(m, "weight"), self._get(m, "bias"), self.training,
                                m.momentum if self.momentum is None else self.momentum, m.eps)
        if type(m) is LayerNorm2d:  # per model, over its own channels
            b, _, hh, ww = h.shape
            c = m.normalized_shape[0]
            z = h.view(b, self.s.n, c, hh, ww).permute(0, 1, 3, 4, 2)
            z = F.layer_norm(z, (c,), eps=m.eps)
            z = z * self._get(m, "weight")[:, None, None] + self._get(m, "bias")[:, None, None]
            return z.permute(0, 1, 4, 2, 3).reshape(b, -1, hh, ww)
        return h  # Identity

    def linear(self, m: nn.Linear, h: torch.Tensor) -> torch.Tensor:
        """``[N, B, in]`` (or shared ``[B, in]``) -> ``[N, B, out]``."""
        w, bias = self._get(m, "weight"), self._get(m, "bias")
        if h.dim() == 2:  # one input for all models: one matmul with all models' rows
            self.first = False
            out = F.linear(h, w.reshape(-1, w.shape[-1]),
                           None if bias is None else bias.reshape(-1))
            return out.view(h.shape[0], self.s.n, -1).transpose(0, 1)
        if bias is None:
            return torch.bmm(h, w.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2))

    def head(self, fc: nn.Linear, h: torch.Tensor) -> torch.Tensor:
        """Globally pooled ``[B, N*C, 1, 1]`` -> logits ``[N, B, classes]``."""
        h = h.flatten(1).view(h.shape[0], self.s.n, -1).transpose(0, 1)
        return self.linear(fc, h)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1) if self.first else x.flatten(2)
        for m in self.s.model:
            if type(m) is nn.Linear:
                h = self.linear(m, h)
            elif type(m) is nn.Dropout:
                h = F.dropout(h, m.p, self.training)
            elif type(m) is not nn.Flatten:
                h = m(h)
        return h

    def vgg(self, h: torch.Tensor) -> torch.Tensor:
        model = self.s.model
        for m in model.features:
            if type(m) is nn.Conv2d:
                h = self.conv(m, h)
            elif type(m) in (nn.BatchNorm2d, LayerNorm2d, nn.Identity):
                h = self.norm(m, h)
            else:  # activation, max-pool: per channel
                h = m(h)
        return self.head(model.classifier, model.pool(h))

    def resnet(self, h: torch.Tensor) -> torch.Tensor:
        model = self.s.model
        h = model.act(self.norm(model.norm1, self.conv(model.conv1, h)))
        for blk in model.blocks:
            y = blk.act(self.norm(blk.norm1, self.conv(blk.conv1, h)))
            y = self.norm(blk.norm2, self.conv(blk.conv2, y))
            sc = h if len(blk.shortcut) == 0 else self.norm(blk.shortcut[1],
                                                            self.conv(blk.shortcut[0], h))
            h = blk.act(y + sc)
        return self.head(model.fc, model.pool(h))
