"""How long symmetry discovery + verification takes, as a ratio to one forward pass.

Baseline: one eval-mode forward pass of the same model on the same input, measured in the
same process (median of 3). Discovery traces once, runs the graph once with labels, and
verification runs two forwards of a perturbed copy, so ~5-10x a forward is expected.

    .venv/bin/python scripts/benchmarks/spec_speed.py [REF ...]
"""
from __future__ import annotations

import statistics
import sys
import time

import torch

from weightspace.arch import build, input_shape
from weightspace.symmetry import symmetry_of

DEFAULT = ["timm:resnet50", "timm:vit_tiny_patch16_224", "resnet20?width=4",
           "timm:convnext_atto", "timm:densenet121"]


def _median_seconds(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(refs: list[str]) -> None:
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'model':<32} {'input':<16} {'forward s':>9} {'spec s':>8} {'ratio':>7} verified")
    for ref in refs:
        model = build(ref).eval()
        x = torch.randn(input_shape(ref, model))
        with torch.no_grad():
            model(x)  # warm-up
            fwd = _median_seconds(lambda: model(x))
        spec_s = _median_seconds(lambda: symmetry_of(model, x))
        s = symmetry_of(model, x)
        print(f"{ref:<32} {str(list(x.shape)):<16} {fwd:>9.3f} {spec_s:>8.2f} "
              f"{spec_s / fwd:>6.1f}x {s.verified}")


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
