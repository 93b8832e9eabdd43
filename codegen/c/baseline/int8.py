"""BASELINE ONLY: post-training int8 quantisation of the same ANN, a numpy reference, and C for it.

Scheme (as TFLite Micro does it, simplified): uint8 activations with zero point 0 (inputs are raw
pixels, every hidden activation follows a ReLU), int8 weights per output channel (per tensor for
the readout so its int32 logits are comparable), int32 bias, and requantisation
``q = clamp((acc * mult + 2**(shift-1)) >> shift, 0, 255)`` with a Q31 multiplier. Activation
scales come from the maximum over the calibration images. Only conv2d, dense and maxpool layers
(the shipped models) are supported.
"""
from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.errors import UserError

from ...frontend import convert
from .. import emit as emit_c

HERE = Path(__file__).resolve().parent


@dataclass
class QLayer:
    kind: str
    in_shape: tuple
    out_shape: tuple
    weight: np.ndarray | None = None  # int8
    bias: np.ndarray | None = None  # int32
    mult: np.ndarray | None = None  # int32
    shift: np.ndarray | None = None  # uint8
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    readout: bool = False


def _qmult(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """real = mult * 2**-shift with mult in [2**30, 2**31)."""
    mant, exp = np.frexp(real)  # real = mant * 2**exp, mant in [0.5, 1)
    mult = np.round(mant * (1 << 31)).astype(np.int64)
    exp = np.where(mult == (1 << 31), exp + 1, exp)
    mult = np.where(mult == (1 << 31), 1 << 30, mult)
    shift = 31 - exp
    if (shift < 1).any() or (shift > 62).any():
        raise UserError("requantisation scale out of range for the int8 baseline")
    return mult.astype(np.int32), shift.astype(np.uint8)


def quantise(low: convert.Lowered, calib_u8: np.ndarray) -> list[QLayer]:
    with torch.no_grad():
        _, acts = convert.float_forward(low, torch.from_numpy(calib_u8.astype(np.float64) / 255.0), collect=True)
    act_max = [float(a.max()) for a in acts]
    s_in = 1.0 / 255.0
    layers, k = [], 0
    for i, st in enumerate(low.stages):
        readout = i == len(low.stages) - 1
        if st.kind == "maxpool":
            layers.append(QLayer("maxpool", st.in_shape, st.out_shape, kernel=st.kernel, stride=st.stride, padding=st.padding))
            continue
        if st.kind not in ("dense", "conv2d"):
            raise UserError(f"the int8 baseline does not support {st.kind} layers")
        w = st.weight.reshape(st.weight.shape[0], -1)
        sw = np.full(w.shape[0], np.abs(w).max() / 127.0) if readout else np.abs(w).max(1) / 127.0
        sw[sw == 0] = 1.0
        wq = np.clip(np.round(st.weight / sw.reshape((-1,) + (1,) * (st.weight.ndim - 1))), -127, 127).astype(np.int8)
        bq = np.round(st.bias / (s_in * sw)).astype(np.int64)
        if np.abs(bq).max(initial=0) >= 2 ** 31:
            raise UserError("bias out of int32 range for the int8 baseline")
        q = QLayer(st.kind, st.in_shape, st.out_shape, wq, bq.astype(np.int32), kernel=st.kernel, stride=st.stride,
                   padding=st.padding, readout=readout)
        if not readout:
            s_out = max(act_max[k], 1e-12) / 255.0
            k += 1
            q.mult, q.shift = _qmult(s_in * sw / s_out)
            s_in = s_out
        layers.append(q)
    return layers


def forward(layers: list[QLayer], images_u8: np.ndarray) -> np.ndarray:
    """Integer reference (numpy, int64): logits (N, classes)."""
    x = images_u8.astype(np.int64)
    n = len(x)
    for q in layers:
        if q.kind == "maxpool":
            t = torch.from_numpy(x.astype(np.float64))
            x = torch.nn.functional.max_pool2d(t, q.kernel, q.stride, q.padding).numpy().astype(np.int64)
            continue
        if q.kind == "dense":
            acc = x.reshape(n, -1) @ q.weight.astype(np.int64).T + q.bias.astype(np.int64)
        else:  # exact: float64 holds these integer sums exactly (|acc| < 2**31 < 2**53)
            acc = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)),
                                             torch.from_numpy(q.weight.astype(np.float64)),
                                             torch.from_numpy(q.bias.astype(np.float64)), q.stride, q.padding).numpy()
            acc = np.round(acc).astype(np.int64)
        if q.readout:
            return acc.reshape(n, -1)
        mult = q.mult.astype(np.int64).reshape((-1,) + (1,) * (acc.ndim - 2))
        shift = q.shift.astype(np.int64).reshape((-1,) + (1,) * (acc.ndim - 2))
        v = (acc * mult + (np.int64(1) << (shift - 1))) >> shift  # acc*mult < 2**62: no overflow
        x = np.clip(v, 0, 255)
    raise AssertionError("no readout")


