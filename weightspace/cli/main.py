"""``weightspace VERB ...``: parse arguments, call the library, print tables or JSON."""
from __future__ import annotations

import argparse
import sys

from ..arch import ArchError
from ..checkpoint import CheckpointError
from ..symmetry import SpecError, TraceError
from ..zoo import DatasetError, TrainError, ZooError
from ..functional import StateError
from ..merge import LMCError
from ..generate import EncodingError
from . import align_cmd, canonicalize_cmd, generate_cmd, lmc_cmd, spec_cmd, zoo_cmd

VERBS = {"spec": spec_cmd, "zoo": zoo_cmd, "align": align_cmd,
         "canonicalize": canonicalize_cmd, "lmc": lmc_cmd, "merge": lmc_cmd,
         "generate": generate_cmd}
USER_ERRORS = (ArchError, CheckpointError, SpecError, TraceError, DatasetError, TrainError,
               ZooError, StateError, LMCError, EncodingError, FileNotFoundError)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="weightspace",
        description="Weight-space learning and model merging: model zoos, permutation "
                    "symmetry, canonicalization, merging, generation.")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for mod in dict.fromkeys(VERBS.values()):  # a module may serve several verbs
        mod.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.verb is None:
        p.print_help()
        return 0
    try:
        return VERBS[args.verb].run(args) or 0
    except USER_ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"weightspace {args.verb}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
