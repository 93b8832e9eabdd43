"""Float ANN files (``ann.pt``): the trained network that ``codegen convert`` turns into a one-spike model.

An ``ann.pt`` holds plain data only, so it loads with ``torch.load(..., weights_only=True)``::

    {"format": "onespike-ann", "schema_version": 1,
     "input_shape": [C, H, W],
     "layers": [{"type": "Conv2d", "in_channels": 1, "out_channels": 16, "kernel_size": 5, ...}, ...],
     "state_dict": {"0.weight": Tensor, ...},        # keys of the nn.Sequential built from "layers"
     "meta": {"dataset": "mnist", "seed": 0, ...}}

``layers`` lists the supported layer types with their constructor arguments; :func:`build` turns it
into an ``nn.Sequential`` and :func:`describe` goes the other way.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from runtime.io import atomic_torch_save, load_plain

ANN_FORMAT = "onespike-ann"
ANN_SCHEMA_VERSION = 1

# type name -> (class, constructor arguments recorded in the file)
SUPPORTED = {
    "Conv2d": (nn.Conv2d, ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                           "bias")),
    "Linear": (nn.Linear, ("in_features", "out_features", "bias")),
    "BatchNorm1d": (nn.BatchNorm1d, ("num_features", "eps", "affine", "track_running_stats")),
    "BatchNorm2d": (nn.BatchNorm2d, ("num_features", "eps", "affine", "track_running_stats")),
    "ReLU": (nn.ReLU, ()),
    "MaxPool2d": (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation", "ceil_mode")),
    "AvgPool2d": (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")),
    "Flatten": (nn.Flatten, ("start_dim", "end_dim")),
    "Dropout": (nn.Dropout, ("p",)),
    "Identity": (nn.Identity, ()),
}


def flatten_modules(model: nn.Module) -> list[nn.Module]:
    """The leaf modules of ``model`` in forward order (nested ``nn.Sequential`` are flattened).

    Only purely sequential networks are supported: a module whose forward is not the chain of its
    children in registration order cannot be described this way.
    """
    children = list(model.children())
    if not children:
        return [model]
    if type(model).forward is not nn.Sequential.forward:
        raise UserError(f"{type(model).__name__} is not an nn.Sequential: only sequential networks (a chain of "
                        f"supported layers) can be converted")
    out: list[nn.Module] = []
    for child in children:
        out.extend(flatten_modules(child))
    return out


def check_supported(modules: list[nn.Module]) -> None:
    for i, m in enumerate(modules):
        name = type(m).__name__
        if name not in SUPPORTED or type(m) is not SUPPORTED[name][0]:
            raise UserError(f"unsupported layer {name} at position {i}")


def _arg(m: nn.Module, key: str):
    if key == "bias":
        return m.bias is not None
    v = getattr(m, key)
    if isinstance(v, str):
        raise UserError(f"{type(m).__name__}: {key}={v!r} is not supported")
    if isinstance(v, tuple):
        if len(set(v)) != 1:
            raise UserError(f"layer {type(m).__name__}: non-square {key} {v} is not supported")
        v = v[0]
    return v


def describe(model: nn.Module) -> list[dict]:
    modules = flatten_modules(model)
    check_supported(modules)
    out = []
    for m in modules:
        name = type(m).__name__
        d = {"type": name}
        for key in SUPPORTED[name][1]:
            d[key] = _arg(m, key)
        if name == "Conv2d" and m.padding_mode != "zeros":
            raise UserError("Conv2d with a non-zero padding mode is not supported")
        out.append(d)
    return out


def build(layers: list[dict]) -> nn.Sequential:
    mods = []
    for i, d in enumerate(layers):
        if not isinstance(d, dict) or "type" not in d:
            raise UserError(f"layer {i}: not a layer description")
        name = d["type"]
        if name not in SUPPORTED:
            raise UserError(f"unsupported layer {name} at position {i}")
        cls, keys = SUPPORTED[name]
        try:
            mods.append(cls(**{k: d[k] for k in keys if k in d}))
        except (TypeError, ValueError) as e:
            raise UserError(f"layer {i} ({name}): bad arguments: {e}") from None
    return nn.Sequential(*mods)


def save(path: str | Path, model: nn.Module, input_shape: tuple[int, int, int], meta: dict | None = None) -> None:
    layers = describe(model)
    seq = build(layers)
    seq.load_state_dict(dict(zip(seq.state_dict().keys(), model.state_dict().values())))
    obj = {
        "format": ANN_FORMAT,
        "schema_version": ANN_SCHEMA_VERSION,
        "input_shape": list(input_shape),
        "layers": layers,
        "state_dict": {k: v.detach().clone().contiguous() for k, v in seq.state_dict().items()},
        "meta": plain_meta(meta or {}),
    }
    atomic_torch_save(obj, path)


def plain_meta(meta: dict) -> dict:
    """Metadata reduced to str/int/float/bool/None/list/dict, which weights-only loading accepts."""
    def conv(v):
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return float(v)
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return str(v)
    return {str(k): conv(v) for k, v in meta.items()}


def load(path: str | Path) -> tuple[nn.Sequential, tuple[int, int, int], dict]:
    """Load an ``ann.pt``: returns ``(model in eval mode, input_shape, meta)``."""
    obj = load_plain(path)
    if obj.get("format") != ANN_FORMAT:
        raise UserError(f"{path}: not an ANN file (format {obj.get('format')!r}, expected {ANN_FORMAT!r})")
    if obj.get("schema_version") != ANN_SCHEMA_VERSION:
        raise UserError(f"{path}: ANN schema version {obj.get('schema_version')!r} is not supported (expected {ANN_SCHEMA_VERSION})")
    model = build(obj["layers"])
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"{path}: weights do not match the layers: {' '.join(s.strip() for s in first[:2])}") from None
    for k, v in model.state_dict().items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise UserError(f"{path}: {k} holds NaN or infinite values")
    model.eval()
    return model, tuple(obj["input_shape"]), dict(obj.get("meta", {}))