def _arr(ctype, name, v):
    v = np.asarray(v).ravel()
    rows = [", ".join(str(int(t)) for t in v[i:i + 16]) for i in range(0, len(v), 16)]
    return f"static const {ctype} {name}[{max(1, len(v))}] = {{\n    " + ",\n    ".join(rows or ["0"]) + "\n};\n"


def generate(layers: list[QLayer], name: str, input_shape) -> dict[str, bytes]:
    sym = emit_c.c_symbol(name) + "_int8"
    sizes = [int(np.prod(input_shape))] + [int(np.prod(q.out_shape)) for q in layers[:-1]]
    buf = [0, 0]
    for pos, s in enumerate(sizes):
        buf[pos % 2] = max(buf[pos % 2], s)
    parts = [f"/* BASELINE int8 ANN for {name}: generated. */\n#include \"int8_ann.h\"\n\n"]
    inits = []
    kinds = {"dense": "I8_DENSE", "conv2d": "I8_CONV2D", "maxpool": "I8_MAXPOOL"}
    for i, q in enumerate(layers):
        p = f"{sym}_l{i}"
        names = {}
        for fld, ctype in (("weight", "int8_t"), ("bias", "int32_t"), ("mult", "int32_t"), ("shift", "uint8_t")):
            a = getattr(q, fld)
            if a is not None:
                parts.append(_arr(ctype, f"{p}_{fld}", a))
                names[fld] = f"{p}_{fld}"
        ic, ih, iw = (int(np.prod(q.in_shape)), 1, 1) if q.kind == "dense" else q.in_shape
        oc, oh, ow = (q.out_shape[0], 1, 1) if q.kind == "dense" else q.out_shape
        inits.append(f"    {{ {kinds[q.kind]}, {int(q.readout)}, {q.kernel}, {q.stride}, {q.padding}, {i % 2}, {(i + 1) % 2}, "
                     f"{ic}, {ih}, {iw}, {oc}, {oh}, {ow}, {names.get('weight', 'NULL')}, {names.get('bias', 'NULL')}, "
                     f"{names.get('mult', 'NULL')}, {names.get('shift', 'NULL')} }},")
    parts.append(f"\nstatic const i8_layer_t {sym}_layers[] = {{\n" + "\n".join(inits) + "\n};\n")
    parts.append(f"static uint8_t {sym}_b0[{max(1, buf[0])}], {sym}_b1[{max(1, buf[1])}];\n")
    parts.append(f"const i8_model_t {sym}_model = {{ {len(layers)}, {int(np.prod(layers[-1].out_shape))}, {sym}_layers, "
                 f"{{ {sym}_b0, {sym}_b1 }} }};\n\n")
    parts.append(f"int {sym}_infer(const uint8_t *pixels, int32_t *logits)\n{{\n    return i8_infer(&{sym}_model, pixels, logits);\n}}\n")
    files = {f"{sym}_model.c": "".join(parts).replace("NULL", "0").encode()}
    for fn in ("int8_ann.h", "int8_ann.c"):
        files[fn] = (HERE / fn).read_bytes()
    return files


def host_logits(layers: list[QLayer], name: str, input_shape, images: np.ndarray, work: Path) -> np.ndarray:
    """Build the baseline C on the host and run it: logits and class per image."""
    sym = emit_c.c_symbol(name) + "_int8"
    src = Path(tempfile.mkdtemp(dir=work))
    for fn, data in generate(layers, name, input_shape).items():
        (src / fn).write_bytes(data)
    exe = src / "runner"
    subprocess.run(["gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", f"-DI8_MODEL={sym}_model", "-I", str(src),
                    str(HERE / "host_main.c"), str(src / f"{sym}_model.c"), str(src / "int8_ann.c"), "-o", str(exe)],
                   check=True, capture_output=True, text=True)
    (src / "images.bin").write_bytes(np.ascontiguousarray(images).tobytes())
    subprocess.run([str(exe), str(src / "images.bin"), str(len(images)), str(src / "out.bin")], check=True)
    k = int(np.prod(layers[-1].out_shape))
    return np.fromfile(src / "out.bin", dtype="<i4").reshape(len(images), k + 1).astype(np.int64)
