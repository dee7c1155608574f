"""``weightspace VERB ...``: parse arguments, call the library, print tables or JSON.

Every failure reaches the user as one line and a non-zero exit: the library's own errors
(:class:`~weightspace.errors.WeightspaceError`) and file-system errors exit 2, anything
unexpected exits 1 with its type named (``WEIGHTSPACE_DEBUG=1`` shows the traceback). A
command that fails leaves no new output behind: an ``--out`` it created is removed."""
from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import sys
from pathlib import Path

# OpenMP threads that spin for long while they wait make torch crawl when another process
# shares the machine (scripts/benchmarks/threads.py; docs/results.md). OpenMP reads this
# when torch is first imported, which the CLI does only after this line; an explicit
# OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept. The CLI owns its process, so it may set it; a
# library import never does.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from ..errors import WeightspaceError  # noqa: E402
from .options import Parser  # noqa: E402

# verb -> (module that builds its parser and runs it, one-line help). Only the module of
# the verb asked for is imported, so `weightspace --help` answers without importing torch.
VERBS = {"spec": ("spec_cmd", "discover and verify the permutation symmetry of a model"),
         "zoo": ("zoo_cmd", "train, import, list and evaluate model zoos"),
         "align": ("align_cmd", "permute model B into model A's basin"),
         "canonicalize": ("canonicalize_cmd", "align every model of a zoo into one basin"),
         "lmc": ("lmc_cmd", "linear mode connectivity: barriers before/after alignment"),
         "merge": ("lmc_cmd", "merge several checkpoints into one"),
         "generate": ("generate_cmd", "flow-matching generator of complete networks")}


def _module(verb: str):
    return importlib.import_module(f".{VERBS[verb][0]}", __package__)


def _verb_of(argv: list[str]) -> str | None:
    """The verb of a command line: its first argument that is one (None for --help)."""
    return next((a for a in argv if a in VERBS), None)


def parser(verb: str | None = None) -> Parser:
    """The CLI's parser: every verb in full when ``verb`` is None and the arguments hold
    no verb of their own only by name (a placeholder with its help), and ``verb``'s
    module's parsers in full."""
    p = Parser(
        prog="weightspace",
        description="Weight-space learning and model merging: model zoos, permutation "
                    "symmetry, canonicalization, merging, generation.")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    full = {VERBS[verb][0]} if verb else set()
    for name, (module, help_text) in VERBS.items():
        if module in full:
            if name == next(n for n, (m, _) in VERBS.items() if m == module):
                _module(name).add_parser(sub)  # a module may serve several verbs
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return p


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return text or type(e).__name__


# Python argument names whose flag has another name
_ARG_ALIASES = {"out_dir": "out", "k_ensemble": "ensemble"}


def _flags(p: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> its long flag, over ``p`` and its subparsers."""
    out: dict[str, str] = {}
    for action in p._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in out:
            out[action.dest] = longs[0]
        for sub in (getattr(action, "choices", None) or {}).values() \
                if isinstance(action, argparse._SubParsersAction) else ():
            for k, v in _flags(sub).items():
                out.setdefault(k, v)
    return out


def _as_flags(text: str, p: argparse.ArgumentParser) -> str:
    """Library messages name arguments as Python does, in backticks (`data_root`,
    `force=True`); on the command line they are the flags that set them (--data-root,
    --force). Names with no flag lose their backticks."""
    flags = _flags(p)

    def sub(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        flag = flags.get(_ARG_ALIASES.get(name, name))
        if flag is None:
            return m.group(0)[1:-1]
        return flag if value in (None, "True") else f"{flag} {value}"
    return re.sub(r"`([A-Za-z_][A-Za-z0-9_]*)(?:=([^`]*))?`", sub, text)


def _remove_new(path: Path | None) -> None:
    """Remove an output that this failed command created: it did not exist before and
    this process made it (another command writing the same new output at the same time
    keeps what it made)."""
    from ..errors import created_here
    if path is None or not (path.exists() or path.is_symlink()) or not created_here(path):
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
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser(_verb_of(argv))
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
        from ..arch import code_allowed  # imports torch: only once there is work to do
        with code_allowed(getattr(args, "allow_code", False)):
            rc = _module(args.verb).run(args) or 0
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
            print(f"{prog}: error: {_as_flags(_one_line(e), p)}", file=sys.stderr)
            return 2
        print(f"{prog}: internal error ({type(e).__name__}): {_one_line(e)} (set "
              f"WEIGHTSPACE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
