"""``weightspace align``: align checkpoint B to checkpoint A and write the permuted B."""
from __future__ import annotations

from ..checkpoint import load_models, save_checkpoint
from ..errors import check_output
from ..symmetry import apply, spec as discover_spec
from ..zoo.datasets import dataset_of
from .registry import align, get_align_method


def align_checkpoints(a, b, out, method: str = "wm", arch: str | None = None,
                      dataset: str | None = None, data_root=None, seed: int = 0,
                      **options) -> dict:
    """Permute B into A's basin with ``method`` (its ``options``) and write it to ``out``
    (same function as B; the metadata records the alignment). ``arch`` is for ``.pt``
    state dicts; data (``dataset``, default A's) only for methods that read it. Returns the
    match report with ``out`` and the loading notes."""
    check_output(out, "file")
    ma, mb = load_models([a, b], arch)
    A, B = ma.state_dict(), mb.state_dict()
    data = dataset_of(ma, dataset, data_root, why=f"method {method!r} needs data") \
        if get_align_method(method).needs_data else None
    spec = discover_spec(ma.weightspace_arch)
    perms, rep = align(spec, A, B, method, model=ma, data=data, seed=seed, **options)
    meta = {**mb.weightspace_meta, "aligned": {"to": str(a), "method": method,
                                              "l2_before": rep.l2_before,
                                              "l2_after": rep.l2_after}}
    save_checkpoint(out, apply(spec, perms, B), mb.weightspace_arch, meta)
    notes = [n for m in (ma, mb) for n in m.weightspace_notes]
    return {**rep.to_dict(), "out": str(out), "load_notes": notes}
