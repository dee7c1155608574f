"""Architecture references: one string that rebuilds a model.

Forms (``?k=v&k2=v2`` options everywhere; values parse as int, float, bool or str):

* ``mlp:64-128-128-10`` (``act=relu|gelu``, ``bias=true``, ``dropout=0.1``), ``vgg11?width=1&norm=bn``
  (``pools=3`` for 8x8 inputs),
  ``resnet20?width=4&num_classes=10&norm=bn|ln`` — the built-ins (``list_archs()``);
* ``timm:NAME?k=v`` — ``timm.create_model(NAME, pretrained=False, **kw)``;
* ``torchvision:NAME?k=v`` — ``torchvision.models.get_model(NAME, weights=None, **kw)``;
* ``package.module:factory?k=v`` — user code (imports a module: only when allowed).
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import parse_qsl

from torch import nn

from . import models
from .errors import WeightspaceError


class ArchError(WeightspaceError):
    """An architecture reference that cannot be parsed or built."""


@dataclass
class ArchRef:
    kind: str                 # "builtin" | "timm" | "torchvision" | "code"
    name: str                 # builtin / timm / torchvision name, or "module:factory"
    arg: str | None = None    # the part after ":" of a built-in (mlp widths)
    kwargs: dict = field(default_factory=dict)


_BUILTINS: dict[str, Callable[..., nn.Module]] = {}
_INPUTS: dict[str, Callable[[ArchRef], tuple[int, ...]]] = {}


def register_arch(name: str, input_shape: Callable[[ArchRef], tuple[int, ...]]):
    """Register a built-in architecture factory and how to make its example input shape."""
    def deco(fn):
        _BUILTINS[name] = fn
        _INPUTS[name] = input_shape
        return fn
    return deco


def list_archs() -> list[str]:
    return sorted(_BUILTINS)


def parse_value(v: str):
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def parse(ref: str) -> ArchRef:
    if not isinstance(ref, str) or not ref.strip():
        raise ArchError("empty architecture reference")
    head, _, query = ref.strip().partition("?")
    try:
        kwargs = {k: parse_value(v) for k, v in parse_qsl(query, keep_blank_values=True,
                                                          strict_parsing=bool(query))}
    except ValueError:
        raise ArchError(f"{ref!r}: options must look like ?key=value&key2=value2") from None
    prefix, sep, rest = head.partition(":")
    if not sep:
        if head not in _BUILTINS:
            raise ArchError(f"unknown architecture {head!r}; built-ins: {', '.join(list_archs())}"
                            "; or use timm:NAME, torchvision:NAME, package.module:factory")
        return ArchRef("builtin", head, None, kwargs)
    if prefix in ("timm", "torchvision"):
        if not rest:
            raise ArchError(f"{ref!r}: missing model name after '{prefix}:'")
        return ArchRef(prefix, rest, None, kwargs)
    if prefix in _BUILTINS:
        return ArchRef("builtin", prefix, rest, kwargs)
    if "." in prefix or prefix.isidentifier():
        if not rest.isidentifier():
            raise ArchError(f"{ref!r}: expected package.module:factory")
        return ArchRef("code", f"{prefix}:{rest}", None, kwargs)
    raise ArchError(f"cannot parse architecture reference {ref!r}")


def format_value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def with_options(ref: str, **options) -> str:
    """``ref`` with ``options`` set (replacing same-named ones): ``mlp:8-4?act=gelu``."""
    if not options:
        return ref
    head, _, query = ref.strip().partition("?")
    kw = dict(parse_qsl(query, keep_blank_values=True))
    kw.update({k: format_value(v) for k, v in options.items()})
    return head + "?" + "&".join(f"{k}={v}" for k, v in kw.items())


_CODE_ALLOWED = contextvars.ContextVar("weightspace_allow_code", default=False)

# Options that would make timm / torchvision load weights from a file or the network (a
# pickle through torch.load, or a download): an architecture reference names a structure.
_WEIGHT_OPTIONS = {"timm": ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                            "checkpoint_path", "cache_dir", "pretrained_strict"),
                   "torchvision": ("weights", "weights_backbone", "progress")}


@contextlib.contextmanager
def code_allowed(allow: bool = True):
    """Within this block, :func:`build` may import user code (``package.module:factory``)
    even where the reference was read from a file. The CLI opens it for ``--allow-code``;
    everywhere else user code is refused, so a checkpoint, manifest or generator config
    that names ``os:system?command=...`` runs nothing."""
    token = _CODE_ALLOWED.set(bool(allow))
    try:
        yield
    finally:
        _CODE_ALLOWED.reset(token)


def build(ref: str, allow_code: bool = False) -> nn.Module:
    """Build the model a reference names (untrained; ``pretrained`` is never downloaded).

    User code (``package.module:factory``) is imported only when ``allow_code`` is true or
    the caller is inside :func:`code_allowed`; refused by default."""
    allow_code = bool(allow_code) or _CODE_ALLOWED.get()
    r = parse(ref)
    blocked = [k for k in _WEIGHT_OPTIONS.get(r.kind, ()) if k in r.kwargs]
    if blocked:
        raise ArchError(f"{ref!r}: option {blocked[0]!r} would load weights; an architecture "
                        f"reference names a structure only (weights come from the checkpoint)")
    try:
        if r.kind == "builtin":
            fn = _BUILTINS[r.name]
            _check_kwargs(fn, r, ref)
            takes_arg = "arg" in inspect.signature(fn).parameters
            if takes_arg != (r.arg is not None):
                raise ArchError(f"{ref!r}: {r.name} " + ("needs a ':' argument, e.g. mlp:64-128-10"
                                                         if takes_arg else "takes no ':' argument"))
            return fn(r.arg, **r.kwargs) if r.arg is not None else fn(**r.kwargs)
        if r.kind == "timm":
            import timm
            if not timm.is_model(r.name):
                raise ArchError(f"{ref!r}: timm has no model {r.name!r}")
            return timm.create_model(r.name, pretrained=False, **r.kwargs)
        if r.kind == "torchvision":
            import torchvision
            if r.name not in torchvision.models.list_models():
                raise ArchError(f"{ref!r}: torchvision has no model {r.name!r}")
            return torchvision.models.get_model(r.name, weights=None, **r.kwargs)
        if not allow_code:
            raise ArchError(f"{ref!r} names user code; refusing to import it (pass "
                            "`allow_code=True` if you trust it)")
        module, _, factory = r.name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), factory)
        except (ImportError, AttributeError) as e:
            raise ArchError(f"{ref!r}: cannot import {r.name}: {e}") from None
        model = fn(**r.kwargs)
        if not isinstance(model, nn.Module):
            raise ArchError(f"{ref!r}: {r.name} returned {type(model).__name__}, not nn.Module")
        return model
    except ArchError:
        raise
    except TypeError as e:
        raise ArchError(f"{ref!r}: bad option: {e}") from None
    except (ValueError, RuntimeError, KeyError) as e:
        raise ArchError(f"{ref!r}: {e}") from None


def _check_kwargs(fn, r: ArchRef, ref: str) -> None:
    params = inspect.signature(fn).parameters
    unknown = [k for k in r.kwargs if k not in params or k == "arg"]
    if unknown:
        allowed = [p for p in params if p != "arg"]
        raise ArchError(f"{ref!r}: unknown option(s) {unknown}; {r.name} takes {allowed}")
    for k, v in r.kwargs.items():  # a value of the kind the option's default is
        d = params[k].default
        kind = {"bool": bool, "int": int, "float": float, "str": str}.get(
            str(params[k].annotation)) or next(
            (t for t in (bool, int, float, str) if isinstance(d, t)), None)
        ok = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}.get(kind, ())
        if kind is not None and (not isinstance(v, ok) or (kind != bool and
                                                           isinstance(v, bool))):
            what = {bool: "true or false", int: "a whole number", float: "a number",
                    str: "a word"}[kind]
            raise ArchError(f"{ref!r}: option {k!r} must be {what}, got {format_value(v)!r}")


def input_shape(ref: str, model: nn.Module | None = None) -> tuple[int, ...]:
    """A sensible example-input shape (batch 1) for the model a reference names."""
    r = parse(ref)
    if r.kind == "builtin":
        return _INPUTS[r.name](r)
    chans = int(r.kwargs.get("in_chans", 3))
    if "img_size" in r.kwargs:
        s = r.kwargs["img_size"]
        return (1, chans, s, s)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" in cfg:  # the pretrained config's size, with the channels asked for
        c, *size = cfg["input_size"]
        return (1, chans if "in_chans" in r.kwargs else c, *size)
    return (1, chans, 224, 224)


@register_arch("mlp", lambda r: (1, int(r.arg.split("-")[0])))
def _mlp(arg: str = "", act: str = "relu", bias: bool = True, dropout: float = 0.0) -> nn.Module:
    try:
        widths = [int(w) for w in arg.split("-")]
    except ValueError:
        raise ArchError(f"mlp widths must be integers separated by '-', got {arg!r}") from None
    return models.MLP(widths, act=act, bias=bias, dropout=dropout)


def _image_input(r: ArchRef) -> tuple[int, ...]:
    return (1, int(r.kwargs.get("in_chans", 3)), 32, 32)


@register_arch("vgg11", _image_input)
def _vgg11(width: float = 1, num_classes: int = 10, norm: str = "bn", in_chans: int = 3,
           act: str = "relu", pools: int = 5) -> nn.Module:
    return models.VGG("vgg11", width, num_classes, norm, in_chans, act, pools)


@register_arch("resnet20", _image_input)
def _resnet20(width: float = 1, num_classes: int = 10, norm: str = "bn", in_chans: int = 3,
              act: str = "relu") -> nn.Module:
    return models.ResNet20(width, num_classes, norm, in_chans, act)
