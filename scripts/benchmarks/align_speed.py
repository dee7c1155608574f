"""Weight matching speed and quality against baselines run in the same process.

Baselines:
* ``rebasin`` (PyPI, snimu; ``PermutationCoordinateDescent``) — install it for this
  benchmark only: ``.venv/bin/pip install '.[bench]'``; skipped with a note when absent;
* ``port`` — a direct port of the reference algorithm (Ainsworth et al.'s
  ``weight_matching``: every step re-permutes every member tensor and recomputes the whole
  cost), on specs whose layouts are all plain.

* ``scipy-only`` — weightspace's own matching with every LAP solved cold by scipy (the
  path before the warm-started solver): the same permutations are asserted, and the
  time is split into cost matrices, LAPs and the rest for both. The two alternate, ours
  first then scipy-only first (8 runs each, x16 2): a pair's time is the median.

Pairs (the same pair for every method): two ``mlp:64-512-512-512-10`` and two
``resnet20?width=4`` (BatchNorm, one input channel) trained on digits; two independently
initialised ``timm:resnet18`` and ``resnet20?width=16`` (69M parameters; not trained: too
slow on this CPU). Then zoos canonicalized to their barycenter, batched against one
matching per model: 128 ``mlp:64-64-64-10`` and 48 ``resnet20?width=1&in_chans=1``.

    .venv/bin/python scripts/benchmarks/align_speed.py [--skip-zoo] [--skip-w16] [--only zoo]
        [--no-baselines]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from scipy.optimize import linear_sum_assignment

from weightspace.arch import build, input_shape
from weightspace.canonicalize import l2_distance, weight_matching
from weightspace.symmetry import apply, symmetry_of
from weightspace.zoo import HParams, load_dataset, train_batched


def port_weight_matching(spec, A, B, max_iter=100, seed=0):
    """Direct port of the reference weight matching (plain layouts only)."""
    axes_to_perm = {k: [None] * len(s) for k, s in spec.shapes.items()}
    perm_to_axes: dict[str, list] = {}
    for member, layout in spec.layouts.items():
        key, _, axis = member.rpartition(":")
        if layout[0] != "group":
            raise ValueError("structured layout")
        axes_to_perm[key][int(axis)] = layout[1]
        perm_to_axes.setdefault(layout[1], []).append((key, int(axis)))
    A = {k: v.float() for k, v in A.items() if k in axes_to_perm}
    B = {k: v.float() for k, v in B.items() if k in axes_to_perm}
    sizes = {p: A[ax[0][0]].shape[ax[0][1]] for p, ax in perm_to_axes.items()}
    perm = {p: torch.arange(n) for p, n in sizes.items()}
    names = sorted(perm)
    gen = torch.Generator().manual_seed(seed)

    def permuted(k, except_axis):
        w = B[k]
        for axis, p in enumerate(axes_to_perm[k]):
            if axis != except_axis and p is not None:
                w = torch.index_select(w, axis, perm[p])
        return w

    for _ in range(max_iter):
        progress = False
        for pi in torch.randperm(len(names), generator=gen).tolist():
            p, n = names[pi], sizes[names[pi]]
            cost = torch.zeros(n, n)
            for k, axis in perm_to_axes[p]:
                wa = torch.movedim(A[k], axis, 0).reshape(n, -1)
                wb = torch.movedim(permuted(k, axis), axis, 0).reshape(n, -1)
                cost += wa @ wb.T
            _, ci = linear_sum_assignment(cost.numpy(), maximize=True)
            ci = torch.from_numpy(ci)
            old = cost[torch.arange(n), perm[p]].sum()
            new = cost[torch.arange(n), ci].sum()
            progress = progress or bool(new > old + 1e-12)
            perm[p] = ci
        if not progress:
            break
    return perm


def rebasin_align(ref, A, B, x):
    from rebasin import PermutationCoordinateDescent
    ma, mb = build(ref), build(ref)
    ma.load_state_dict(A)
    mb.load_state_dict(B)
    pcd = PermutationCoordinateDescent(ma, mb, x)
    pcd.rebasin()
    return mb.state_dict()


def trained_pair(ref, epochs, hp_kw):
    d = load_dataset("digits")
    x, y = d["train"]
    states = train_batched(ref, [0, 1], HParams(epochs=epochs, **hp_kw), x, y)
    return states[0], states[1]


def init_pair(ref):
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        sd = build(ref).state_dict()
        g = torch.Generator().manual_seed(seed + 100)
        for k, v in sd.items():  # move BN statistics off their defaults, as training would
            if "running_mean" in k:
                sd[k] = 0.1 * torch.randn(v.shape, generator=g)
            elif "running_var" in k:
                sd[k] = 1 + 0.1 * torch.rand(v.shape, generator=g)
        out.append(sd)
    return out


class Split:
    """Wall time inside the cost builders and the LAP solves of weightspace's matchers
    (patched in for the benchmark: the library itself carries no timers)."""

    def __init__(self):
        self.cost = self.lap = 0.0
        from weightspace.canonicalize import batched, matching
        self._saved = []
        for mod, name, slot in ((matching.WeightMatcher, "family_cost", "cost"),
                                (matching, "parallel_map", "lap"),
                                (batched.BatchedMatcher, "_cost", "cost"),
                                (batched, "lap_batch", "lap")):
            fn = getattr(mod, name)
            self._saved.append((mod, name, fn))
            setattr(mod, name, self._timed(fn, slot))

    def _timed(self, fn, slot):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                setattr(self, slot, getattr(self, slot) + time.perf_counter() - t)
        return wrapper

    def reset(self):
        self.cost = self.lap = 0.0

    def close(self):
        for mod, name, fn in self._saved:
            setattr(mod, name, fn)


SPLIT: Split | None = None


def split_note(total: float, runs: int) -> str:
    """'cost a / LAP b / other c' seconds per run (the last ``runs`` runs)."""
    cost, lp = SPLIT.cost / runs, SPLIT.lap / runs
    SPLIT.reset()
    return f"cost {cost:.3f} / LAP {lp:.3f} / other {total - cost - lp:.3f} s"


def timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


DEVICE = "cpu"  # --device: where weightspace's cost matrices run (baselines stay on the CPU)
BASELINES = True  # --no-baselines: only weightspace against its scipy-only path


def bench_pair(name, ref, A, B, repeat=8, port=True, rebasin=True):
    port, rebasin = port and BASELINES, rebasin and BASELINES
    model = build(ref).eval()
    x = torch.randn(input_shape(ref, model) if "in_chans=1" not in ref else (1, 1, 8, 8))
    t = time.perf_counter()
    spec = symmetry_of(model, x)
    t_spec = time.perf_counter() - t
    rows = []
    from weightspace.canonicalize.assignment import STATS, scipy_only
    STATS.reset()
    # the two paths alternate (ours first, then scipy-only first, ...): neither always
    # pays the first run's fresh memory, nor always runs on the warmer machine
    runs = {True: [], False: []}  # scipy-only? -> [(seconds, cost, LAP, perms, report)]
    out = {}
    for r in range(repeat):
        for scipy in ((False, True) if r % 2 == 0 else (True, False)):
            SPLIT.reset()
            with scipy_only(scipy):
                if not scipy:
                    STATS.reset()
                secs, out[scipy] = timed(lambda: weight_matching(spec, A, B, device=DEVICE), 1)
                if not scipy:
                    stats = f"{STATS.warm} warm + {STATS.cold} cold solves, " \
                            f"{STATS.fallback} fallbacks"
            runs[scipy].append((secs, SPLIT.cost, SPLIT.lap))
    (perms, rep), (p_sc, rep_sc) = out[False], out[True]

    def note(scipy: bool, sweeps: int) -> str:
        t = [statistics.median(x[i] for x in runs[scipy]) for i in range(3)]
        return f"{sweeps} sweeps; cost {t[1]:.3f} / LAP {t[2]:.3f} / other " \
               f"{t[0] - t[1] - t[2]:.3f} s (medians)"
    secs = statistics.median(x[0] for x in runs[False])
    ours = (secs, rep.l2_after)
    rows.append(("weightspace wm", secs, rep.l2_after, note(False, rep.iterations)))
    same = all(torch.equal(perms[g], p_sc[g]) for g in perms)
    rows.append(("scipy-only wm", statistics.median(x[0] for x in runs[True]),
                 rep_sc.l2_after, note(True, rep_sc.iterations)))
    assert same and rep_sc.l2_after == rep.l2_after, f"{name}: permutations differ"
    if port:
        try:
            secs, p = timed(lambda: port_weight_matching(spec, A, B), 1)
            rows.append(("direct port", secs, l2_distance(A, apply(spec, p, B)), ""))
        except ValueError:
            rows.append(("direct port", None, None, "structured layouts: not portable"))
    if rebasin:
        try:
            secs, bb = timed(lambda: rebasin_align(ref, A, B, x), 1)
            rows.append(("rebasin", secs, l2_distance(A, bb), ""))
        except ImportError:
            rows.append(("rebasin", None, None, "not installed (pip install '.[bench]')"))
        except Exception as e:  # noqa: BLE001 - report the baseline's failure, keep going
            rows.append(("rebasin", None, None, f"failed: {type(e).__name__}: {e}"[:80]))
    n = sum(v.numel() for v in A.values())
    print(f"\n{name}: {ref} ({n / 1e6:.2f}M parameters; spec discovery {t_spec:.2f} s, "
          f"not included); L2 before {rep.l2_before:.4f}; {stats}; identical "
          f"permutations to scipy-only: {same}")
    print(f"  {'method':<16} {'seconds':>8} {'L2 after':>10} {'ours faster':>11}  note")
    for meth, secs, l2, note in rows:
        if secs is None:
            print(f"  {meth:<16} {'-':>8} {'-':>10} {'-':>11}  {note}")
        else:
            print(f"  {meth:<16} {secs:>8.3f} {l2:>10.4f} {secs / ours[0]:>10.1f}x  {note}")


def bench_zoo(arch: str, models: int, hp: HParams, sequential: bool = True, root=None,
              repeat: int = 3):
    """Canonicalize a trained zoo to its barycenter, batched (with the warm-started LAPs and
    scipy-only) and (optionally) one matching per model, same rounds (the fastest of
    ``repeat`` runs each); prints models per second, RMS L2 to the barycenter and the
    matching's cost / LAP / other split."""
    from pathlib import Path

    from weightspace.canonicalize.zoo import canonicalize_zoo
    from weightspace.zoo import train_zoo
    with tempfile.TemporaryDirectory() as tmp:
        zoo = Path(root or tmp) / f"zoo-{arch.replace(':', '_').replace('?', '_')}-{models}"
        if not (zoo / "manifest.json").exists():
            train_zoo(zoo, arch, "digits", hp, models=models, progress=False, log=lambda *a: None)
        from safetensors.torch import load_file

        from weightspace.canonicalize.assignment import STATS, scipy_only
        runs = [("batched", True, False), ("scipy-only", True, True)] + \
            ([("sequential", False, False)] if sequential else [])
        print(f"\nzoo: {models} x {arch} (digits, {hp.epochs} epochs) to the barycenter "
              f"(whole call, and the matching alone: no reading or writing of files)")
        print(f"  {'matching':<11} {'seconds':>8} {'models/s':>9} {'rounds':>6} "
              f"{'RMS L2 before':>13} {'after':>8} {'batched faster':>14} "
              f"{'matching s':>10} {'faster':>6}")
        first = None
        perms = {}
        for name, batched, scipy in runs:
            secs = match = float("inf")
            STATS.reset()
            SPLIT.reset()
            for r in range(repeat):  # the fastest of `repeat` runs: timings here are noisy
                t = time.perf_counter()
                with scipy_only(scipy):
                    rep = canonicalize_zoo(zoo, f"{tmp}/canon-{name}-{r}", "wm", "barycenter",
                                           progress=False, batched=batched, device=DEVICE)
                secs = min(secs, time.perf_counter() - t)
                match = min(match, rep["matching_seconds"])
            note = f"{split_note(match, repeat)}; {STATS.warm} warm + {STATS.cold} cold " \
                   f"solves, {STATS.fallback} fallbacks"
            out = Path(f"{tmp}/canon-{name}-0/perms")
            perms[name] = {f.name: load_file(str(f)) for f in sorted(out.glob("*"))}
            first = first or (secs, match)
            print(f"  {name:<11} {secs:>8.2f} {models / secs:>9.2f} {rep['rounds']:>6} "
                  f"{rep['l2_to_barycenter_before']:>13.4f} "
                  f"{rep['l2_to_barycenter_after']:>8.4f} {secs / first[0]:>13.1f}x "
                  f"{match:>10.2f} {match / first[1]:>5.1f}x  {note}")
        a, b = perms["batched"], perms["scipy-only"]
        same = a.keys() == b.keys() and all(torch.equal(a[f][g], b[f][g]) for f in a for g in a[f])
        print(f"  identical permutations to scipy-only: {same}")
        assert same, "zoo: permutations differ from the scipy-only path"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-zoo", action="store_true")
    p.add_argument("--skip-w16", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu",
                   help="where weightspace's costs run (cpu, cuda); baselines use the CPU")
    p.add_argument("--only", choices=["mlp", "resnet20", "resnet18", "w16", "zoo"],
                   nargs="*", help="run only these cases")
    p.add_argument("--zoo-root", help="keep the trained zoos here (reused on the next run)")
    p.add_argument("--sequential-resnet-zoo", action="store_true",
                   help="also time the 48-model ResNet zoo one matching per model (slow)")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the direct port and rebasin (weightspace vs scipy-only only)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    global DEVICE, BASELINES, SPLIT
    DEVICE, BASELINES, SPLIT = args.device, not args.no_baselines, Split()
    from weightspace.canonicalize.assignment import available
    print(f"compiled LAP solver: {'yes' if available() else 'NO (scipy answers every LAP)'}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {DEVICE}")
    want = set(args.only or ["mlp", "resnet20", "resnet18", "w16", "zoo"])
    want -= {"w16"} if args.skip_w16 else set()
    want -= {"zoo"} if args.skip_zoo else set()
    if "mlp" in want:
        a, b = trained_pair("mlp:64-512-512-512-10", 10, {"batch_size": 64})
        bench_pair("trained MLP pair", "mlp:64-512-512-512-10", a, b)
    if "resnet20" in want:
        ref = "resnet20?width=4&in_chans=1"
        a, b = trained_pair(ref, 3, {"batch_size": 64, "optimizer": "sgd", "lr": 0.05})
        bench_pair("trained ResNet-20 x4 pair", ref, a, b)
    if "resnet18" in want:
        a, b = init_pair("timm:resnet18")
        bench_pair("initialised timm resnet18 pair", "timm:resnet18", a, b)
    if "w16" in want:
        a, b = init_pair("resnet20?width=16")
        bench_pair("initialised ResNet-20 x16 pair", "resnet20?width=16", a, b, repeat=2,
                   rebasin=False)
    if "zoo" in want:
        bench_zoo("mlp:64-64-64-10", 128, HParams(epochs=30), root=args.zoo_root)
        bench_zoo("resnet20?width=1&in_chans=1", 48,
                  HParams(epochs=5, batch_size=64, optimizer="sgd", lr=0.05),
                  sequential=args.sequential_resnet_zoo, root=args.zoo_root, repeat=1)

if __name__ == "__main__":
    main()
