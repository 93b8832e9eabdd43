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
from .spec import (MAX_LAYERS, READABLE_SCHEMA_VERSIONS, SCHEMA_FORMAT, SCHEMA_VERSION, TASKS, DetectHead, IntModel,
                   Layer, SpecError, check_shape_limits, validate)

_TOP_KEYS = ("Q", "T", "F", "input_shape", "decode", "encode", "input_Q", "input_T", "input_decode", "layers")


def _t(a: np.ndarray | None):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a).copy())


def plain(v):
    """Metadata reduced to what weights-only loading accepts: str, int, float, bool, None, lists and dicts
    (numpy scalars become Python numbers, tuples lists; anything else its str)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


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
        "layers": layers, "meta": plain(dict(model.meta)),
        "task": model.task, "head": None if model.head is None else model.head.to_dict(),
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


def _int(v, what: str, lo: int | None = None) -> int:
    """An integer field: a Python int (or an integral 0-d integer tensor), never a bool or a float."""
    if isinstance(v, torch.Tensor) and v.ndim == 0 and not v.is_floating_point() and v.dtype != torch.bool:
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"{what} must be an integer, not {v!r}"[:200])
    if lo is not None and v < lo:
        raise SpecError(f"{what} must be an integer >= {lo}, not {v}")
    return v


def _shape(v, what: str, dims: tuple[int, ...] = (1, 3)) -> tuple[int, ...]:
    if isinstance(v, torch.Tensor):
        v = v.tolist() if v.ndim == 1 and not v.is_floating_point() else v
    if not isinstance(v, (list, tuple)) or len(v) not in dims:
        want = " or ".join({1: "[N]", 3: "[C, H, W]"}[d] for d in dims)
        raise SpecError(f"{what} must be a list {want}, not {v!r}"[:200])
    return tuple(_int(x, f"{what} entry", 1) for x in v)


def from_dict(obj: dict, source: str = "model") -> IntModel:
    if obj.get("format") != SCHEMA_FORMAT:
        raise UserError(f"{source}: not a one-spike model (format {obj.get('format')!r}, expected {SCHEMA_FORMAT!r})")
    ver = obj.get("schema_version")
    if type(ver) is not int or ver not in READABLE_SCHEMA_VERSIONS:
        raise UserError(f"{source}: schema version {repr(ver)[:40]} is not supported (this codegen reads versions "
                        f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}; a newer file needs a newer codegen)")
    for k in _TOP_KEYS:
        if k not in obj:
            raise UserError(f"{source}: missing field {k!r}")
    try:
        return _from_dict(obj, source)
    except SpecError as e:
        msg = str(e)
        raise SpecError(msg if msg.startswith(f"{source}: ") else f"{source}: {msg}") from None


def _from_dict(obj: dict, source: str) -> IntModel:
    for key in ("Q", "input_Q"):
        q = obj[key]
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not np.isfinite(q):
            raise SpecError(f"{key} must be a finite number, not {q!r}"[:200])
    T = _int(obj["T"], "T", 1)
    input_T = _int(obj["input_T"], "input_T", 1)
    _int(obj["F"], "F", 0)
    meta = obj.get("meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise SpecError(f"meta must be a dict, not {type(meta).__name__}")
    input_shape = _shape(obj["input_shape"], "input_shape", (3,))
    layers = []
    if not isinstance(obj["layers"], list):
        raise SpecError("layers must be a list")
    if len(obj["layers"]) > MAX_LAYERS:
        raise SpecError(f"model has {len(obj['layers'])} layers, more than the limit of {MAX_LAYERS} (runtime.spec.MAX_LAYERS)")
    for i, d in enumerate(obj["layers"]):
        if not isinstance(d, dict):
            raise SpecError(f"layer {i} is not a dict")
        try:
            kind = d["kind"]
            if not isinstance(kind, str):
                raise SpecError(f"layer {i}: kind must be a string, not {kind!r}"[:200])
            in_shape = _shape(d["in_shape"], f"layer {i} in_shape")
            out_shape = _shape(d["out_shape"], f"layer {i} out_shape")
            # sizes first: a small file can declare huge shapes; refuse them before reading arrays
            check_shape_limits(in_shape, f"layer {i} ({kind}) input")
            check_shape_limits(out_shape, f"layer {i} ({kind}) output")
            readout = d.get("readout", False)
            if not isinstance(readout, bool):
                raise SpecError(f"layer {i}: readout must be true or false, not {readout!r}"[:200])
            layers.append(Layer(
                kind=kind, name=str(d.get("name", "")), in_shape=in_shape, out_shape=out_shape,
                weight=_array(d.get("weight"), f"layer {i} weight", np.int8),
                bias=_array(d.get("bias"), f"layer {i} bias", np.int64),
                theta=_array(d.get("theta"), f"layer {i} threshold table", np.int64),
                kernel=_int(d.get("kernel", 1), f"layer {i} kernel", 1),
                stride=_int(d.get("stride", 1), f"layer {i} stride", 1),
                padding=_int(d.get("padding", 0), f"layer {i} padding", 0),
                readout=readout,
            ))
        except KeyError as e:
            raise SpecError(f"layer {i} lacks field {e.args[0]!r}") from None
    enc = _array(obj["encode"], "input-encoding table", np.int64)
    if enc is None or enc.shape != (256,) or enc.min() < 0 or enc.max() > 255:
        raise SpecError("input-encoding table must hold 256 uint8 phases")
    for key, t, tn in (("decode", T, "T"), ("input_decode", input_T, "input_T")):
        what = key.replace("_", " ") + " table"
        d = _array(obj[key], what, np.int64)
        if d is None or d.ndim != 1 or d.shape[0] != t + 1:
            got = "none" if d is None else f"shape {tuple(d.shape)}"
            raise SpecError(f"{what} must hold {tn} + 1 = {t + 1} entries, not {got}")
        if (d[:t] <= 0).any() or d[t] != 0:
            raise SpecError(f"{what} must hold positive entries ending in 0 (entry {int(np.argmax(d[:t] <= 0)) if (d[:t] <= 0).any() else t} is {int(d[int(np.argmax(d[:t] <= 0))] if (d[:t] <= 0).any() else d[t])})")
    task, head = _task_head(obj)
    model = IntModel(
        task=task, head=head,
        Q=float(obj["Q"]), T=T, F=int(obj["F"]), input_shape=input_shape,
        decode=_array(obj["decode"], "decode table", np.int64),
        encode=enc.astype(np.uint8), layers=layers, meta=dict(meta),
        input_Q=float(obj["input_Q"]), input_T=input_T,
        input_decode=_array(obj["input_decode"], "input decode table", np.int64),
    )
    validate(model)
    return model


_HEAD_KEYS = ("classes", "stride", "score_threshold", "box_mult", "box_shift", "nms_iou_percent", "max_detections",
              "peak")


def _task_head(obj: dict) -> tuple[str, DetectHead | None]:
    """Schema 2: ``task`` ("classify" or "detect") and, for a detector, its ``head`` dict (version 1: classify)."""
    if obj.get("schema_version") == 1:
        return "classify", None
    task = obj.get("task")
    if task not in TASKS:
        raise SpecError(f"task must be one of {', '.join(TASKS)}, not {task!r}"[:200])
    h = obj.get("head")
    if task == "classify":
        if h is not None:
            raise SpecError("a classifier carries no detection head (head must be None)")
        return task, None
    if not isinstance(h, dict):
        raise SpecError(f"a detector needs a head dict, not {type(h).__name__}")
    missing = [k for k in _HEAD_KEYS if k not in h]
    if missing:
        raise SpecError(f"detection head lacks field {missing[0]!r}")
    classes = h["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise SpecError("detection head: classes must be a list of names")
    ints = {k: _int(h[k], f"detection head {k}") for k in _HEAD_KEYS[1:]}
    return task, DetectHead(classes=list(classes), **ints)


def load(path: str | Path) -> IntModel:
    """Load and validate a ``model.pt`` (weights-only; every defect is a one-line :class:`UserError`)."""
    obj = load_plain(path)
    return from_dict(obj, str(path))


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
