"""The mixability probe of a zoo on disk, and the canonicalization chosen by it.

:func:`probe_zoo` canonicalizes a zoo in memory (or takes a canonical zoo as it is) and
runs :func:`.mixing.mixability` on its validation split; :func:`choose_canonicalization`
does so for each candidate (the zoo as it is, wm, am, ste; TransFusion where the spec has
attention heads) with the same draws and keeps the one whose mixtures are most accurate
on validation data (never test), with every candidate's numbers recorded.
"""
from __future__ import annotations

import time

from ..arch import build
from ..canonicalize.zoo import canonical_states
from ..checkpoint import read_checkpoint
from ..device import placed, resolve_device
from ..symmetry.cache import zoo_spec
from ..zoo.datasets import load_dataset
from ..zoo.store import Zoo, ZooError, finished
from .mixing import DRAWS, MIX_TARGET, SIZES, MixabilityReport, mixability

# "none": the zoo as it is. Models that share an initialisation can be linearly connected as
# they are while every alignment method permutes them out of that basin (units that moved
# far from the shared start no longer look alike), so the unaligned zoo is a candidate too.
CANDIDATES = ("none", "wm", "am", "ste")  # + transfusion where the spec has heads


def _init_kind(manifest: dict) -> str | None:
    init = manifest.get("settings", {}).get("init") if isinstance(
        manifest.get("settings"), dict) else None
    return init.get("kind") if isinstance(init, dict) else None


def probe_zoo(zoo_dir, method: str | None = None, reference: str = "barycenter",
              correction: str = "auto", draws: int = DRAWS, seed: int = 0,
              target: float = MIX_TARGET, sizes: tuple[int, ...] = SIZES, data_root=None,
              device="cpu", max_rounds: int = 20, progress: bool = False,
              keep: dict | None = None, tried: tuple[str, ...] = (),
              **method_kw) -> MixabilityReport:
    """The mixability of ``zoo_dir``'s finished models once canonicalized by ``method``
    (to ``reference``; ``none``: as they are; None: a canonical zoo as it is, any other
    zoo as it is too). Validation split of the zoo's dataset; the correction calibrates
    on its train split. See :func:`.mixing.mixability`. ``keep``: a dict that receives
    the canonicalized zoo (``keep["canonical"]``, a
    :class:`~weightspace.canonicalize.zoo.Canonical`) so that it can be written without
    aligning again; ``tried``: the other canonicalizations compared with this one (the
    advice line does not suggest them)."""
    zoo = Zoo(zoo_dir)
    manifest = zoo.read()
    ds = manifest.get("dataset", {})
    notes = []
    canonical = manifest.get("canonicalization")
    as_is = method in (None, "none")
    if method is None:
        method = canonical.get("method", "given") if canonical else "none"
    if as_is:
        how = f"canonicalized by {canonical.get('method')}" if canonical else \
            "not canonicalized"
        notes.append(f"models taken as they are ({how})")
        entries = finished(manifest)
        if len(entries) < 2:
            raise ZooError(f"{zoo_dir}: need at least two finished models, found "
                           f"{len(entries)}")
        loaded = [read_checkpoint(zoo.model_path(e["id"])) for e in entries]
        states = [s for s, _, _ in loaded]
        arch = loaded[0][1]
        spec = zoo_spec(zoo.root, arch, str(zoo.model_path(entries[0]["id"])), states[0])
        data = load_dataset(ds.get("name", ""), data_root or ds.get("data_root"))
    else:
        c = canonical_states(zoo_dir, method, reference, data_root, seed,
                             max_rounds=max_rounds, progress=progress, device=device,
                             **method_kw)
        states, spec, arch = c.states, c.spec, c.loaded[0][1]
        if keep is not None:
            keep["canonical"] = c
        data = c.data if c.data is not None else load_dataset(
            ds.get("name", ""), data_root or ds.get("data_root"))
        notes.append(f"canonicalized by {method} to {reference} in "
                     f"{c.report['seconds']:.1f} s ({c.report['rounds']} round(s))")
    dev = resolve_device(device)
    model = build(arch)
    states, model, data = placed(dev, [{k: v for k, v in s.items()} for s in states], model,
                                 data)
    rep = mixability(states, model, spec, data["val"], data, correction, draws, seed, sizes,
                     target, method, _init_kind(manifest), tuple(tried))
    rep.notes = notes + rep.notes
    return rep


def has_heads(spec) -> bool:
    """Whether the spec has per-block (attention head) groups: TransFusion applies."""
    return any(g.parent is not None for g in spec.groups)


def choose_canonicalization(zoo_dir, candidates: tuple[str, ...] | None = None,
                            correction: str = "auto", draws: int = DRAWS, seed: int = 0,
                            target: float = MIX_TARGET, data_root=None, device="cpu",
                            max_rounds: int = 20, log=None,
                            options: dict[str, dict] | None = None,
                            keep: dict | None = None) -> dict:
    """Probe the zoo canonicalized (to the barycenter) by each candidate method, with the
    same draws, and pick the one whose mixtures reach the highest mean validation accuracy
    (ties: the earlier candidate, cheaper first). Returns the record a generator keeps:
    ``{"chosen", "rule", "candidates", "reports": {method: report dict}, "seconds"}``.
    ``candidates`` default: none (the zoo as it is), wm, am, ste, and transfusion where
    the spec has heads;
    ``options``: a method's own options by method name (e.g. ``{"ste": {"steps": 100}}``);
    ``keep``: a dict that receives the chosen method's canonicalized zoo
    (``keep["canonical"]``; absent when the zoo as it is wins)."""
    t0 = time.perf_counter()
    if candidates is None:
        zoo = Zoo(zoo_dir)
        entry = finished(zoo.read())
        if not entry:
            raise ZooError(f"{zoo_dir}: no finished models")
        state, arch, _ = read_checkpoint(zoo.model_path(entry[0]["id"]))
        spec = zoo_spec(zoo.root, arch, str(zoo.model_path(entry[0]["id"])), state)
        candidates = CANDIDATES + (("transfusion",) if has_heads(spec) else ())
    reports: dict[str, MixabilityReport] = {}
    best = None
    for m in candidates:
        got: dict = {}
        reports[m] = probe_zoo(zoo_dir, m, "barycenter", correction, draws, seed, target,
                               data_root=data_root, device=device, max_rounds=max_rounds,
                               keep=got, tried=tuple(candidates),
                               **(options or {}).get(m, {}))
        if best is None or reports[m].score > reports[best].score:
            best = m  # only the best so far is kept in memory
            if keep is not None:
                keep.pop("canonical", None)
                if "canonical" in got:
                    keep["canonical"] = got["canonical"]
        if log is not None:
            log(f"{m}: mixtures {reports[m].score:.4f} (singles {reports[m].single_mean:.4f})")
    chosen = best  # the highest score; ties: the earlier (cheaper) candidate
    return {"chosen": chosen,
            "rule": "the highest mean validation accuracy of random means of "
                    f"{' and '.join(reports[chosen].mixtures)} canonical models",
            "candidates": list(candidates),
            "reports": {m: r.to_dict() for m, r in reports.items()},
            "seconds": time.perf_counter() - t0}


__all__ = ["CANDIDATES", "choose_canonicalization", "has_heads", "probe_zoo"]
