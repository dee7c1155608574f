"""``weightspace merge --recipe`` / ``--method TV_METHOD --base``: a task-vector merge of
checkpoint files, streamed (:mod:`.stream`) from the lazy reader into the streaming writer.

The output (one ``.safetensors`` file or a Hub directory) records the recipe it was made
from (mergekit's keys plus the ``weightspace`` block, every default filled in) in its
metadata, and a directory's README.md shows it as YAML, as mergekit's cards do. Alignment
(``align``) and a BatchNorm reset (``bn: reset``) need the model built and the whole
inputs in memory; a plain merge holds one tensor per input at a time.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from ... import __version__
from ...checkpoint import (META_KEY, VERSION_KEY, CheckpointWriter, checkpoint_metadata,
                           is_single_file, model_card, open_checkpoint)
from ...errors import check_output
from .base import TaskVectorError
from .recipe import Recipe
from .stream import StateSource, check_sources, merge_sources


def merge_recipe(recipe: Recipe, out, arch: str | None = None, data_root=None,
                 max_shard_size=None) -> dict:
    """Merge ``recipe``'s checkpoints into ``out``; returns the report (what each tensor
    got, the alignment's distances, seconds). Nothing is written when anything fails."""
    check_output(out, "file" if is_single_file(out) else "dir")
    created = _missing_parents(Path(out))
    try:
        return _merge_recipe(recipe, out, arch, data_root, max_shard_size)
    except BaseException:
        for d in created:  # the writer made out's parents: remove those it left empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _missing_parents(out: Path) -> list[Path]:
    """``out``'s parent directories that do not exist yet, deepest first."""
    missing, d = [], out.absolute().parent
    while not d.exists():
        missing.append(d)
        d = d.parent
    return missing


def _merge_recipe(recipe: Recipe, out, arch, data_root, max_shard_size) -> dict:
    t0 = time.perf_counter()
    names = [m.model for m in recipe.inputs]
    with contextlib.ExitStack() as stack:
        cks = [stack.enter_context(open_checkpoint(p, arch)) for p in names]
        ref = _ref_index(recipe)
        ref_arch = cks[ref].arch
        report = {"method": recipe.merge_method, "inputs": names,
                  "base": recipe.base_model, "defaults": recipe.defaults(),
                  "notes": list(recipe.notes) + [c.wrapper_note for c in cks
                                                  if c.wrapper_note]}
        sources = cks
        needs_model = recipe.align != "none" or recipe.bn == "reset"
        if needs_model and not ref_arch:
            raise TaskVectorError(f"{names[ref]}: align / bn reset build the model, and this "
                                  f"checkpoint names no architecture (pass arch)")
        data = _data(recipe, cks[ref], data_root) if needs_model else None
        if recipe.align != "none":
            if recipe.base_index is None:
                raise TaskVectorError(f"align needs a base model to align to, and "
                                      f"{recipe.merge_method!r} takes none")
            states = [c.state_dict() for c in cks]
            aligned, report["align"] = align_to_base(recipe, states, ref_arch, data)
            sources = [StateSource(s, n) for s, n in zip(aligned, names)]
        _, _, differ = check_sources(recipe, sources, names)
        record = {"merged": {"recipe": recipe.to_dict(), "defaults": recipe.defaults(),
                             "method": recipe.merge_method,
                             **({"heads_from_base": differ} if differ else {})},
                  **({"dataset": cks[ref].meta.get("dataset")}
                     if cks[ref].meta.get("dataset") else {})}
        metadata = checkpoint_metadata(ref_arch, record) if ref_arch else \
            {VERSION_KEY: __version__, META_KEY: json.dumps(record, sort_keys=True)}
        card = None if is_single_file(out) else model_card(
            f"{recipe.merge_method} merge of {len(names)} checkpoints", metadata,
            "Recipe:\n\n```yaml\n" + recipe_yaml(recipe) + "```")
        layout = {} if is_single_file(out) else {"card": card,
                                                 "max_shard_size": max_shard_size}
        if recipe.bn == "reset":
            merged = {}
            report.update(merge_sources(recipe, sources, merged.__setitem__, names))
            merged = _bn_reset(ref_arch, merged, data)
            with CheckpointWriter(out, metadata, **layout) as w:
                for k in sorted(merged):
                    w.add(k, merged[k])
        else:
            with CheckpointWriter(out, metadata, **layout) as w:
                report.update(merge_sources(recipe, sources, w.add, names))
    report["out"], report["seconds"] = str(out), time.perf_counter() - t0
    return report


def recipe_yaml(recipe: Recipe) -> str:
    import yaml
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def _ref_index(recipe: Recipe) -> int:
    if recipe.base_model is None:
        return 0
    return next(i for i, m in enumerate(recipe.inputs) if m.model == recipe.base_model)


def _data(recipe: Recipe, ck, data_root):
    """The dataset for data-reading alignment and the BN reset (train split only)."""
    from ...arch import build
    from ...zoo.datasets import dataset_of
    if recipe.bn != "reset" and recipe.align not in ("am", "ste"):
        return None  # weight matching reads no data
    model = build(ck.arch)
    model.weightspace_meta = ck.meta
    return dataset_of(model, recipe.dataset, data_root,
                      why=f"align {recipe.align!r} / bn {recipe.bn!r} reads train data")


def align_to_base(recipe: Recipe, states: list[dict], arch: str, data) -> tuple[list, dict]:
    """Every input permuted into the base's basin (the base itself unchanged), and per
    input the L2 distance to the base before / after and how many units moved."""
    from ...arch import build
    from ...canonicalize import align
    from ...symmetry import apply, spec as discover_spec
    from ...symmetry.structure import identity_perms

    base = recipe.base_index
    spec = discover_spec(arch)
    model = build(arch)
    ident = identity_perms(spec)
    out, rows = [], []
    for i, s in enumerate(states):
        if i == base:
            out.append(s)
            continue
        perms, rep = align(spec, states[base], s, recipe.align, model=model, data=data,
                           seed=recipe.seed)
        moved = sum(int((perms[g] != ident[g]).sum()) for g in perms)
        out.append(apply(spec, perms, s))
        rows.append({"model": recipe.inputs[i].model, "l2_before": rep.l2_before,
                     "l2_after": rep.l2_after, "units_moved": moved})
    return out, {"method": recipe.align, "models": rows}


def _bn_reset(arch: str, merged: dict, data) -> dict:
    from ...arch import build
    from ...functional import recalibrated
    from ..lmc import CALIB
    return recalibrated(build(arch), merged, data["train"][0][:CALIB])
