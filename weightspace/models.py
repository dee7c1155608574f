"""Built-in architectures of the weight-space literature (small, CIFAR-style).

* ``mlp``: fully connected net on flattened inputs;
* ``vgg11``: CIFAR VGG-11 (3x3 convs, 5 max-pools, one linear classifier);
* ``resnet20``: CIFAR ResNet-20 as in Git Re-Basin (3 stages x 3 basic blocks, widths
  16w/32w/64w, 1x1 conv shortcuts when the shape changes).

Each takes ``norm`` = ``bn`` (BatchNorm), ``ln`` (LayerNorm over channels) or ``none``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "ln":
        return LayerNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be bn, ln or none, not {kind!r}")


def _act(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, not {name!r}")
    return ACTIVATIONS[name]


class MLP(nn.Sequential):
    """``mlp:64-128-128-10``: input width, hidden widths, output width (``dropout`` after
    each hidden activation when > 0)."""

    def __init__(self, widths: list[int], act: str = "relu", bias: bool = True,
                 dropout: float = 0.0):
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise ValueError(f"mlp needs at least two positive widths, got {widths}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b, bias=bias))
            if i < len(widths) - 2:
                layers.append(_act(act)())
                if dropout > 0:  # only then: dropout-free checkpoints keep their keys
                    layers.append(nn.Dropout(dropout))
        super().__init__(*layers)
        self.widths = list(widths)


class VGG(nn.Module):
    CFG = {"vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]}

    def __init__(self, name: str = "vgg11", width: float = 1, num_classes: int = 10,
                 norm: str = "bn", in_chans: int = 3, act: str = "relu", pools: int = 5):
        super().__init__()
        if not 0 <= pools <= 5:
            raise ValueError(f"pools must be between 0 and 5, got {pools}")
        layers: list[nn.Module] = []
        c = in_chans
        seen = 0
        for v in self.CFG[name]:
            if v == "M":  # the first `pools` halvings (small inputs: 8x8 digits take 3)
                seen += 1
                if seen <= pools:
                    layers.append(nn.MaxPool2d(2))
                continue
            out = max(1, int(round(v * width)))
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=norm == "none"), _norm2d(norm, out),
                       _act(act)()]
            c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        self.pools = pools

    def input_problem(self, shape: tuple[int, ...]) -> str | None:
        """None if inputs of ``shape`` (``(C, H, W)``) fit; else why, naming the ``pools``
        option that fixes it (each max-pool halves the input; torch's own error, "Output
        size is too small", names neither)."""
        side = min(shape[-2:])
        if side >= 2 ** self.pools:
            return None
        fit = max(0, side.bit_length() - 1)  # the most halvings that leave >= 1 pixel
        return (f"vgg11 with pools={self.pools} halves its input {self.pools} times and needs "
                f"inputs of at least {2 ** self.pools}x{2 ** self.pools}, got "
                f"{shape[-2]}x{shape[-1]}: pass the architecture option pools={fit} "
                f"(e.g. vgg11?pools={fit})")

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str, act: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _norm2d(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _norm2d(norm, cout)
        self.act = _act(act)()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          _norm2d(norm, cout))

    def forward(self, x):
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, width: float = 1, num_classes: int = 10, norm: str = "bn",
                 in_chans: int = 3, act: str = "relu", depth: int = 20):
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        n = (depth - 2) // 6
        w = [max(1, int(round(c * width))) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_chans, w[0], 3, 1, 1, bias=False)
        self.norm1 = _norm2d(norm, w[0])
        self.act = _act(act)()
        blocks, c = [], w[0]
        for i, cout in enumerate(w):
            for j in range(n):
                blocks.append(BasicBlock(c, cout, 2 if (i > 0 and j == 0) else 1, norm, act))
                c = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.blocks(self.act(self.norm1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))
