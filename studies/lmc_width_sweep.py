"""The Git Re-Basin width study: loss barrier vs MLP width, unaligned / weight matching / STE.

For every width W, two ``mlp:IN-W-W-W-10`` are trained (batched, seeds 0 and 1) on the
dataset, then the test-loss barrier of their linear interpolation is measured without
alignment, after weight matching and after STE. Writes a table, ``width_sweep.json`` and
``width_sweep.png`` to ``--out``.

    .venv/bin/python studies/lmc_width_sweep.py --out runs/width_sweep
    .venv/bin/python studies/lmc_width_sweep.py --dataset 'fashion-mnist?train_size=10000'
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from weightspace.arch import build
from weightspace.canonicalize import align
from weightspace.merge import curve
from weightspace.symmetry import apply, symmetry_of
from weightspace.zoo import HParams, load_dataset, train_batched


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--widths", default="16,32,64,128,256,512,1024")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--points", type=int, default=13)
    p.add_argument("--ste-steps", type=int, default=100)
    p.add_argument("--out", default="runs/width_sweep")
    args = p.parse_args()
    torch.set_num_threads(2)
    data = load_dataset(args.dataset)
    x, y = data["train"]
    n_in = int(torch.tensor(data.input_shape).prod())
    rows = []
    print(f"{'width':>6} {'unaligned':>10} {'wm':>8} {'ste':>8}   (test loss barrier; "
          f"{args.dataset})")
    for w in (int(s) for s in args.widths.split(",")):
        ref = f"mlp:{n_in}-{w}-{w}-{w}-{data.num_classes}"
        t = time.perf_counter()
        A, B = train_batched(ref, [0, 1], HParams(epochs=args.epochs), x, y)
        model = build(ref)
        spec = symmetry_of(model.eval(), x[:1])
        row = {"width": w, "arch": ref}
        row["unaligned"] = curve(spec, model, A, B, data, args.points)["test_loss_barrier"]
        for method, kw in (("wm", {}), ("ste", {"steps": args.ste_steps})):
            perms, _ = align(spec, A, B, method, model=model, data=data, **kw)
            row[method] = curve(spec, model, A, apply(spec, perms, B), data,
                                args.points)["test_loss_barrier"]
        row["seconds"] = time.perf_counter() - t
        rows.append(row)
        print(f"{w:>6} {row['unaligned']:>10.4f} {row['wm']:>8.4f} {row['ste']:>8.4f}",
              flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "width_sweep.json").write_text(json.dumps({"dataset": args.dataset, "rows": rows},
                                                     indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key in ("unaligned", "wm", "ste"):
        ax.plot([r["width"] for r in rows], [r[key] for r in rows], "o-", label=key)
    ax.set(xscale="log", xlabel="width", ylabel="test loss barrier", title=args.dataset)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "width_sweep.png", dpi=120)
    print(f"wrote {out / 'width_sweep.json'} and {out / 'width_sweep.png'}")


if __name__ == "__main__":
    main()
