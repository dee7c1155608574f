"""Novelty study: sampling / fitting knobs that move generated networks away from single zoo
models, every knob chosen on the validation split (test only reported).

Stages (families as in studies/generate_families.py, same directory layout):

    # zoo + canonical zoo (wm, barycenter) + the README generator, reused when present
    .venv/bin/python studies/novelty_study.py prepare --family resnet20
    # the README recipe through sample_zoo + audit: reference row and the noise curve
    .venv/bin/python studies/novelty_study.py baseline --family resnet20
    # the knob sweep (val acc / val novelty / test acc / test novelty / margin / eff. models)
    .venv/bin/python studies/novelty_study.py sweep --family resnet20 [--n 64]
    # sampling within 20 passes per network: ODE solver and steps x guidance x mix
    .venv/bin/python studies/novelty_study.py sweep --family resnet20 --tag budget
    # another generator of the family (e.g. fitted with condition="train_loss"), recipes
    # given as JSON ("target": "min" asks a loss condition for the zoo's best)
    .venv/bin/python studies/novelty_study.py sweep --family resnet20 --gen gen_wm_trainloss \
        --tag trainloss --recipes '[{"ode": "euler", "steps": 1, "w": 2.0, "target": "min"}]'

Every row also has novelty on noisy copies of 1024 train inputs (``aug0.5`` / ``aug1``:
Gaussian noise of 0.5 / 1 standardised units), a val/test-free proxy.

Outputs under runs/families/<family>/novelty/*.jsonl; the table is printed.
Selection rule (validation only): among the configurations whose validation novelty is at
most the zoo's validation leave-one-out novelty + 0.05 (pipeline.NOVELTY_SLACK), the best
validation accuracy.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_families import FAMILIES  # noqa: E402

from weightspace.arch import build  # noqa: E402
from weightspace.canonicalize import canonicalize_zoo  # noqa: E402
from weightspace.generate import audit, fit_generator, sample_zoo  # noqa: E402
from weightspace.generate.audit import affine_span, curve_margin  # noqa: E402
from weightspace.generate.config import Condition  # noqa: E402
from weightspace.generate.encoding import Encoding  # noqa: E402
from weightspace.generate.novelty import max_iou, probabilities  # noqa: E402
from weightspace.generate.pipeline import (NOVELTY_SLACK, _bn_fix, load_generator,  # noqa
                                           load_zoo_states)
from weightspace.zoo import Zoo, load_dataset, train_zoo  # noqa: E402


AUG_SIGMAS = (0.5, 1.0)


def root_of(name, out):
    return Path(out) / name


def prepare(name: str, out, steps: int = 4000) -> None:
    arch, dataset, models, hp, methods = FAMILIES[name]
    root = root_of(name, out)
    t = time.perf_counter()
    train_zoo(root / "zoo", arch, dataset, hp, models=models, progress=False)
    print(f"{name}: zoo {time.perf_counter() - t:.0f}s", flush=True)
    method = methods[0]
    canon, gen = root / f"canon_{method}", root / f"gen_{method}"
    if not Zoo(canon).exists():
        t = time.perf_counter()
        canonicalize_zoo(root / "zoo", canon, method, "barycenter", progress=False)
        print(f"{name}: canon {time.perf_counter() - t:.0f}s", flush=True)
    if not (gen / "generator.safetensors").exists():
        t = time.perf_counter()
        fit_generator(canon, gen, steps=steps, pca=True, condition="val_acc", progress=False)
        print(f"{name}: fit {time.perf_counter() - t:.0f}s", flush=True)


def baseline(name: str, out, n: int = 100) -> dict:
    """The README recipe exactly as generate_families.py runs it (reference row)."""
    root = root_of(name, out)
    method = FAMILIES[name][4][0]
    canon, gen, smp = root / f"canon_{method}", root / f"gen_{method}", root / f"samples_{method}"
    if not Zoo(smp).exists():
        sample_zoo(gen, smp, n, condition="max", guidance="auto", mix=1)  # K = 1: the reference
    rep = root / f"report_{method}" / "report.json"
    r = json.loads(rep.read_text()) if rep.exists() else \
        audit(smp, canon, out_dir=root / f"report_{method}")
    g, z = r["generated"], r["zoo"]
    row = {"zoo_acc": z["acc_mean"], "gen_acc": g["acc_mean"], "novelty": g["max_iou_mean"],
           "loo": z["max_iou_loo_mean"], "margin": g["noise_margin"]["at_mean"],
           "zoo_margin": z["noise_margin_loo"]["at_mean"],
           "eff": g["span"]["effective_models"]["mean"],
           "guidance": json.loads((smp / "manifest.json").read_text())["settings"]["guidance"]}
    print(json.dumps(row), flush=True)
    return r


# ----------------------------------------------------------------------------- the sweep
class Study:
    def __init__(self, name, out, gen_name=None):
        self.name, self.root = name, root_of(name, out)
        method = FAMILIES[name][4][0]
        self.canon = self.root / f"canon_{method}"
        self.gen_dir = self.root / (gen_name or f"gen_{method}")
        self.cfg, self.enc, self.model = load_generator(self.gen_dir)
        self.cn = Condition.from_dict(self.cfg["condition"])
        self.arch = self.cfg["arch"]
        self.data = load_dataset(self.cfg["dataset"]["name"])
        _, _, zs, _ = load_zoo_states(self.canon)
        self.zoo_states = zs
        self.zoo_codes = self.enc.zoo_codes.double()
        self.zoo_val_acc = torch.tensor(
            [e["metrics"]["val_acc"] for e in load_zoo_states(self.canon)[1]])
        zerr = {}
        for split in ("val", "test"):
            x, y = self.data[split]
            zerr[split] = probabilities(self.arch, zs, x).argmax(-1) != y
        # label-using but val/test-free novelty: errors on noisy copies of train inputs
        # (the zoo fits clean train inputs, and the val_acc condition cannot favour these)
        g = torch.Generator().manual_seed(123)
        xs, ys = self.data["train"][0][:1024], self.data["train"][1][:1024]
        self.aug = {}
        for sig in AUG_SIGMAS:
            xa = xs + sig * torch.randn(xs.shape, generator=g)
            self.aug[f"aug{sig:g}"] = (xa, ys)
            zerr[f"aug{sig:g}"] = probabilities(self.arch, zs, xa).argmax(-1) != ys
        self.zerr = zerr
        self.zprob_val = probabilities(self.arch, zs, self.data["val"][0])
        self.tv_loo = float(self.tv(self.zprob_val, loo=True).mean())
        self.loo = {s: float(max_iou(e, e, leave_one_out=True).mean()) for s, e in zerr.items()}
        self.zoo_acc = {s: float(1 - e.float().mean()) for s, e in zerr.items()}
        rep = json.loads((self.root / f"report_{method}" / "report.json").read_text())
        self.curve = [(c["max_iou"], c["acc"]) for c in rep["noise_curve"]]
        self.zoo_margin = rep["zoo"]["noise_margin_loo"]["at_mean"]
        self.zoo_eff = rep["zoo"]["span_loo"]["effective_models"]["mean"]
        pn = {k for k, _ in build(self.arch).named_parameters()}
        self.pn = pn
        self.penc = Encoding.fit(self.arch, [{k: v for k, v in s.items() if k in pn}
                                             for s in zs])
        self.pz = torch.stack([self.penc._flatten({k: v for k, v in s.items() if k in pn})
                               for s in zs])

    def tv(self, p, loo=False):
        """Per model: min over zoo models of the mean total variation between softmax
        outputs on the validation inputs (a label-free, continuous functional distance;
        216 digits val examples give too few errors for a stable error IoU)."""
        d = torch.stack([0.5 * (p - q).abs().sum(-1).mean(-1) for q in self.zprob_val], 1)
        if loo:
            d.fill_diagonal_(float("inf"))
        return d.min(1).values

    # ---------------------------------------------------------------- code generation
    @torch.no_grad()
    def ode(self, n, seed=0, w=1.0, target="max", temp=1.0, steps=10, w_sched=None,
            solver="midpoint"):
        """Midpoint (as flow.sample, 10 steps) or Euler integration, guidance w(t) =
        w_sched(t) or w."""
        m = self.model
        gen = torch.Generator().manual_seed(seed)
        x = temp * torch.randn(n, m.dim, generator=gen)
        if target in ("zoo", "zootop"):   # one condition per sample, drawn from the zoo's
            v = self.zoo_val_acc.double()       # val_acc values (zootop: the top half)
            if target == "zootop":
                v = v[v >= v.median()]
            g = torch.Generator().manual_seed(seed + 11)
            c = self.cn.normalise(v[torch.randint(len(v), (n,), generator=g)]).float()[:, None]
        else:
            c = torch.full((n, 1), float(self.cn.normalise(self.cn.target(target))))
        h = 1.0 / steps

        def f(t, x):
            wt = w if w_sched is None else w_sched(t)
            tt = torch.full((2 * len(x),), t)
            both = m(tt, torch.cat([x, x]), torch.cat([c, c]),
                     torch.arange(2 * len(x)) < len(x))
            vc, vu = both[:len(x)], both[len(x):]
            return vu + wt * (vc - vu)
        for i in range(steps):
            t = i * h
            if solver == "euler":
                x = x + h * f(t, x)
            else:
                x = x + h * f(t + h / 2, x + h / 2 * f(t, x))
        return x.double()

    def codes(self, r: dict, n: int, seed: int = 0):
        """Codes for a recipe dict."""
        kind = r.get("kind", "gen")
        g = torch.Generator().manual_seed(seed + 7)
        if kind == "zoomix":   # no generator: Dirichlet mixtures of (top-q val acc) zoo codes
            q = r.get("top", 1.0)
            keep = self.zoo_val_acc >= torch.quantile(self.zoo_val_acc.float(), 1 - q)
            zc = self.zoo_codes[keep]
            idx = torch.stack([torch.randperm(len(zc), generator=g)[:r["K"]] for _ in range(n)])
            wts = torch._standard_gamma(torch.full((n, r["K"]), float(r.get("alpha", 1.0)),
                                                   dtype=torch.float64), generator=g)
            wts = wts / wts.sum(1, keepdim=True)
            return (wts[:, :, None] * zc[idx]).sum(1)
        sched = None
        if r.get("sched") == "early":
            sched = lambda t: r["w"] if t < r.get("cut", 0.5) else 1.0  # noqa: E731
        elif r.get("sched") == "late":
            sched = lambda t: 1.0 if t < r.get("cut", 0.5) else r["w"]  # noqa: E731
        K = r.get("K", 1)
        x = self.ode(n * K, seed, r.get("w", 1.0), r.get("target", "max"), r.get("temp", 1.0),
                     r.get("steps", 10), sched, r.get("ode", "midpoint"))
        if K > 1:   # average K samples (in the canonical weight space: decode is affine)
            x = x.view(K, n, -1)
            wts = torch._standard_gamma(torch.full((n, K), float(r.get("alpha", 1e6)),
                                                   dtype=torch.float64), generator=g)
            wts = (wts / wts.sum(1, keepdim=True)).T[:, :, None]
            x = (wts * x).sum(0)
        if r.get("pcs"):      # keep the top principal components only (tail at the mean)
            x[:, r["pcs"]:] = 0
        if r.get("shrink") is not None:   # tail components shrunk toward the mean
            x[:, r.get("pcs_keep", 8):] *= r["shrink"]
        if r.get("cnoise"):   # code-space noise (whitened units)
            x = x + r["cnoise"] * torch.randn(x.shape, generator=g, dtype=torch.float64)
        return x

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, r: dict, n: int, seed: int = 0) -> dict:
        t0 = time.perf_counter()
        codes = self.codes(r, n, seed)
        states = _bn_fix([self.enc.decode(c.float()) for c in codes], self.arch, self.data)
        row = {"recipe": r, "n": n}
        for split in ("val", "test"):
            x, y = self.data[split]
            prob = probabilities(self.arch, states, x)
            wrong = prob.argmax(-1) != y
            if split == "val":
                row["val_tv"] = float(self.tv(prob).mean())
            acc = (1 - wrong.float().mean(1)).tolist()
            iou = max_iou(wrong, self.zerr[split]).tolist()
            row[f"{split}_acc"] = statistics.fmean(acc)
            row[f"{split}_nov"] = statistics.fmean(iou)
            if split == "test":
                row["margin"] = curve_margin(self.curve, iou, acc)["at_mean"]
        for split, (x, y) in self.aug.items():
            wrong = probabilities(self.arch, states, x).argmax(-1) != y
            row[f"{split}_acc"] = float(1 - wrong.float().mean())
            row[f"{split}_nov"] = float(max_iou(wrong, self.zerr[split]).mean())
        pg = torch.stack([self.penc._flatten({k: v for k, v in s.items() if k in self.pn})
                          for s in states])
        row["eff"] = statistics.fmean(affine_span(self.pz, pg)["effective"])
        row["s"] = time.perf_counter() - t0
        return row


def grid(name):
    """The recipes swept (cheap first)."""
    R = []
    for w in (1.0, 2.0, 3.0, 4.0):
        R.append({"w": w})
    for temp in (0.5, 1.5):
        for w in (1.0, 3.0):
            R.append({"w": w, "temp": temp})
    for w in (2.0, 3.0, 4.0):
        for cn in (0.3, 0.6):
            R.append({"w": w, "cnoise": cn})
    for pcs in (4, 8, 16):
        for w in (1.0, 3.0):
            R.append({"w": w, "pcs": pcs})
    for w in (3.0,):
        for sh in (0.5, 0.0):
            R.append({"w": w, "shrink": sh, "pcs_keep": 8})
    for K in (2, 3, 4, 8):
        for w in (1.0, 2.0, 3.0, 4.0):
            R.append({"w": w, "K": K})
    for K in (3,):
        for w in (3.0,):
            R.append({"w": w, "K": K, "alpha": 1.0})
    for target in ("mean",):
        for w in (3.0,):
            R.append({"w": w, "target": target})
    for sched in ("early", "late"):
        R.append({"w": 4.0, "sched": sched})
    for K in (2, 3, 4, 8):
        R.append({"kind": "zoomix", "K": K, "alpha": 1.0})
    for K in (3, 8):
        R.append({"kind": "zoomix", "K": K, "alpha": 1.0, "top": 0.5})
    return R


def passes(r: dict) -> int:
    """Velocity-network passes per generated network for a generator recipe."""
    per_step = 1 if r.get("ode") == "euler" else 2
    guided = 1 if r.get("w", 1.0) == 1.0 and r.get("sched") is None else 2
    return r.get("steps", 10) * per_step * guided * r.get("K", 1)


def budget_grid(budget: int = 20):
    """Sampling recipes of at most ``budget`` passes per network: ODE solver and steps,
    guidance weight and mix."""
    R = []
    for ode, steps in (("euler", 1), ("euler", 2), ("euler", 3), ("euler", 5),
                       ("euler", 10), ("euler", 20), ("midpoint", 5), ("midpoint", 10)):
        for w in (1.0, 1.5, 2.0, 3.0):
            for K in (1, 2, 4, 8, 16):
                r = {"ode": ode, "steps": steps, "w": w, "K": K}
                if passes(r) <= budget:
                    R.append(r)
    return R


def select(rows, limit):
    ok = [r for r in rows if r["val_nov"] <= limit]
    return max(ok, key=lambda r: r["val_acc"]) if ok else min(rows, key=lambda r: r["val_nov"])


def fmt(r):
    rc = dict(r["recipe"])
    return ",".join(f"{k}={v}" for k, v in rc.items())


def table(st: Study, rows, title):
    lim = st.loo["val"] + NOVELTY_SLACK
    print(f"\n## {title}: zoo val acc {st.zoo_acc['val']:.4f} test {st.zoo_acc['test']:.4f}; "
          f"LOO val {st.loo['val']:.3f} (limit {lim:.3f}) test {st.loo['test']:.3f} "
          f"(limit {st.loo['test'] + NOVELTY_SLACK:.3f}); zoo margin {100 * st.zoo_margin:+.2f}; "
          f"zoo LOO val TV {st.tv_loo:.4f}; zoo LOO eff {st.zoo_eff:.2f}; " +
          "; ".join(f"{k} acc {st.zoo_acc[k]:.3f} LOO {st.loo[k]:.3f}" for k in st.aug))
    print("| recipe | val acc | val nov | val TV | test acc | test nov | margin | eff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {fmt(r)} | {r['val_acc']:.4f} | {r['val_nov']:.3f} | {r['val_tv']:.4f} | "
              f"{r['test_acc']:.4f} | "
              f"{r['test_nov']:.3f} | {100 * r['margin']:+.2f} | {r['eff']:.2f} |")
    gen_rows = [r for r in rows if r["recipe"].get("kind", "gen") == "gen"]
    for label, rs in (("generator recipes", gen_rows), ("all incl. zoo mixes", rows)):
        if not rs:
            continue
        b = select(rs, lim)
        ok = (b["test_acc"] >= st.zoo_acc["test"] - 0.01, b["margin"] > 0,
              b["test_nov"] <= st.loo["test"] + NOVELTY_SLACK)
        print(f"chosen on validation ({label}): {fmt(b)} -> test acc {b['test_acc']:.4f} "
              f"nov {b['test_nov']:.3f} margin {100 * b['margin']:+.2f}; targets a/b/c {ok}")


def sweep(name, out, n, recipes=None, gen_name=None, tag="sweep"):
    st = Study(name, out, gen_name)
    path = st.root / "novelty" / f"{tag}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            d = json.loads(line)
            done[json.dumps(d["recipe"], sort_keys=True)] = d
    rows = []
    for r in recipes or (budget_grid() if tag == "budget" else grid(name)):
        key = json.dumps(r, sort_keys=True)
        if key not in done:
            done[key] = st.evaluate(r, n)
            with path.open("a") as f:
                f.write(json.dumps(done[key]) + "\n")
            d = done[key]
            print(f"{fmt(d)}: val {d['val_acc']:.4f}/{d['val_nov']:.3f}/{d['val_tv']:.4f} test "
                  f"{d['test_acc']:.4f}/{d['test_nov']:.3f} m {100 * d['margin']:+.2f} "
                  f"eff {d['eff']:.2f} ({d['s']:.0f}s)", flush=True)
        rows.append(done[key])
    table(st, rows, f"{name} ({tag}, {st.gen_dir.name}, n={n})")
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["prepare", "baseline", "sweep"])
    p.add_argument("--family", action="append", required=True)
    p.add_argument("--out", default="runs/families")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--recipes", help="JSON list of recipe dicts (default: the grid)")
    p.add_argument("--gen", help="generator directory name under the family (default: "
                   "gen_<method>)")
    p.add_argument("--tag", default="sweep",
                   help="output name; 'budget' sweeps budget_grid() (<= 20 passes)")
    a = p.parse_args()
    for fam in a.family:
        if a.stage == "prepare":
            prepare(fam, a.out)
        elif a.stage == "baseline":
            baseline(fam, a.out)
        elif a.stage == "sweep":
            sweep(fam, a.out, a.n, a.recipes and json.loads(a.recipes), gen_name=a.gen,
                  tag=a.tag)
