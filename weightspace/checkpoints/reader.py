"""One lazy reader for every layout: :func:`open_checkpoint` -> :class:`LazyCheckpoint`.

Tensors are read one at a time (``safe_open`` for safetensors; ``torch.load`` with
``weights_only=True`` and ``mmap=True`` for ``torch.save`` files, which never runs pickled
code and pages data in on use). Wrappers are removed and reported in one line: nesting
under ``state_dict`` / ``model`` / ``module`` in ``torch.save`` files, and key prefixes
(``module.`` from DDP, ``model.`` from Lightning, ``_orig_mod.`` from torch.compile, or
one shared leading name) -- a prefix only when the stripped keys are exactly the
architecture's, so a model whose own modules are called ``model`` keeps its keys.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from urllib.parse import quote

import torch

from . import ARCH_KEY, META_KEY, CheckpointError
from .layouts import Layout, resolve

NESTING = ("state_dict", "model_state_dict", "model", "module")
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
             "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
             "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
             "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
             "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_TIMM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")


class _SafeFile:
    """One safetensors file: validated by ``safe_open``, then read with plain file reads
    into fresh tensors. Not through the memory map: mapped pages once touched count as the
    process's resident memory until the file is closed, so a streamed merge of large
    checkpoints would hold every input in RSS."""

    def __init__(self, path: Path):
        from safetensors import SafetensorError, safe_open
        _refuse_pickle_in_disguise(path)
        try:
            with safe_open(str(path), framework="pt") as f:  # checks header and offsets
                self.names = list(f.keys())
                self.metadata = dict(f.metadata() or {})
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None
        self.path = path
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            self.header = json.loads(f.read(n))
        self.start = 8 + n
        self.f = open(path, "rb")

    def shape(self, name):
        return tuple(self.header[name]["shape"])

    def dtype(self, name):
        return ST_DTYPES[self.header[name]["dtype"]]

    def get(self, name):
        h = self.header[name]
        t = torch.empty(h["shape"], dtype=ST_DTYPES[h["dtype"]])
        lo, hi = h["data_offsets"]
        if hi > lo:
            self.f.seek(self.start + lo)
            buf = t.reshape(-1).view(torch.uint8).numpy()
            if self.f.readinto(memoryview(buf)) != hi - lo:
                raise CheckpointError(f"{self.path}: tensor {name!r} is truncated")
        return t

    def close(self):
        self.f.close()


class _TorchFile:
    """One ``torch.save`` file: loaded with ``weights_only=True`` (memory-mapped when the
    file is in the zip format), wrappers nesting the state dict removed."""

    def __init__(self, path: Path):
        obj = _torch_load(path)
        self.nesting = []
        while isinstance(obj, dict) and not _all_tensors(obj):
            key = next((k for k in NESTING if isinstance(obj.get(k), dict)), None)
            if key is None:
                break
            self.nesting.append(key)
            obj = obj[key]
        if not isinstance(obj, dict) or not obj or not _all_tensors(obj):
            bad = next((f"{k!r} holds a {type(v).__name__}" for k, v in obj.items()
                        if not isinstance(v, torch.Tensor)), "it is empty") \
                if isinstance(obj, dict) else f"it is a {type(obj).__name__}"
            where = "".join(f"[{k!r}]" for k in self.nesting)
            raise CheckpointError(f"{path}{where}: expected a state dict of tensors, but {bad}")
        self.tensors = obj
        self.names = list(obj)
        self.metadata = {}

    def shape(self, name):
        return tuple(self.tensors[name].shape)

    def dtype(self, name):
        return self.tensors[name].dtype

    def get(self, name):
        return self.tensors[name]


def _all_tensors(d: dict) -> bool:
    return all(isinstance(v, torch.Tensor) for v in d.values())


def _torch_load(path: Path):
    with warnings.catch_warnings():  # protocol notes from the weights-only unpickler
        warnings.simplefilter("ignore", UserWarning)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # the legacy (non-zip) format cannot be mapped
                raise CheckpointError(_unsafe(path, e)) from None
        except Exception as e:  # weights_only refuses anything that is not plain data
            raise CheckpointError(_unsafe(path, e)) from None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(_unsafe(path, e)) from None


def _unsafe(path, e) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{path}: cannot load safely with weights_only=True ({msg})"


def _refuse_pickle_in_disguise(path: Path) -> None:
    # safetensors: u64 little-endian header length, then the JSON header ("{"). Its first
    # byte can be 0x80, so test for safetensors before guessing a pickle / zip.
    with open(path, "rb") as f:
        head = f.read(9)
    looks_safetensors = head[8:9] == b"{" and \
        int.from_bytes(head[:8], "little") <= path.stat().st_size - 8
    if not looks_safetensors and (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise CheckpointError(f"{path}: looks like a pickle / torch.save file, not safetensors; "
                              "rename it to .pt and pass --arch to load it safely")


class LazyCheckpoint:
    """A checkpoint in any layout, read one tensor at a time.

    ``keys()`` are sorted and already stripped of wrapper prefixes; ``get(name)`` loads one
    tensor (in its stored dtype); ``arch`` is ``arch`` given, else the file's
    ``weightspace.arch``, else the one ``config.json`` names (None when none is known);
    ``wrapper_note`` is one line saying which nesting / prefix was removed (None: none)."""

    def __init__(self, layout: Layout, arch: str | None = None, allow_code: bool = False):
        self.path, self.layout, self.config = layout.path, layout, layout.config
        opener = _SafeFile if layout.kind == "safetensors" else _TorchFile
        self._files = [opener(p) for p in layout.files]
        self._where = self._locate()
        first = self._files[0].metadata
        extra = {}
        if layout.index is not None:
            idx = json.loads(layout.index.read_text()).get("metadata") or {}
            extra = {k: v for k, v in idx.items() if isinstance(v, str)} \
                if isinstance(idx, dict) else {}
        self.metadata = {**extra, **first}
        self.arch = arch or self.metadata.get(ARCH_KEY) or arch_from_config(self.config,
                                                                             self.path)
        self._names, self.wrapper_note = self._strip(allow_code)

    def _locate(self) -> dict:
        """Raw tensor name -> file; a tensor in two shards, or an index that disagrees with
        its shards, is refused."""
        where = {}
        for f, p in zip(self._files, self.layout.files):
            for n in f.names:
                if n in where:
                    raise CheckpointError(f"{self.path}: tensor {n!r} is in two shards "
                                          f"({where[n][1].name} and {p.name})")
                where[n] = (f, p)
        for n, shard in self.layout.weight_map.items():
            if n not in where:
                raise CheckpointError(f"{self.layout.index}: names tensor {n!r} (in "
                                      f"{shard.name}), which no shard has")
            if where[n][1] != shard:
                raise CheckpointError(f"{self.layout.index}: puts tensor {n!r} in "
                                      f"{shard.name}, but {where[n][1].name} holds it")
        extra = [n for n in where if self.layout.index is not None
                 and n not in self.layout.weight_map]
        if extra:
            raise CheckpointError(f"{self.layout.index}: shard {where[extra[0]][1].name} "
                                  f"holds tensor {extra[0]!r}, which the index does not list")
        return {n: f for n, (f, _) in where.items()}

    def _strip(self, allow_code: bool):
        raw = sorted(self._where)
        nest = next((f.nesting for f in self._files if getattr(f, "nesting", None)), [])
        nested = "tensors nested under " + "".join(f"[{k!r}]" for k in nest) if nest else None
        cands = _prefix_candidates(raw)
        if len(cands) == 1 or not self.arch:
            return {k: k for k in raw}, nested and f"{self.path}: {nested}"
        expected = expected_keys(self.arch, allow_code)
        floating = {k for k, dt in expected.items() if dt.is_floating_point}
        best = None
        for p in cands:
            sel = {k[len(p):]: k for k in raw if k.startswith(p)}
            if set(sel) <= set(expected) and floating <= set(sel):
                best = (p, sel)
                break
        if best is None:
            overlap = [(len(set(expected) & {k[len(p):] for k in raw if k.startswith(p)}), p)
                       for p in cands]
            n, p = max(overlap, key=lambda t: (t[0], -len(t[1])))
            if n == 0:
                tried = ", ".join(repr(c) for c in cands[1:])
                raise CheckpointError(
                    f"{self.path}: no tensor name matches {self.arch} (e.g. {raw[0]!r}; the "
                    f"model has {sorted(expected)[0]!r}); tried removing the prefix(es) "
                    f"{tried}")
            best = (p, {k[len(p):]: k for k in raw if k.startswith(p)})
        p, sel = best
        if not p:
            return sel, nested and f"{self.path}: {nested}"
        parts = ([nested] if nested else []) + [f"removed the prefix {p!r} from {len(sel)} "
                                                f"tensor name(s)"]
        dropped = [k for k in raw if not k.startswith(p)]
        if dropped:
            parts.append(f"ignored {len(dropped)} tensor(s) outside it (e.g. {dropped[0]!r})")
        return dict(sorted(sel.items())), f"{self.path}: {'; '.join(parts)} to match {self.arch}"

    # -- the contract -------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name) -> bool:
        return name in self._names

    def _file(self, name):
        try:
            raw = self._names[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor {name!r}") from None
        return self._where[raw], raw

    def shape(self, name: str) -> tuple[int, ...]:
        f, raw = self._file(name)
        return f.shape(raw)

    def dtype(self, name: str) -> torch.dtype:
        f, raw = self._file(name)
        return f.dtype(raw)

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read now, in its stored dtype."""
        f, raw = self._file(name)
        return f.get(raw)

    def state_dict(self) -> dict:
        """Every tensor at once (for the algorithms that need the whole model)."""
        return {k: self.get(k) for k in self._names}

    @property
    def meta(self) -> dict:
        """The free-form ``weightspace.meta`` JSON object ({} when absent)."""
        try:
            meta = json.loads(self.metadata.get(META_KEY, "{}"))
        except json.JSONDecodeError:
            raise CheckpointError(f"{self.path}: metadata '{META_KEY}' is not valid JSON") \
                from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{self.path}: metadata '{META_KEY}' must be a JSON object, "
                                  f"not {type(meta).__name__}")
        return meta

    def close(self) -> None:
        for f in self._files:
            if hasattr(f, "close"):
                f.close()
        self._files, self._where = [], {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_checkpoint(path, arch: str | None = None, allow_code: bool = False) -> LazyCheckpoint:
    """Open a checkpoint in any supported layout (see :mod:`weightspace.checkpoints`)."""
    return LazyCheckpoint(resolve(path), arch, allow_code)


def _prefix_candidates(keys: list[str]) -> list[str]:
    """``""`` then the wrapper prefixes worth trying, shortest first: a known wrapper
    (``module.`` ...) some names start with, or a leading name all of them share, nested up
    to three deep (``model._orig_mod.``)."""
    out, frontier = [""], [""]
    for _ in range(3):
        nxt = []
        for p in frontier:
            sub = [k[len(p):] for k in keys if k.startswith(p)]
            heads = {k.split(".", 1)[0] + "." for k in sub if "." in k}
            shared = [next(iter(heads))] if len(heads) == 1 and all("." in k for k in sub) \
                else []
            for w in dict.fromkeys(shared + [w for w in WRAPPER_PREFIXES if w in heads]):
                if p + w not in out:
                    out.append(p + w)
                    nxt.append(p + w)
        frontier = nxt
    return out


_EXPECTED: dict[str, dict] = {}


def expected_shapes(ref: str, allow_code: bool = False) -> dict:
    """Name -> (shape, dtype) of the state dict ``ref`` builds, in the model's order (built
    on the meta device: no memory for the weights)."""
    if ref not in _EXPECTED:
        from ..arch import build
        try:
            with torch.device("meta"):
                model = build(ref, allow_code=allow_code)
        except (RuntimeError, NotImplementedError):  # an init that needs real data
            model = build(ref, allow_code=allow_code)
        _EXPECTED[ref] = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    return _EXPECTED[ref]


def expected_keys(ref: str, allow_code: bool = False) -> dict:
    """Name -> dtype of the state dict ``ref`` builds."""
    return {k: dt for k, (_, dt) in expected_shapes(ref, allow_code).items()}


def arch_from_config(cfg: dict | None, path) -> str | None:
    """The architecture a Hub ``config.json`` names: ``weightspace_arch``, or timm's
    ``architecture`` with ``num_classes`` / ``in_chans`` / ``model_args``; None otherwise."""
    if not cfg:
        return None
    if isinstance(cfg.get("weightspace_arch"), str):
        return cfg["weightspace_arch"]
    name = cfg.get("architecture")
    if not isinstance(name, str):
        return None
    if not _TIMM_NAME.fullmatch(name):
        raise CheckpointError(f"{path}: config.json architecture {name!r} is not a timm "
                              f"model name")
    args = {k: cfg[k] for k in ("num_classes", "in_chans") if k in cfg}
    margs = cfg.get("model_args") or {}
    if not isinstance(margs, dict):
        raise CheckpointError(f"{path}: config.json model_args must be an object")
    args.update(margs)
    query = []
    for k, v in sorted(args.items()):
        if isinstance(v, (list, tuple)) and v and len(set(map(repr, v))) == 1:
            v = v[0]  # timm takes img_size=32 for (32, 32)
        if not isinstance(v, (bool, int, float, str)):
            raise CheckpointError(f"{path}: config.json model_args {k!r} = {v!r} cannot be "
                                  f"written as an architecture option; pass --arch")
        text = str(v).lower() if isinstance(v, bool) else str(v)
        query.append(f"{quote(k, safe='')}={quote(text, safe='')}")
    return f"timm:{name}" + ("?" + "&".join(query) if query else "")
