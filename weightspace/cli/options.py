"""Argument types with bounds, and a parser whose errors are one line.

A numeric option outside what can work (``--points 0``, ``-n 10**12``, ``--lr nan``) is
refused by argparse before anything runs, with the flag and the allowed range named."""
from __future__ import annotations

import argparse
import math
import sys


class Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors (``weightspace VERB: error: ...``), exit code 2."""

    def error(self, message: str):  # noqa: D102 - argparse API
        print(f"{self.prog}: error: {' '.join(message.split())}", file=sys.stderr)
        raise SystemExit(2)


def int_range(lo: int | None = None, hi: int | None = None):
    """An ``int`` type for argparse in ``[lo, hi]``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"{v} is out of range {_range(lo, hi)}")
        return v
    parse.__name__ = "integer"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                hi_open: bool = False):
    """A finite ``float`` type for argparse in ``[lo, hi]`` (``lo_open``: ``(lo, ...``)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) \
            or (hi is not None and (v >= hi if hi_open else v > hi))
        if bad:
            raise argparse.ArgumentTypeError(
                f"{text} is out of range {'(' if lo_open else '['}"
                f"{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}"
                f"{')' if hi_open else ']'}")
        return v
    parse.__name__ = "number"
    return parse


def _range(lo, hi) -> str:
    return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


SEED = int_range(0, 2**63 - 1)
POSITIVE = int_range(1)


def restarts(p: argparse.ArgumentParser) -> None:
    """``--restarts K``: K seeds of the matching's random group order, the best kept."""
    p.add_argument("--restarts", type=int_range(1, 1000), default=1,
                   help="align from K seeds of the random group order and keep the best: "
                        "lowest midpoint loss on a train subset when data is known, else "
                        "highest matching objective (1)")


def device(p: argparse.ArgumentParser) -> None:
    """``--device``: where models, costs, interpolation and evaluation run."""
    p.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                   help="where the work runs: auto (default: this process's CUDA device if "
                        "there is one, else the CPU), cpu, cuda or cuda:N; linear assignment "
                        "problems are always solved on the CPU")


def allow_code(p: argparse.ArgumentParser) -> None:
    """``--allow-code``: every verb that builds a model from a file has it."""
    p.add_argument("--allow-code", action="store_true",
                   help="allow architecture references to user code (package.module:factory) "
                        "read from arguments or files; without it such references are refused")


def arch_override(p: argparse.ArgumentParser, dest: str = "arch") -> None:
    """``--arch``: the architecture of checkpoints that do not carry one (``torch.save``
    state dicts in ``.pt`` / ``.pth``, loaded with ``weights_only=True``)."""
    p.add_argument("--arch", default=None, metavar="REF", dest=dest,
                   help="architecture of checkpoints that carry none (a torch.save state "
                        "dict, a safetensors file without weightspace metadata, a directory "
                        "without a timm config.json), e.g. 'timm:resnet18?num_classes=10'; "
                        "overrides the one a checkpoint names")


def method_flags(p: argparse.ArgumentParser, names, get, default: str) -> None:
    """``--method`` and the union of the registered methods' options as flags (each method's
    options come from its registry entry: ``get(name).options``)."""
    p.add_argument("--method", choices=tuple(names), default=default,
                   help="; ".join(f"{m}: {get(m).summary}" for m in names))
    seen = set()
    for m in names:
        for o in get(m).options:
            if o.name in seen:
                continue
            seen.add(o.name)
            if o.type is bool:
                p.add_argument(o.flag, dest=o.name, action="store_true", default=None,
                               help=o.help)
            else:
                p.add_argument(o.flag, dest=o.name, default=None, choices=o.choices,
                               type=POSITIVE if o.type is int else o.type,
                               help=f"{o.help} ({o.default})")


def method_options(args, get) -> dict:
    """The options the user gave that belong to the chosen ``--method`` (others ignored)."""
    return {o.name: getattr(args, o.name) for o in get(args.method).options
            if getattr(args, o.name, None) is not None}


def checkpoint_output(p: argparse.ArgumentParser, what: str) -> None:
    """``--out`` of a verb that writes a model, with ``--dtype``, ``--max-shard-size`` and
    ``--verbose`` (peak memory)."""
    from ..checkpoints import WRITES
    p.add_argument("--out", required=True, help=f"{what}: {WRITES}")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16", "float64"),
                   default=None, help="precision of the written floating tensors (default: "
                                      "kept from the input; arithmetic runs in float32 and "
                                      "is cast once on write)")
    p.add_argument("--max-shard-size", default=None, metavar="SIZE",
                   help="with a directory --out: largest shard, e.g. 500MB or 5GB "
                        "(default: huggingface_hub's, 5GB)")
    verbose(p)


def verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="also print the peak memory (RSS) of the run")


def reads_help(what: str) -> str:
    """``what`` plus the checkpoint layouts every verb reads."""
    from ..checkpoints import READS
    return f"{what}; any of: {READS}"
