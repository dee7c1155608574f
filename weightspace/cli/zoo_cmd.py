"""``weightspace zoo train|import|list|eval``: build a model zoo and look inside it."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import check_output
from ..zoo.hparams import OPTIMIZERS, SCHEDULES, HParams
from .options import allow_code, arch_override, float_range, int_range, reads_help

HP = HParams()


def add_parser(sub) -> None:
    p = sub.add_parser("zoo", help="train, list and evaluate model zoos",
                       description="Model zoos: many networks of one architecture, trained "
                                   "batched across seeds, stored as safetensors + manifest.")
    zs = p.add_subparsers(dest="zoo_verb", metavar="ZOO_VERB", required=True)

    t = zs.add_parser("train", help="train a zoo (resumes an unfinished one)",
                      description="Train --models networks per grid point (seeds seed0, "
                                  "seed0+1, ...). Rerunning the same command skips finished "
                                  "models. Under `accelerate launch` the models are sharded "
                                  "across processes with identical results.")
    t.add_argument("--arch", required=True, help="architecture reference, e.g. mlp:64-64-64-10")
    t.add_argument("--dataset", default=None,
                   help="digits, fashion-mnist, mnist, cifar10, cifar100; options like "
                        "fashion-mnist?train_size=5000 or digits?val_size=432 (default: the "
                        "zoo's own when --out holds one, else digits?val_size=432: 432 "
                        "validation examples, enough to choose a generator's sampling)")
    t.add_argument("--data-root", default=None, help="where the dataset files are")
    t.add_argument("--models", type=int_range(1, 100_000), required=True,
                   help="models per grid point")
    t.add_argument("--seed0", type=int_range(0, 2**31 - 1), default=0,
                   help="first seed (default 0)")
    t.add_argument("--epochs", type=int_range(1, 100_000), default=HP.epochs)
    t.add_argument("--batch-size", type=int_range(1, 1_000_000), default=HP.batch_size)
    t.add_argument("--lr", type=float_range(0, 100, lo_open=True), default=HP.lr)
    t.add_argument("--optimizer", choices=OPTIMIZERS, default=HP.optimizer)
    t.add_argument("--weight-decay", type=float_range(0, 100), default=HP.weight_decay)
    t.add_argument("--momentum", type=float_range(0, 1, hi_open=True), default=HP.momentum,
                   help="SGD momentum")
    t.add_argument("--schedule", choices=SCHEDULES, default=HP.schedule)
    t.add_argument("--grid", default=None,
                   help="JSON or TOML file of hyperparameter lists, e.g. "
                        '{"lr": [0.001, 0.01], "act": ["relu", "gelu"]}; training keys '
                        f"({', '.join(sorted(HParams.keys()))}) or architecture options")
    t.add_argument("--checkpoints-per-model", type=int_range(1, 10_000), default=1,
                   help="keep K checkpoints per model, evenly spaced in epochs (last = final)")
    t.add_argument("--chunk-size", type=int_range(1, 100_000), default=32,
                   help="models trained together in one batched step (default 32)")
    t.add_argument("--batched", action=argparse.BooleanOptionalAction, default=None,
                   help="force batched training (--batched) or one model at a time "
                        "(--no-batched); default: time one step of each on this machine "
                        "and use the faster (recorded in the manifest)")
    t.add_argument("--shared-init", nargs="?", const=-1, default=None, metavar="SEED",
                   type=int_range(0, 2**31 - 1),
                   help="every model starts from one initialisation (seed SEED, default "
                        "--seed0) and keeps its own data order and dropout: mixtures of "
                        "such models are accurate, which generation needs")
    t.add_argument("--spawn-epoch", type=int_range(1, 100_000), default=None, metavar="K",
                   help="every model branches from one parent trained K epochs (weights "
                        "and optimizer state; initialised from --shared-init's seed, "
                        "default --seed0) and trains the rest of the recipe with its own "
                        "data order")
    t.add_argument("--out", required=True, help="zoo directory")
    t.add_argument("--force", action="store_true",
                   help="discard an existing zoo in --out made with other settings")
    allow_code(t)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--json", action="store_true", help="print a JSON summary")

    im = zs.add_parser("import", help="a zoo from checkpoints trained elsewhere",
                       description="Validate checkpoints in any layout against one "
                                   "architecture and write them as a zoo (one .safetensors "
                                   "file per model) with a manifest and, when a dataset is "
                                   "known, their metrics.")
    im.add_argument("checkpoints", nargs="+", metavar="CKPT", help=reads_help("checkpoints"))
    im.add_argument("--out", required=True,
                    help="the new zoo directory (models/ID.safetensors and a manifest)")
    arch_override(im)
    im.add_argument("--dataset", default=None,
                    help="data for the metrics (default: the first checkpoint's, if any)")
    im.add_argument("--data-root", default=None, help="where the dataset files are")
    im.add_argument("--json", action="store_true", help="print a JSON summary")
    allow_code(im)

    ls = zs.add_parser("list", help="table of a zoo's models")
    ls.add_argument("zoo", metavar="ZOO_DIR")
    ls.add_argument("--json", action="store_true", help="print the models as JSON")

    ev = zs.add_parser("eval", help="recompute metrics from the checkpoints",
                       description="Load every finished checkpoint (the zoo's .safetensors "
                                   "files, read one model at a time) and evaluate it on the "
                                   "validation split and --split; writes nothing.")
    ev.add_argument("zoo", metavar="ZOO_DIR")
    ev.add_argument("--split", choices=("train", "val", "test"), default="test")
    ev.add_argument("--data-root", default=None, help="where the dataset files are")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    allow_code(ev)


def run(args) -> int:
    return {"train": _train, "import": _import, "list": _list,
            "eval": _eval}[args.zoo_verb](args)


def _import(args) -> int:
    from ..zoo.importer import import_zoo  # torch: only once there is work to do
    res = import_zoo(args.checkpoints, args.out, arch=args.arch, dataset=args.dataset,
                     data_root=args.data_root)
    for n in res["notes"]:
        print(f"note: {n}", file=sys.stderr)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    line = f"imported {res['models']} model(s) of {res['arch']} into {res['out']}"
    if "mean_test_acc" in res:
        line += (f"; on {res['dataset']}: mean val acc {res['mean_val_acc']:.4f}, mean test "
                 f"acc {res['mean_test_acc']:.4f} +- {res['std_test_acc']:.4f}")
    print(line)
    return 0


def _dataset(args) -> tuple[str, str | None]:
    """(dataset, the note saying it was a default or None): --dataset, else the dataset of
    the zoo in --out (resuming it never re-carves its splits), else :data:`ZOO_DEFAULT`."""
    from ..zoo import Zoo, ZooError
    from ..zoo.datasets import ZOO_DEFAULT
    if args.dataset is not None:
        return args.dataset, None
    zoo = Zoo(args.out)
    try:
        name = zoo.read()["dataset"]["name"] if zoo.exists() else None
    except (ZooError, KeyError, TypeError):
        name = None  # train_zoo says what is wrong with it
    why = "the zoo's own" if isinstance(name, str) else \
        "432 validation examples: enough to choose a generator's sampling settings"
    name = name if isinstance(name, str) else ZOO_DEFAULT
    return name, f"note: --dataset {name} (default: {why})"


def _train(args) -> int:
    from ..zoo import load_grid, train_zoo
    check_output(args.out, "dir", "--out")
    hp = HParams(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                 optimizer=args.optimizer, weight_decay=args.weight_decay,
                 momentum=args.momentum, schedule=args.schedule)
    grid = load_grid(args.grid) if args.grid else None
    shared = None if args.shared_init is None else \
        args.seed0 if args.shared_init == -1 else args.shared_init
    if args.shared_init == -1 or (args.spawn_epoch is not None and shared is None):
        print(f"note: the shared initialisation is seed {args.seed0} (default: --seed0)",
              file=sys.stderr)
        shared = args.seed0
    dataset, note = _dataset(args)
    res = train_zoo(args.out, args.arch, dataset, hp, models=args.models,
                    seed0=args.seed0, grid=grid, checkpoints_per_model=args.checkpoints_per_model,
                    chunk_size=args.chunk_size, batched=args.batched, force=args.force,
                    data_root=args.data_root, allow_code=args.allow_code,
                    progress=not args.no_progress and not args.json,
                    log=lambda m: print(m, file=sys.stderr), shared_init=shared,
                    spawn_epoch=args.spawn_epoch)
    if res.get("skipped") is None:  # not the main process of a multi-process run
        return 0
    if note:  # after the run: an error stays the one line it is
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    rate = 60 * res["trained"] / max(res["seconds"], 1e-9)
    line = (f"trained {res['trained']} model(s), {res['skipped']} already done, in "
            f"{res['seconds']:.1f} s ({rate:.0f} models/min); zoo {args.out}: "
            f"{res.get('done', 0)}/{res.get('total', 0)} done")
    if "mean_test_acc" in res:
        line += (f", mean val acc {res['mean_val_acc']:.4f}, mean test acc "
                 f"{res['mean_test_acc']:.4f} +- {res['std_test_acc']:.4f}")
    if res.get("diverged"):
        line += f", {res['diverged']} diverged"
    print(line)
    _say_failed(args.out, res)
    return 0


def _say_failed(zoo_dir, summary: dict) -> None:
    """One line when models of the zoo ended near chance accuracy (:mod:`..zoo.health`)."""
    from ..zoo.health import failed_line
    from ..zoo.store import Zoo
    if not summary.get("failed"):
        return
    classes = Zoo(zoo_dir).read().get("dataset", {}).get("num_classes")
    print(failed_line(summary["failed"], summary.get("total", 0),
                      classes if isinstance(classes, int) else None))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"
    return str(v)


def _list(args) -> int:
    from ..zoo.store import Zoo
    m = Zoo(args.zoo).read()
    if args.json:
        print(json.dumps({"zoo": args.zoo, "arch": m.get("arch"), "dataset": m.get("dataset"),
                          "models": m["models"], "summary": m.get("summary", {})}, indent=1))
        return 0
    varying = list(m.get("settings", {}).get("grid", {}))
    cols = ["id", "seed", "status", *varying, "train_acc", "val_acc", "test_acc"]
    rows = [[e.get("id"), e.get("seed"), e.get("status"),
             *(e.get("hparams", {}).get(k) for k in varying),
             *(e.get("metrics", {}).get(c) for c in cols[-3:])] for e in m["models"]]
    rows = [[_fmt(v) if v is not None else "-" for v in r] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(cols)]
    print(f"zoo {args.zoo}: {m.get('arch')} on {m.get('dataset', {}).get('name')}, "
          f"{len(m['models'])} model(s)")
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    s = m.get("summary", {})
    if "mean_test_acc" in s:
        print(f"mean val acc {s['mean_val_acc']:.4f}, mean test acc {s['mean_test_acc']:.4f} "
              f"+- {s['std_test_acc']:.4f} over {s['done']} model(s)")
    _say_failed(args.zoo, s)
    return 0


def _eval(args) -> int:
    from ..zoo.evaluation import evaluate_zoo
    out = evaluate_zoo(args.zoo, args.split, args.data_root)
    splits, models = out["splits"], out["models"]
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for r in models:
        print("  ".join([r["id"]] + [f"{s}_acc {r[f'{s}_acc']:.4f}" for s in splits]))
    print("  ".join([f"mean over {len(models)}:"] +
                    [f"{s}_acc {out[f'mean_{s}_acc']:.4f} +- {out[f'std_{s}_acc']:.4f}"
                     for s in splits]))
    return 0
