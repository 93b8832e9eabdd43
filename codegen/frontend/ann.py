"""Float ANN files (``ann.pt``): the trained network that ``codegen convert`` turns into a one-spike model.

An ``ann.pt`` holds plain data only, so it loads with ``torch.load(..., weights_only=True)``::

    {"format": "onespike-ann", "schema_version": 1,
     "input_shape": [C, H, W],
     "layers": [{"type": "Conv2d", "in_channels": 1, "out_channels": 16, "kernel_size": 5, ...}, ...],
     "state_dict": {"0.weight": Tensor, ...},        # keys of the nn.Sequential built from "layers"
     "meta": {"dataset": "mnist", "seed": 0, ...}}

``layers`` lists the supported layer types with their constructor arguments; :func:`build` turns it
into an ``nn.Sequential`` and :func:`describe` goes the other way. :func:`load` checks every field
(present, of the right type, within the size limits of :mod:`runtime.spec`) before it builds
anything, and reports a problem as one :class:`UserError` line naming the field.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from runtime.errors import UserError
from runtime.io import atomic_torch_save, load_plain
from runtime.spec import (MAX_CHANNELS, MAX_KERNEL, MAX_LAYERS, MAX_NEURONS, MAX_STRIDE, MAX_WEIGHTS,
                          check_shape_limits)

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
    "ReLU6": (nn.ReLU6, ()),
    "Hardtanh": (nn.Hardtanh, ("min_val", "max_val")),   # a ReLU capped at max_val: min_val must be 0
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


# Argument checks for a layer description read from a file: a small file must not make the loader
# allocate a huge layer, and a wrong type must be a one-line error rather than a torch traceback.
_INT_ARGS = {"in_channels": MAX_CHANNELS, "out_channels": MAX_CHANNELS, "in_features": MAX_NEURONS,
             "out_features": MAX_CHANNELS, "num_features": MAX_CHANNELS, "groups": MAX_CHANNELS}
_PAIR_ARGS = {"kernel_size": (1, MAX_KERNEL), "stride": (1, MAX_STRIDE), "padding": (0, MAX_KERNEL),
              "dilation": (1, MAX_KERNEL)}
_BOOL_ARGS = ("bias", "affine", "track_running_stats", "ceil_mode", "count_include_pad")
# layers that become a stage of the integer model (each counts against runtime.spec.MAX_LAYERS)
_STAGE_TYPES = ("Conv2d", "Linear", "MaxPool2d", "AvgPool2d")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_arg(where: str, name: str, key: str, v) -> None:
    if key in _INT_ARGS:
        if not (_is_int(v) and 1 <= v <= _INT_ARGS[key]):
            raise UserError(f"{where}: {key} must be an integer in 1..{_INT_ARGS[key]}, not {v!r}")
    elif key in _PAIR_ARGS:
        lo, hi = _PAIR_ARGS[key]
        if v is None and key == "stride" and name in ("MaxPool2d", "AvgPool2d"):
            return  # the kernel size
        items = list(v) if isinstance(v, (list, tuple)) and len(v) == 2 else [v]
        if not all(_is_int(x) and lo <= x <= hi for x in items):
            raise UserError(f"{where}: {key} must be an integer in {lo}..{hi} (or a pair of them), not {v!r}")
    elif key in _BOOL_ARGS:
        if not isinstance(v, bool):
            raise UserError(f"{where}: {key} must be true or false, not {v!r}")
    elif key == "eps":
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
            raise UserError(f"{where}: eps must be a positive number, not {v!r}")
    elif key in ("min_val", "max_val"):
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
            raise UserError(f"{where}: {key} must be a finite number, not {v!r}")
    elif key == "p":
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1):
            raise UserError(f"{where}: p must be a number in [0, 1], not {v!r}")
    elif key in ("start_dim", "end_dim"):
        if not _is_int(v):
            raise UserError(f"{where}: {key} must be an integer, not {v!r}")
    elif key == "divisor_override":
        if v is not None and not (_is_int(v) and v >= 1):
            raise UserError(f"{where}: divisor_override must be a positive integer or null, not {v!r}")


def _first(v):
    return v[0] if isinstance(v, (list, tuple)) else v


def build(layers: list[dict], where: str = "") -> nn.Sequential:
    """The ``nn.Sequential`` of a layer list; every argument is checked (type, range, size limits) first."""
    pre = f"{where}: " if where else ""
    if not isinstance(layers, (list, tuple)):
        raise UserError(f"{pre}'layers' must be a list of layer descriptions, not {type(layers).__name__}")
    if not layers:
        raise UserError(f"{pre}'layers' is empty")
    n_stages = sum(1 for d in layers if isinstance(d, dict) and d.get("type") in _STAGE_TYPES)
    if n_stages > MAX_LAYERS:
        raise UserError(f"{pre}{n_stages} Conv2d/Linear/pooling layers, more than the limit of {MAX_LAYERS} "
                        f"(runtime.spec.MAX_LAYERS)")
    mods = []
    for i, d in enumerate(layers):
        if not isinstance(d, dict) or "type" not in d:
            raise UserError(f"{pre}layer {i}: not a layer description (a dict with a 'type')")
        name = d["type"]
        if not isinstance(name, str) or name not in SUPPORTED:
            raise UserError(f"{pre}unsupported layer {name} at position {i}")
        cls, keys = SUPPORTED[name]
        at = f"{pre}layer {i} ({name})"
        args = {k: d[k] for k in keys if k in d}
        for k, v in args.items():
            _check_arg(at, name, k, v)
        if name in ("Conv2d", "Linear"):
            for k in (("in_channels", "out_channels", "kernel_size") if name == "Conv2d" else ("in_features", "out_features")):
                if k not in args:
                    raise UserError(f"{at}: {k} is missing")
            if name == "Conv2d":
                n_w = args["out_channels"] * args["in_channels"] * _first(args["kernel_size"]) ** 2
            else:
                n_w = args["out_features"] * args["in_features"]
            if n_w > MAX_WEIGHTS:
                raise UserError(f"{at}: {n_w} weights exceed the limit of {MAX_WEIGHTS} per layer (runtime.spec.MAX_WEIGHTS)")
        try:
            mods.append(cls(**args))
        except (TypeError, ValueError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"{at}: bad arguments: {first}") from None
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


def _input_shape(v, path) -> tuple[int, int, int]:
    if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(_is_int(x) and x >= 1 for x in v)):
        raise UserError(f"{path}: input_shape must be a list of 3 positive integers (C, H, W), not {v!r}")
    shape = tuple(int(x) for x in v)
    check_shape_limits(shape, f"{path}: input_shape")
    return shape


def load(path: str | Path) -> tuple[nn.Sequential, tuple[int, int, int], dict]:
    """Load an ``ann.pt``: returns ``(model in eval mode, input_shape, meta)``.

    Every field is checked before anything is built: present, of the right type, within the size
    limits of :mod:`runtime.spec`; a problem is one :class:`UserError` line naming the field.
    """
    obj = load_plain(path)
    if obj.get("format") != ANN_FORMAT:
        raise UserError(f"{path}: not an ANN file (format {obj.get('format')!r}, expected {ANN_FORMAT!r})")
    if obj.get("schema_version") != ANN_SCHEMA_VERSION:
        raise UserError(f"{path}: ANN schema version {obj.get('schema_version')!r} is not supported (expected {ANN_SCHEMA_VERSION})")
    for key in ("input_shape", "layers", "state_dict"):
        if key not in obj:
            raise UserError(f"{path}: the ANN file has no {key!r} field")
    shape = _input_shape(obj["input_shape"], path)
    sd = obj["state_dict"]
    if not isinstance(sd, dict):
        raise UserError(f"{path}: 'state_dict' must be a dict of tensors, not {type(sd).__name__}")
    for k, v in sd.items():
        if not isinstance(k, str):
            raise UserError(f"{path}: 'state_dict' key {k!r} is not a string")
        if not isinstance(v, torch.Tensor):
            raise UserError(f"{path}: 'state_dict' entry {k!r} is a {type(v).__name__}, not a tensor")
    meta = obj.get("meta", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise UserError(f"{path}: 'meta' must be a dict, not {type(meta).__name__}")
    model = build(obj["layers"], where=str(path))
    try:
        model.load_state_dict(sd)
    except (RuntimeError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()
        raise UserError(f"{path}: weights do not match the layers: {' '.join(s.strip() for s in first[:2])}") from None
    for k, v in model.state_dict().items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise UserError(f"{path}: {k} holds NaN or infinite values")
    model.eval()
    return model, shape, dict(meta)
