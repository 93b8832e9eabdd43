"""``model.pt``: the versioned on-disk form of an :class:`~runtime.spec.IntModel`.

Plain tensors, numbers, strings and lists only, so it loads with ``torch.load(..., weights_only=True)``
(nothing is unpickled as code). Schema (version 1), documented in ``docs/model-format.md``::

    {"format": "onespike-snn", "schema_version": 1,
     "Q": float, "T": int, "F": int, "input_shape": [C, H, W],
     "decode": int64[T+1], "encode": uint8[256],
     "input_Q": float, "input_T": int, "input_decode": int64[input_T+1],
     "layers": [{"kind": "conv2d"|"dense"|"maxpool"|"avgpool", "name": str,
                 "in_shape": [...], "out_shape": [...],
                 "weight": int8 tensor | None, "bias": int64[O] | None, "theta": int64[C, T] | None,
                 "kernel": int, "stride": int, "padding": int, "readout": bool}, ...],
     "meta": {str: str | int | float | bool | list | dict}}
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .io import atomic_torch_save, load_plain
from .spec import SCHEMA_FORMAT, SCHEMA_VERSION, IntModel, Layer, SpecError, validate

_TOP_KEYS = ("Q", "T", "F", "input_shape", "decode", "encode", "input_Q", "input_T", "input_decode", "layers")


def _t(a: np.ndarray | None):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a).copy())


def to_dict(model: IntModel) -> dict:
    layers = []
    for l in model.layers:
        layers.append({
            "kind": l.kind, "name": l.name,
            "in_shape": [int(x) for x in l.in_shape], "out_shape": [int(x) for x in l.out_shape],
            "weight": _t(l.weight), "bias": _t(l.bias), "theta": _t(l.theta),
            "kernel": int(l.kernel), "stride": int(l.stride), "padding": int(l.padding), "readout": bool(l.readout),
        })
    return {
        "format": SCHEMA_FORMAT, "schema_version": SCHEMA_VERSION,
        "Q": float(model.Q), "T": int(model.T), "F": int(model.F),
        "input_shape": [int(x) for x in model.input_shape],
        "decode": _t(model.decode.astype(np.int64)), "encode": _t(model.encode.astype(np.uint8)),
        "input_Q": float(model.input_Q), "input_T": int(model.input_T),
        "input_decode": _t(model.input_decode.astype(np.int64)),
        "layers": layers, "meta": dict(model.meta),
    }


def save(model: IntModel, path: str | Path) -> None:
    validate(model)
    atomic_torch_save(to_dict(model), path)


def _array(obj, what: str, dtype) -> np.ndarray | None:
    if obj is None:
        return None
    if not isinstance(obj, torch.Tensor):
        raise SpecError(f"{what} must be a tensor, not {type(obj).__name__}")
    if obj.is_floating_point():
        if not torch.isfinite(obj).all():
            raise SpecError(f"{what} holds NaN or infinite values")
        raise SpecError(f"{what} must be an integer tensor, not {obj.dtype}")
    a = obj.numpy()
    if np.dtype(dtype) == np.int8 and a.dtype != np.int8:
        raise SpecError(f"{what} must be int8, not {a.dtype}")
    return a.astype(dtype)


def from_dict(obj: dict, source: str = "model") -> IntModel:
    if obj.get("format") != SCHEMA_FORMAT:
        raise UserError(f"{source}: not a one-spike model (format {obj.get('format')!r}, expected {SCHEMA_FORMAT!r})")
    ver = obj.get("schema_version")
    if ver != SCHEMA_VERSION:
        raise UserError(f"{source}: schema version {ver!r} is not supported (this codegen reads version {SCHEMA_VERSION})")
    for k in _TOP_KEYS:
        if k not in obj:
            raise UserError(f"{source}: missing field {k!r}")
    for key in ("Q", "input_Q"):
        q = obj[key]
        if not isinstance(q, (int, float)) or not np.isfinite(q):
            raise SpecError(f"{source}: {key} must be a finite number, not {q!r}")
    for key in ("T", "input_T", "F"):
        if not isinstance(obj[key], int) or isinstance(obj[key], bool) or obj[key] < (0 if key == "F" else 1):
            raise SpecError(f"{source}: {key} must be a {'non-negative' if key == 'F' else 'positive'} integer, not {obj[key]!r}")
    layers = []
    if not isinstance(obj["layers"], list):
        raise SpecError(f"{source}: layers must be a list")
    for i, d in enumerate(obj["layers"]):
        if not isinstance(d, dict):
            raise SpecError(f"{source}: layer {i} is not a dict")
        try:
            layers.append(Layer(
                kind=str(d["kind"]), name=str(d.get("name", "")),
                in_shape=tuple(int(x) for x in d["in_shape"]), out_shape=tuple(int(x) for x in d["out_shape"]),
                weight=_array(d.get("weight"), f"layer {i} weight", np.int8),
                bias=_array(d.get("bias"), f"layer {i} bias", np.int64),
                theta=_array(d.get("theta"), f"layer {i} threshold table", np.int64),
                kernel=int(d.get("kernel", 1)), stride=int(d.get("stride", 1)), padding=int(d.get("padding", 0)),
                readout=bool(d.get("readout", False)),
            ))
        except KeyError as e:
            raise SpecError(f"{source}: layer {i} lacks field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise SpecError(f"{source}: layer {i}: {e}") from None
    enc = _array(obj["encode"], "input-encoding table", np.int64)
    if enc is None or enc.shape != (256,) or enc.min() < 0 or enc.max() > 255:
        raise SpecError(f"{source}: input-encoding table must hold 256 uint8 phases")
    model = IntModel(
        Q=float(obj["Q"]), T=int(obj["T"]), F=int(obj["F"]),
        input_shape=tuple(int(x) for x in obj["input_shape"]),
        decode=_array(obj["decode"], "decode table", np.int64),
        encode=enc.astype(np.uint8), layers=layers, meta=dict(obj.get("meta") or {}),
        input_Q=float(obj["input_Q"]), input_T=int(obj["input_T"]),
        input_decode=_array(obj["input_decode"], "input decode table", np.int64),
    )
    try:
        validate(model)
    except SpecError as e:
        raise SpecError(f"{source}: {e}") from None
    return model


def load(path: str | Path) -> IntModel:
    """Load and validate a ``model.pt`` (weights-only; every defect is a one-line :class:`UserError`)."""
    obj = load_plain(path)
    return from_dict(obj, str(path))


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
