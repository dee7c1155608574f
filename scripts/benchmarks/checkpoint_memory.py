"""Out-of-core checkpoints: peak memory of a streamed merge, and layouts that change nothing.

1. Four random-weight bfloat16 ``timm:vit_large_patch16_224`` checkpoints (~0.6 GB each),
   written as sharded Hub directories, averaged by ``merge --method mean`` in a fresh
   process. Reported: its peak RSS above a fresh Python process with torch imported (the
   target is under 1.5 GB), its time, and whether the output equals bitwise the float32
   mean of the inputs cast to bfloat16 (checked one tensor at a time).
2. Weight matching of two random-init ``timm:resnet50`` given as sharded directories (no
   ``--arch``: a timm config.json) against the same two as single files: equal tensors.

    .venv/bin/python scripts/benchmarks/checkpoint_memory.py [--skip-resnet] [--dir DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

VIT = "timm:vit_large_patch16_224"
RESNET = "timm:resnet50"
CHILD = """
import json, resource, sys, time
import torch
t = time.perf_counter()
if sys.argv[1] == "merge":
    from weightspace.merge.files import merge_checkpoints
    rep = merge_checkpoints(sys.argv[3:], sys.argv[2], method="mean", post="none",
                            max_shard_size="200MB")
print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t}))
"""


def child(*args) -> dict:
    """Run CHILD in a fresh interpreter; its peak RSS and time."""
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def random_checkpoint(ref: str, out: Path, seed: int, dtype, max_shard_size: str) -> None:
    """Random weights of ``ref``'s shapes written tensor by tensor (no model in memory)."""
    from weightspace.checkpoint import CheckpointWriter, checkpoint_metadata
    from weightspace.checkpoints.reader import expected_shapes
    g = torch.Generator().manual_seed(seed)
    with CheckpointWriter(out, checkpoint_metadata(ref), max_shard_size=max_shard_size) as w:
        for k, (shape, kind) in expected_shapes(ref).items():
            t = torch.randn(shape, generator=g) * 0.02 if kind.is_floating_point else \
                torch.zeros(shape, dtype=kind)
            w.add(k, t, dtype=dtype if kind.is_floating_point else None)


def bench_mean(root: Path) -> dict:
    from weightspace.checkpoint import open_checkpoint
    paths = []
    t = time.perf_counter()
    for i in range(4):
        p = root / f"vit{i}"
        random_checkpoint(VIT, p, i, torch.bfloat16, "200MB")
        paths.append(p)
    made = time.perf_counter() - t
    size = sum(f.stat().st_size for f in paths[0].iterdir()) / 1e9
    base = child("baseline")
    run = child("merge", root / "mean", *paths)
    cks = [open_checkpoint(p) for p in paths]
    with open_checkpoint(root / "mean") as out:
        equal = all(torch.equal(out.get(k), torch.stack([c.get(k).float() for c in cks])
                                .mean(0).to(torch.bfloat16)) for k in out.keys())
        dtypes = sorted({str(out.dtype(k)) for k in out.keys()})
        shards = len([f for f in (root / "mean").iterdir() if f.name.startswith("model-")])
    return {"inputs": 4, "input_gb": round(size, 3), "write_inputs_s": round(made, 1),
            "baseline_rss_mb": round(base["rss_mb"]), "merge_rss_mb": round(run["rss_mb"]),
            "peak_above_torch_mb": round(run["rss_mb"] - base["rss_mb"]),
            "merge_seconds": round(run["seconds"], 1), "bitwise_equal": equal,
            "output_dtypes": dtypes, "output_shards": shards}


def bench_matching(root: Path) -> dict:
    from huggingface_hub import save_torch_state_dict
    from timm.models._hub import save_config_for_hf

    from weightspace.arch import build
    from weightspace.canonicalize.files import align_checkpoints
    from weightspace.checkpoint import open_checkpoint, save_checkpoint
    singles, dirs = [], []
    for i in range(2):
        torch.manual_seed(i)
        model = build(RESNET)
        singles.append(root / f"r{i}.safetensors")
        save_checkpoint(singles[-1], model, RESNET)
        d = root / f"r{i}"
        d.mkdir()
        save_torch_state_dict(model.state_dict(), d, max_shard_size="30MB")
        save_config_for_hf(model, str(d / "config.json"))
        dirs.append(d)
    t = time.perf_counter()
    align_checkpoints(*dirs, root / "aligned_dir")
    t_dir = time.perf_counter() - t
    t = time.perf_counter()
    align_checkpoints(*singles, root / "aligned.safetensors")
    t_file = time.perf_counter() - t
    with open_checkpoint(root / "aligned_dir") as a, \
            open_checkpoint(root / "aligned.safetensors") as b:
        equal = a.keys() == b.keys() and all(torch.equal(a.get(k), b.get(k)) for k in a.keys())
    shards = len([f for f in dirs[0].iterdir() if f.name.startswith("model-")])
    return {"input_shards": shards, "equal": equal, "seconds_dirs": round(t_dir, 1),
            "seconds_files": round(t_file, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        res = {"mean_of_4_vit_large_bf16": bench_mean(Path(d))}
        print(json.dumps(res, indent=1), flush=True)
        if not args.skip_resnet:
            res["weight_matching_resnet50_dirs_vs_files"] = bench_matching(Path(d))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
