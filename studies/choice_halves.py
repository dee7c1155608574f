"""Does the sampling choice's validation measurement predict the test (issue 24, item 5)?

A generator conditioned on ``val_acc`` (every validation example) and guided towards the
zoo's best value is steered towards the validation examples; the sampling choice, scored
on the same examples, then overstates the chosen setting's accuracy. This study takes a
finished ``generate run`` directory (its canonical zoo and its generator, conditioned on
``val_acc``), fits a second generator on the same canonical zoo conditioned on
``val_acc_half`` (the default now: accuracy on half of the validation split), and for
every sampling setting of the grid measures ``--nets`` networks (BatchNorm recalibrated
on ``--calibration`` train examples, as the sampler does) of each generator on the
validation and the test split. Per generator it prints, for each setting, the accuracy
difference with the zoo on the examples the choice uses (every validation example for
``val_acc``; the other half for ``val_acc_half``) next to the test difference, their
mean gap over guided settings, and what the choice rule picks and how it does on test.

    .venv/bin/python studies/choice_halves.py RUN_DIR --out OUT [--nets 64]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from weightspace.evaluation import errors
from weightspace.generate import fit_generator
from weightspace.generate.choose import (ACC_TARGET, NOVELTY_SLACK, averaged, candidates,
                                         accuracy_bound, choose_by_bound)
from weightspace.generate.config import (GUIDANCE_GRID, MIX_GRID, SOLVER_GRID, Condition)
from weightspace.generate.flow import sample
from weightspace.generate.halves import choice_examples
from weightspace.generate.novelty import max_iou
from weightspace.generate.sample import Correction
from weightspace.generate.store import load_generator, load_zoo_states
from weightspace.zoo.datasets import load_dataset


def zoo_errors(zoo_dir: Path, arch: str, data) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, states, _ = load_zoo_states(zoo_dir)
    return errors(arch, states, *data["val"]), errors(arch, states, *data["test"])


def measure(gen: Path, data, nets: int, calibration: int, seed: int = 0) -> dict:
    """Per grid setting: [nets, n_val] and [nets, n_test] errors of its networks."""
    cfg, enc, model = load_generator(gen)
    cn = Condition.from_dict(cfg["condition"])
    c = cn.normalise(cn.max)
    correct, _ = Correction.resolve("auto", cfg["arch"], data, enc, cfg["zoo"])
    out = {}
    for st in candidates(SOLVER_GRID, GUIDANCE_GRID, MIX_GRID, True):
        codes, _ = sample(model, nets * st.mix, st.steps, st.method, seed=seed, cond=c,
                          guidance=st.guidance)
        codes = averaged(codes, st.mix)
        states = correct([enc.decode(x) for x in codes], codes, calibration)
        out[st] = (errors(cfg["arch"], states, *data["val"]),
                   errors(cfg["arch"], states, *data["test"]))
        print(f"  {gen.name} {st}", flush=True)
    return {"condition": cn.name, "errors": out}


def analyse(m: dict, zoo_val, zoo_test) -> dict:
    idx, why = choice_examples(m["condition"], zoo_val.shape[1])
    idx = torch.arange(zoo_val.shape[1]) if idx is None else idx
    zv = zoo_val[:, idx]
    limit = float(max_iou(zv, zv, leave_one_out=True).mean()) + NOVELTY_SLACK
    diff, lower, nov, test = {}, {}, {}, {}
    for st, (ev, et) in m["errors"].items():
        diff[st], lower[st] = accuracy_bound(ev[:, idx], zv)
        nov[st] = float(max_iou(ev[:, idx], zv).mean())
        test[st] = accuracy_bound(et, zoo_test)[0]
    chosen, rule = choose_by_bound(diff, lower, nov, limit,
                                   cost=lambda o: (o.passes(True) or 0, o.guidance, o.mix))
    guided = [s for s in diff if s.guidance != 1.0]
    gap = sum(diff[s] - test[s] for s in guided) / len(guided)
    plain = [s for s in diff if s.guidance == 1.0]
    gap_plain = sum(diff[s] - test[s] for s in plain) / len(plain)
    et = m["errors"][chosen][1]
    return {"condition": m["condition"], "examples": len(idx), "why": why,
            "gap_guided": gap, "gap_unguided": gap_plain,
            "chosen": chosen._asdict(), "rule": rule, "val_diff": diff[chosen],
            "val_lower": lower[chosen], "test_diff": test[chosen],
            "test_novelty": float(max_iou(et, zoo_test).mean()),
            "zoo_test_loo_novelty": float(max_iou(zoo_test, zoo_test, True).mean()),
            "accurate_on_val": lower[chosen] >= -ACC_TARGET,
            "accurate_on_test": test[chosen] >= -ACC_TARGET,
            "rows": [{**s._asdict(), "val_diff": diff[s], "val_lower": lower[s],
                      "val_novelty": nov[s], "test_diff": test[s]} for s in diff]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--nets", type=int, default=48)
    ap.add_argument("--calibration", type=int, default=512)
    a = ap.parse_args()
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    canon, old = a.run / "canonical", a.run / "generator"
    cfg = json.loads((old / "config.json").read_text())
    data = load_dataset(cfg["dataset"].get("name", "digits"))
    half = a.out / "generator-half"
    if not (half / "generator.safetensors").is_file():
        fit_generator(canon, half, progress=False, probe=False,
                      **{k: v for k, v in cfg["train"].items()})
    zv, zt = zoo_errors(canon, cfg["arch"], data)
    res = []
    for gen in (old, half):
        r = analyse(measure(gen, data, a.nets, a.calibration), zv, zt)
        res.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "rows"}, indent=1), flush=True)
    (a.out / "choice_halves.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
