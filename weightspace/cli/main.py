"""``weightspace VERB ...``: parse arguments, call the library, print tables or JSON.

Every failure reaches the user as one line and a non-zero exit: the library's own errors
(:class:`~weightspace.errors.WeightspaceError`) and file-system errors exit 2, anything
unexpected exits 1 with its type named (``WEIGHTSPACE_DEBUG=1`` shows the traceback). A
command that fails leaves no new output behind: an ``--out`` it created is removed."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from ..arch import code_allowed
from ..errors import WeightspaceError
from . import align_cmd, canonicalize_cmd, generate_cmd, lmc_cmd, spec_cmd, zoo_cmd
from .options import Parser

VERBS = {"spec": spec_cmd, "zoo": zoo_cmd, "align": align_cmd,
         "canonicalize": canonicalize_cmd, "lmc": lmc_cmd, "merge": lmc_cmd,
         "generate": generate_cmd}


def parser() -> Parser:
    p = Parser(
        prog="weightspace",
        description="Weight-space learning and model merging: model zoos, permutation "
                    "symmetry, canonicalization, merging, generation.")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for mod in dict.fromkeys(VERBS.values()):  # a module may serve several verbs
        mod.add_parser(sub)
    return p


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return text or type(e).__name__


def _remove_new(path: Path | None) -> None:
    """Remove an output that this failed command created (it did not exist before)."""
    if path is None or not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _close_process_group() -> None:
    """End an ``accelerate launch`` run's process group while the interpreter is whole: a
    gloo group left to interpreter teardown can abort the process ("terminate called
    without an active exception"). Only after success: after an error another rank may
    still be in a collective, and destroying the group would hang."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank tears its group down while a peer still talks to it
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad argument (2, already printed)
        return int(e.code or 0)
    if args.verb is None:
        p.print_help()
        return 0
    out = getattr(args, "out", None)
    new_out = Path(out) if out and not (Path(out).exists() or Path(out).is_symlink()) \
        else None
    sub = [getattr(args, k, None) for k in ("zoo_verb", "gen_verb")]
    prog = " ".join(["weightspace", args.verb, *filter(None, sub)])  # as argparse names it
    try:
        with code_allowed(getattr(args, "allow_code", False)):
            rc = VERBS[args.verb].run(args) or 0
        _close_process_group()
        return rc
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("WEIGHTSPACE_DEBUG"):
            raise
        _remove_new(new_out)
        if isinstance(e, (WeightspaceError, OSError)):
            print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
            return 2
        print(f"{prog}: internal error ({type(e).__name__}): {_one_line(e)} (set "
              f"WEIGHTSPACE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
