"""The streamed Gram-PCA encoding at scale, against the in-memory SVD in the same run.

Creates ``--models`` (128) random-init ``timm:resnet18?num_classes=10`` checkpoints (11.2M
parameters, 45 MB each) in a temp dir, then, each step in a fresh process so that its peak
RSS is its own:

* baseline: the first ``--baseline-models`` (16) encoded by the in-memory SVD
  (``Encoding.fit(..., pca=True)`` on loaded state dicts) and by ``Encoding.fit_streaming``;
* scale: all models by ``Encoding.fit_streaming`` + ``save`` (targets: <= 180 s, <= 8 GB);
* decode: ``Encoding.load`` + ``decode`` of one code (target < 1 s), checked against its
  checkpoint (the encoding is exact on training models).

Needs about 3 x 45 MB x models of free disk (zoo, the unlinked basis of the fit, the saved
encoding); everything is removed at the end. ``--threads`` sets torch's intra-op threads
(default 1: on the shared 2-core machine two spinning threads measured slower).

    .venv/bin/python scripts/benchmarks/encoding_scale.py [--models 128] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCH = "timm:resnet18?num_classes=10"


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # KiB -> GiB


def step(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    from safetensors.torch import load_file, save_file

    from weightspace.generate import Encoding
    d = Path(args.dir)
    paths = sorted(d.glob("zoo/m*.safetensors"))
    if args.step == "create":
        from weightspace.arch import build
        from weightspace.checkpoint import save_checkpoint
        t = time.perf_counter()
        for i in range(args.models):
            torch.manual_seed(i)
            save_checkpoint(d / "zoo" / f"m{i:04d}.safetensors", build(ARCH), ARCH)
        return {"seconds": time.perf_counter() - t}
    if args.step in ("svd", "stream_small"):
        small = paths[:args.baseline_models]
        t = time.perf_counter()
        if args.step == "svd":
            enc = Encoding.fit(ARCH, [load_file(str(p)) for p in small], pca=True)
        else:
            enc = Encoding.fit_streaming(ARCH, small, pca=True, workdir=d)
        sec = time.perf_counter() - t
        ref = load_file(str(small[1]))
        back = enc.decode(enc.encode(ref))
        return {"seconds": sec, "k": enc.dim, "max_err": max(
            float((back[k] - ref[k]).abs().max()) for k in enc.keys)}
    if args.step == "stream":
        t = time.perf_counter()
        enc = Encoding.fit_streaming(ARCH, paths, pca=True, workdir=d)
        fit = time.perf_counter() - t
        enc.save(d / "encoding.safetensors")
        total = time.perf_counter() - t
        save_file({"codes": enc.zoo_codes[[0, len(paths) - 1]].contiguous()},
                  str(d / "codes.safetensors"))
        return {"seconds": total, "fit_seconds": fit, "save_seconds": total - fit,
                "k": enc.dim, "params": enc.center.numel(),
                "basis_gb": (d / "encoding.safetensors").stat().st_size / 2 ** 30}
    if args.step == "decode":
        codes = load_file(str(d / "codes.safetensors"))["codes"]
        t = time.perf_counter()
        enc = Encoding.load(d / "encoding.safetensors")
        load = time.perf_counter() - t
        t = time.perf_counter()
        out = enc.decode(codes[0])
        dec = time.perf_counter() - t
        t = time.perf_counter()
        out2 = enc.decode(codes[1])
        dec2 = time.perf_counter() - t
        err = 0.0
        for o, p in ((out, paths[0]), (out2, paths[-1])):
            ref = load_file(str(p))
            err = max(err, max(float((o[k] - ref[k]).abs().max()) for k in ref))
        return {"seconds": dec, "second_decode_seconds": dec2, "load_seconds": load,
                "max_err": err}
    raise SystemExit(f"unknown step {args.step}")


def run_step(name: str, args, d: Path) -> dict:
    cmd = [sys.executable, __file__, "--step", name, "--dir", str(d), "--models",
           str(args.models), "--baseline-models", str(args.baseline_models),
           "--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"step {name} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=128)
    ap.add_argument("--baseline-models", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", help="use (and keep) this directory instead of a temp dir")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        r = step(args)
        r["peak_rss_gb"] = peak_gb()
        print(json.dumps(r))
        return
    d = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="enc-scale-"))
    d.mkdir(parents=True, exist_ok=True)
    need = 3 * 45e6 * args.models * 1.1
    free = shutil.disk_usage(d).free
    if free < need and not args.keep:
        shutil.rmtree(d)
        raise SystemExit(f"{d}: {free / 1e9:.1f} GB free, the benchmark needs {need / 1e9:.1f}")
    try:
        if len(list(d.glob("zoo/m*.safetensors"))) != args.models:
            print(f"creating {args.models} x {ARCH} in {d} ...", flush=True)
            print(f"  {run_step('create', args, d)['seconds']:.0f} s", flush=True)
        rows = [(f"in-memory SVD (baseline), {args.baseline_models} models",
                 run_step("svd", args, d)),
                (f"streamed Gram-PCA, {args.baseline_models} models",
                 run_step("stream_small", args, d)),
                (f"streamed Gram-PCA + save, {args.models} models",
                 run_step("stream", args, d)),
                ("load + decode one model", run_step("decode", args, d))]
        print(f"\n{ARCH}: 11.2M parameters per model; torch threads {args.threads}")
        print(f"{'step':<46} {'seconds':>8} {'peak RSS GB':>12}  notes")
        for name, r in rows:
            note = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in r.items() if k not in ("seconds", "peak_rss_gb"))
            print(f"{name:<46} {r['seconds']:8.2f} {r['peak_rss_gb']:12.2f}  {note}")
        svd, small = rows[0][1], rows[1][1]
        print(f"\nstreamed vs in-memory SVD on {args.baseline_models} models: "
              f"{svd['seconds'] / small['seconds']:.2f}x faster, "
              f"{svd['peak_rss_gb'] / small['peak_rss_gb']:.2f}x less peak memory")
        big, dec = rows[2][1], rows[3][1]
        print(f"targets: encode {args.models} models <= 180 s: {big['seconds']:.0f} s "
              f"({'ok' if big['seconds'] <= 180 else 'MISSED'}); peak RSS <= 8 GB: "
              f"{big['peak_rss_gb']:.2f} GB ({'ok' if big['peak_rss_gb'] <= 8 else 'MISSED'}); "
              f"decode < 1 s: {dec['seconds']:.2f} s ({'ok' if dec['seconds'] < 1 else 'MISSED'})")
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
