"""``weightspace align``: align checkpoint B to checkpoint A and write the permuted B."""
from __future__ import annotations

from ..checkpoint import check_checkpoint_out, load_models, peak_rss_mb, write_model
from ..device import resolve_device
from ..symmetry import spec as discover_spec
from ..symmetry.structure import permuted_tensors
from ..zoo.datasets import dataset_of
from .registry import get_align_method
from .restarts import align_with_restarts


def align_checkpoints(a, b, out, method: str = "wm", arch: str | None = None,
                      dataset: str | None = None, data_root=None, seed: int = 0,
                      restarts: int = 1, device="auto", dtype=None, max_shard_size=None,
                      **options) -> dict:
    """Permute B into A's basin with ``method`` (its ``options``) and write it to ``out``
    (same function as B; the metadata records the alignment). ``arch`` is for ``.pt``
    state dicts; data (``dataset``, default A's) for methods that read it, and to choose
    among ``restarts`` (lowest train midpoint loss; without data: lowest L2). Returns the
    match report with ``out``, the restarts, the device and the loading notes. ``device``:
    where the work runs (:mod:`weightspace.device`; ``"auto"``: CUDA when there is one).
    A and B may be in any layout (:func:`weightspace.checkpoint.open_checkpoint`); ``out``
    is one ``.safetensors`` file or a Hub directory (``max_shard_size``), in B's precision
    unless ``dtype`` is given."""
    check_checkpoint_out(out, dtype, max_shard_size)
    dev = resolve_device(device)
    ma, mb = load_models([a, b], arch)
    A, B = ma.state_dict(), mb.state_dict()
    data = dataset_of(ma, dataset, data_root, why=f"method {method!r} needs data",
                      required=get_align_method(method).needs_data) \
        if get_align_method(method).needs_data or restarts > 1 else None
    spec = discover_spec(ma.weightspace_arch)
    perms, rep, runs, _ = align_with_restarts(spec, A, B, method, restarts, model=ma,
                                              data=data, seed=seed, device=dev, **options)
    meta = {**mb.weightspace_meta, "aligned": {"to": str(a), "method": method,
                                              "l2_before": rep.l2_before,
                                              "l2_after": rep.l2_after}}
    written = write_model(out, permuted_tensors(spec, perms, B), mb, meta, dtype, max_shard_size,
                          card=f"B ({b}) permuted into the basin of A ({a}) by `{method}` "
                               f"alignment.")
    notes = [n for m in (ma, mb) for n in m.weightspace_notes]
    return {**rep.to_dict(), "out": str(out), "restarts": runs, "device": str(dev),
            **written, "load_notes": notes, "peak_rss_mb": peak_rss_mb()}
