"""Networks from other tools (ONNX, torch.export) as the ``nn.Sequential`` that ``codegen convert`` lowers.

An importer (:mod:`.from_onnx`, :mod:`.from_export`) reads its file into a chain of :class:`Op` — one
per graph node, in order, each consuming the previous one's output and constants only — and
:func:`to_sequential` turns the chain into the supported layers of :mod:`.ann`, so that the rest of
the conversion is the one of an ``onespike-ann`` file:

- Conv / Gemm / MatMul(+Add) / BatchNormalization / Relu / MaxPool / AveragePool / Flatten become the
  layers of the same name; Dropout, Identity and a trailing Softmax (argmax is the same) are dropped.
- Elementwise Mul / Div / Add / Sub by constants (scalar or per channel) fold into the layer before
  them (``a * (W x + b) + c``), or, before the first layer, into the input code: with ``--mean/--std``
  (normalisation done outside the graph) and ``--input-scale`` (255: the graph takes raw pixels) they
  compose one per-channel ``x * A + C`` on the integer model's input ``pixels / 255`` that is folded
  into the first Conv2d/Linear. Exact, except at the zero padding of a first Conv2d when ``C != 0``
  (the padding stands for normalised 0, not pixel 0): :attr:`Imported.notes` says so.
- An NHWC graph (a leading Transpose/permute to NCHW) takes NHWC pixels; a Transpose to NHWC before the
  Flatten of a Linear (Keras' flatten order) becomes a permutation of that Linear's columns.
- ``Clip(0, inf)`` is a ReLU; ``Clip(0, c)`` (ReLU6) a ``Hardtanh(0, c)``, which the conversion folds by
  capping that layer's activation scale at ``c`` (the one-spike code saturates there: that is the clip).

Anything else is refused as ``unsupported op <name> at node <n>``, a graph that is not a chain as
``not a chain of layers``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from runtime.errors import UserError

# Keras' flatten order (NHWC) before a Linear, and NHWC input (a leading transpose to NCHW)
TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)


@dataclass
class Op:
    """One node of an imported chain (arrays are float64 numpy)."""

    kind: str   # conv linear bn relu clip maxpool avgpool gap flatten transpose affine identity softmax
    where: str  # "node 3 (Conv_0)": for error messages
    a: dict = field(default_factory=dict)


@dataclass
class Imported:
    model: nn.Sequential
    input_shape: tuple[int, int, int]
    layout: str                      # NCHW or NHWC: the pixel layout the source graph takes
    meta: dict
    notes: list[str]


def unsupported(op: str, where: str) -> UserError:
    return UserError(f"unsupported op {op} at {where}: supported are Conv, Gemm/MatMul(+Add), BatchNormalization, "
                     f"Relu, Clip(0, c), MaxPool, AveragePool, GlobalAveragePool, Flatten/Reshape, Dropout/Identity, "
                     f"constant Mul/Div/Add/Sub and a trailing Softmax")


def _pair(v, what: str, where: str) -> int:
    vals = [int(x) for x in np.atleast_1d(v)]
    if len(set(vals)) != 1:
        raise UserError(f"{what} {tuple(vals)} at {where} is not square/symmetric (not supported)")
    return vals[0]


def _pads(p, where: str) -> int:
    """ONNX pads [top, left, bottom, right] (or torch's [ph, pw]) -> one symmetric padding."""
    return _pair(p, "padding", where) if len(np.atleast_1d(p)) else 0


def _channel_vector(v, c: int | None, where: str) -> np.ndarray | float:
    """A constant operand of an elementwise op: a scalar, or one value per channel (C, 1, 1) / (1, C, 1, 1) / (C,)."""
    v = np.asarray(v, dtype=np.float64)
    if v.size == 1:
        return float(v.reshape(()))
    flat = v.reshape(-1)
    squeezed = [d for d in v.shape if d != 1]
    if c is not None and len(squeezed) == 1 and squeezed[0] == c and flat.size == c:
        return flat
    raise UserError(f"the constant of shape {tuple(v.shape)} at {where} is neither a scalar nor one value per "
                    f"channel{'' if c is None else f' ({c})'} (not supported)")


def to_sequential(ops: list[Op], input_dims: tuple, *, source: str, mean=None, std=None, input_scale: float = 1.0,
                  image_shape: tuple | None = None) -> Imported:
    """The ``nn.Sequential`` of supported layers that computes ``ops`` on ``x = pixels / 255``.

    ``input_dims``: the graph input's dimensions without the batch (rank 3 CHW/HWC, rank 2 HW, or rank 1
    features; a rank-1 input needs ``image_shape`` (C, H, W) whose size it matches)."""
    dims = tuple(int(d) for d in input_dims)
    ops = [o for o in ops if o.kind != "identity"]
    while ops and ops[-1].kind == "softmax":
        ops = ops[:-1]
    for o in ops:
        if o.kind == "softmax":
            raise UserError(f"Softmax at {o.where} is not the last op: only a trailing Softmax (dropped) is supported")
    notes: list[str] = []
    layout = "NCHW"
    # -- the input: layout and shape
    if ops and ops[0].kind == "transpose" and tuple(ops[0].a["perm"]) == TO_NCHW and len(dims) == 3:
        layout = "NHWC"
        dims = (dims[2], dims[0], dims[1])
        ops = ops[1:]
    if len(dims) == 3:
        shape = dims
    elif len(dims) == 2:
        shape = (1,) + dims
    elif len(dims) == 1:
        if image_shape is None or int(np.prod(image_shape)) != dims[0]:
            raise UserError(f"{source}: the graph takes {dims[0]} features per image; give the image shape it is "
                            f"flattened from with --input-shape C,H,W" + (f" (not {tuple(image_shape)})" if image_shape else ""))
        shape = tuple(int(x) for x in image_shape)
        ops = [Op("flatten", "the input")] + ops
    else:
        raise UserError(f"{source}: the graph input has {len(dims) + 1} dimensions (N{', ' if dims else ''}"
                        f"{', '.join(map(str, dims))}); images need N, C, H, W (or N, H, W, C, or N, features)")
    if any(d < 1 for d in shape):
        raise UserError(f"{source}: the graph input has no fixed image size {shape}: export it with a fixed H and W")
    c_in = shape[0]
    # -- the input code x * A + C (x = pixels / 255), folded into the first Conv2d/Linear
    A = np.full(c_in, float(input_scale))
    C = np.zeros(c_in)
    if mean is not None or std is not None:
        m = np.broadcast_to(np.asarray(mean if mean is not None else 0.0, dtype=np.float64), (c_in,))
        s = np.broadcast_to(np.asarray(std if std is not None else 1.0, dtype=np.float64), (c_in,))
        A, C = A / s, (C - m) / s
    mods: list[nn.Module] = []
    cur = shape                      # current tensor shape (C, H, W) or (K,)
    pending_perm = None              # a Linear's column order after a transpose to NHWC + flatten
    nhwc_shape = None                # (C, H, W) when the current value is in NHWC order (before flatten)
    first_done = False               # the input code has been folded
    for o in ops:
        k = o.kind
        if nhwc_shape is not None and k not in ("flatten",):
            raise UserError(f"a transpose to NHWC must be followed by the Flatten/Reshape of a Linear, not {k} at {o.where}")
        if k == "affine":
            mul = _channel_vector(o.a.get("mul", 1.0), cur[0], o.where)
            add = _channel_vector(o.a.get("add", 0.0), cur[0], o.where)
            if not first_done:
                A, C = A * mul, C * mul + add
                continue
            last = mods[-1] if mods else None
            if isinstance(last, (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)):
                _fold_affine_after(last, mul, add)
                continue
            raise UserError(f"a constant Mul/Add at {o.where} follows {type(last).__name__ if last else 'nothing'}: "
                            f"it folds only into a Conv/Gemm/BatchNormalization before it (or into the input)")
        if k == "transpose":
            perm = tuple(o.a["perm"])
            if perm == TO_NHWC and len(cur) == 3:
                nhwc_shape = cur
                continue
            raise UserError(f"Transpose {list(perm)} at {o.where} is not supported (only NHWC input, or NHWC before "
                            f"the Flatten of a Linear)")
        if k == "flatten":
            if len(cur) == 3:
                if nhwc_shape is not None:
                    ch, h, w = nhwc_shape
                    # NHWC flat index of the value at CHW flat index i
                    cc, hh, ww = np.meshgrid(np.arange(ch), np.arange(h), np.arange(w), indexing="ij")
                    pending_perm = ((hh * w + ww) * ch + cc).reshape(-1)
                    nhwc_shape = None
                mods.append(nn.Flatten())
                cur = (int(np.prod(cur)),)
            continue
        if k in ("conv", "linear"):
            w = np.asarray(o.a["w"], dtype=np.float64)
            b = np.zeros(w.shape[0]) if o.a.get("b") is None else np.asarray(o.a["b"], dtype=np.float64).reshape(-1)
            if k == "conv":
                if len(cur) != 3:
                    raise UserError(f"Conv at {o.where} receives a flat {cur} tensor")
                if int(o.a.get("groups", 1)) != 1:
                    raise UserError(f"grouped Conv (group={o.a['groups']}) at {o.where} is not supported")
                if w.ndim != 4 or w.shape[1] != cur[0]:
                    raise UserError(f"Conv at {o.where}: weight {tuple(w.shape)} does not match its {cur[0]}-channel input")
                ks = _pair(w.shape[2:], "kernel", o.where)
                st = _pair(o.a.get("stride", [1]), "stride", o.where)
                pd = _pads(o.a.get("pads", [0]), o.where)
                dl = _pair(o.a.get("dilation", [1]), "dilation", o.where)
                if dl != 1:
                    raise UserError(f"dilated Conv at {o.where} is not supported")
                if not first_done:
                    if pd and np.any(C != 0):
                        notes.append(f"the input normalisation (offset {np.round(C, 4).tolist()}) is folded into the "
                                     f"first Conv2d; its zero padding now stands for normalised 0 (pixel "
                                     f"{np.round(-C / A * 255, 1).tolist()}), not pixel 0: the border pixels' "
                                     f"contribution differs slightly")
                    b = b + np.einsum("oikl,i->o", w, C)
                    w = w * A.reshape(1, -1, 1, 1)
                mod = nn.Conv2d(w.shape[1], w.shape[0], ks, stride=st, padding=pd)
                hout = (cur[1] + 2 * pd - ks) // st + 1
                wout = (cur[2] + 2 * pd - ks) // st + 1
                cur_next = (w.shape[0], hout, wout)
            else:
                if len(cur) != 1:
                    raise UserError(f"Gemm/MatMul at {o.where} receives a {cur} tensor; flatten it first")
                if w.ndim != 2 or w.shape[1] != cur[0]:
                    raise UserError(f"Gemm/MatMul at {o.where}: weight {tuple(w.shape)} does not match its {cur[0]} inputs")
                if pending_perm is not None:
                    w = w[:, pending_perm]
                    pending_perm = None
                if not first_done:
                    ch = np.repeat(np.arange(c_in), w.shape[1] // c_in)  # channel of each CHW-flattened input
                    b = b + w @ C[ch]
                    w = w * A[ch][None, :]
                mod = nn.Linear(w.shape[1], w.shape[0])
                cur_next = (w.shape[0],)
            with torch.no_grad():
                mod.weight.copy_(torch.from_numpy(w))
                mod.bias.copy_(torch.from_numpy(b))
            mods.append(mod)
            cur = cur_next
            first_done = True
            continue
        if k == "bn":
            if not mods or not isinstance(mods[-1], (nn.Conv2d, nn.Linear)):
                raise UserError(f"BatchNormalization at {o.where} must directly follow a Conv or Gemm to be folded")
            n = cur[0]
            mod = nn.BatchNorm2d(n, eps=float(o.a["eps"])) if len(cur) == 3 else nn.BatchNorm1d(n, eps=float(o.a["eps"]))
            with torch.no_grad():
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(mod, name).copy_(torch.from_numpy(np.asarray(o.a[name], dtype=np.float64).reshape(-1)))
            mods.append(mod)
            continue
        if k in ("relu", "clip"):
            cap = None
            if k == "clip":
                lo, hi = o.a.get("lo"), o.a.get("hi")
                if lo is None or float(lo) != 0.0:
                    raise UserError(f"Clip({lo}, {hi}) at {o.where}: only Clip(0, c) (a ReLU, capped at c) folds")
                if hi is not None and np.isfinite(hi):
                    if not float(hi) > 0:
                        raise UserError(f"Clip(0, {hi}) at {o.where}: the cap must be positive")
                    cap = float(hi)
            if not first_done:
                raise UserError(f"a ReLU at {o.where} before the first Conv/Gemm is not supported (pixels are "
                                f"already non-negative)")
            mods.append(nn.ReLU() if cap is None else nn.Hardtanh(0.0, cap))
            continue
        if k in ("maxpool", "avgpool", "gap"):
            if len(cur) != 3:
                raise UserError(f"pooling at {o.where} receives a flat {cur} tensor")
            if k == "gap":
                if cur[1] != cur[2]:
                    raise UserError(f"GlobalAveragePool at {o.where} over a non-square {cur[1]}x{cur[2]} map is not supported")
                ks, st, pd = cur[1], cur[1], 0
            else:
                ks = _pair(o.a["kernel"], "kernel", o.where)
                st = _pair(o.a.get("stride", o.a["kernel"]), "stride", o.where)
                pd = _pads(o.a.get("pads", [0]), o.where)
                if o.a.get("ceil"):
                    raise UserError(f"pooling with ceil_mode at {o.where} is not supported")
            if not first_done and (k != "maxpool" or np.any(A <= 0)):
                raise UserError(f"pooling at {o.where} before the first Conv/Gemm does not commute with the input "
                                f"normalisation; put it after the first layer")
            if k == "maxpool":
                if _pair(o.a.get("dilation", [1]), "dilation", o.where) != 1:
                    raise UserError(f"dilated MaxPool at {o.where} is not supported")
                mods.append(nn.MaxPool2d(ks, st, pd))
            else:
                if pd and not o.a.get("count_include_pad", True):
                    raise UserError(f"AveragePool at {o.where} with count_include_pad=0 and padding is not supported")
                mods.append(nn.AvgPool2d(ks, st, pd))
            cur = (cur[0], (cur[1] + 2 * pd - ks) // st + 1, (cur[2] + 2 * pd - ks) // st + 1)
            continue
        raise unsupported(k, o.where)  # pragma: no cover (the importers map every op they accept)
    if nhwc_shape is not None or pending_perm is not None:
        raise UserError(f"{source}: a transpose to NHWC is not followed by a Flatten and a Linear")
    if not first_done:
        raise UserError(f"{source}: the graph has no Conv or Gemm/MatMul layer")
    meta = {"source_format": source, "source_layout": layout,
            "input_code": {"scale": A.tolist(), "offset": C.tolist()}}
    return Imported(nn.Sequential(*mods).eval(), tuple(int(x) for x in shape), layout, meta, notes)


def _fold_affine_after(layer: nn.Module, mul, add) -> None:
    """``y = mul * layer(x) + add`` folded into ``layer``'s weights (a BatchNorm: its weight and bias)."""
    mul_t = torch.as_tensor(mul, dtype=torch.float64)
    add_t = torch.as_tensor(add, dtype=torch.float64)
    with torch.no_grad():
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            layer.weight.copy_((layer.weight.double() * mul_t).float())
            layer.bias.copy_((layer.bias.double() * mul_t + add_t).float())
            return
        shape = (-1,) + (1,) * (layer.weight.ndim - 1)
        layer.weight.copy_((layer.weight.double() * mul_t.reshape(shape) if mul_t.ndim else layer.weight.double() * mul_t).float())
        layer.bias.copy_((layer.bias.double() * mul_t + add_t).float())


def load_network(path, *, mean=None, std=None, input_scale: float = 1.0, image_shape=None):
    """Any network file ``codegen convert`` reads -> ``(nn.Sequential, input_shape, meta, notes)``.

    ``.onnx``: :mod:`.from_onnx`; a ``torch.export`` archive (``.pt2``): :mod:`.from_export`; else an
    ``onespike-ann`` file (:func:`codegen.frontend.ann.load`), where the import options do not apply."""
    from pathlib import Path

    from runtime.io import check_regular_file

    from . import ann

    p = Path(path)
    check_regular_file(p, "network file")
    kind = sniff(p)
    if kind == "ann":
        if mean is not None or std is not None or input_scale != 1.0 or image_shape is not None:
            raise UserError(f"{p} is an onespike-ann file: --mean, --std, --input-scale and --input-shape apply to "
                            f"ONNX and torch.export files only")
        try:
            net, shape, meta = ann.load(p)
        except UserError as e:
            if "not an ANN file" in str(e) or "pickled code" in str(e) or "carries code" in str(e):
                raise UserError(f"{e}. A PyTorch checkpoint or pickled module cannot be read safely: export the "
                                f"network with torch.onnx.export(model, x, 'model.onnx') or "
                                f"torch.export.save(torch.export.export(model, (x,)), 'model.pt2') and convert that "
                                f"(docs/import.md)") from None
            raise
        return net, shape, meta, []
    if kind == "onnx":
        from .from_onnx import read
    else:
        from .from_export import read
    ops, dims = read(p)
    imp = to_sequential(ops, dims, source=kind, mean=mean, std=std, input_scale=input_scale, image_shape=image_shape)
    return imp.model, imp.input_shape, imp.meta, imp.notes


def sniff(p) -> str:
    """``onnx``, ``export`` (a torch.export archive) or ``ann`` (anything else: :func:`ann.load` judges it)."""
    import zipfile

    with open(p, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return "ann"
        if any(n.endswith("/archive_format") for n in names) and any("/models/" in n for n in names):
            return "export"
        return "ann"
    if str(p).lower().endswith(".onnx"):
        return "onnx"
    if str(p).lower().endswith(".pt2"):
        return "export"
    return "ann"
