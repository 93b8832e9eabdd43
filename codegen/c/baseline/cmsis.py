"""BASELINE ONLY: the same ANN through Arm's CMSIS-NN (what TFLite Micro / Edge Impulse call on a Cortex-M).

TFLite-style post-training quantisation: int8 activations (zero point -128: the input is pixel - 128,
every hidden activation follows a ReLU), int8 weights per output channel, int32 bias, Q31 requantisation
(``multiplier``, ``shift`` as TFLite's QuantizeMultiplier gives them; positive shift = left). Dense
layers only for now (the MLP): ``arm_fully_connected_per_channel_s8``. :func:`forward` is a numpy
reading of CMSIS-NN's arithmetic (``arm_nn_vec_mat_mult_t_per_ch_s8`` and the default
``arm_nn_requantize``), which the firmware's output must equal exactly.

CMSIS-NN is built from ``../shared/vendor/cmsis-nn`` (``$ONESPIKE_CMSIS_NN`` overrides it) by
:func:`build_library`; :func:`missing` says in one line why it cannot be (folder absent).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runtime.errors import UserError

from ...frontend import convert
from ..toolchain import need, tool_error

ROOT = Path(__file__).resolve().parents[3]


def vendor() -> Path:
    return Path(os.environ.get("ONESPIKE_CMSIS_NN") or ROOT.parent / "shared" / "vendor" / "cmsis-nn")


def missing() -> str | None:
    v = vendor()
    if not (v / "Include" / "arm_nnfunctions.h").is_file() or not (v / "Source").is_dir():
        return f"CMSIS-NN not found at {v} (set ONESPIKE_CMSIS_NN to its folder): the CMSIS-NN baseline is skipped"
    return None


def sources() -> list[Path]:
    return sorted(p for p in (vendor() / "Source").rglob("*.c")
                  if not p.name.endswith(("_f16.c", "_f32.c", "_flt.c")))


def build_library(cpu_flags, opt: str, work: Path) -> Path:
    """``libcmsisnn.a`` for these flags, compiled once into ``work`` (keyed by the flags and the sources)."""
    why = missing()
    if why:
        raise UserError(why)
    cc = need("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    ar = need("arm-none-eabi-ar", "binutils-arm-none-eabi")
    flags = list(cpu_flags) + [opt, "-std=c11", "-ffunction-sections", "-fdata-sections", "-I",
                               str(vendor() / "Include"), "-DARM_NN_ENABLE_F32=0", "-DARM_NN_ENABLE_F16=0"]
    srcs = sources()
    key = hashlib.sha256(" ".join(flags).encode() + b"".join(p.read_bytes() for p in srcs)).hexdigest()[:16]
    out = Path(work) / f"cmsisnn-{key}"
    lib = out / "libcmsisnn.a"
    if lib.is_file():
        return lib
    out.mkdir(parents=True, exist_ok=True)
    objs = []
    for i, p in enumerate(srcs):
        o = out / f"{i:03d}_{p.stem}.o"
        cmd = [cc] + flags + ["-c", str(p), "-o", str(o)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise tool_error(f"arm-none-eabi-gcc on CMSIS-NN's {p.name}", cmd, r, out / "compile.log")
        objs.append(str(o))
    tmp = out / "libcmsisnn.a.tmp"
    r = subprocess.run([ar, "rcs", str(tmp)] + objs, capture_output=True, text=True)
    if r.returncode != 0:
        raise tool_error("arm-none-eabi-ar on CMSIS-NN", [ar], r, out / "ar.log")
    tmp.rename(lib)
    return lib


@dataclass
class FC:
    weight: np.ndarray  # int8 (out, in)
    bias: np.ndarray  # int32 (out,)
    mult: np.ndarray  # int32 (out,)
    shift: np.ndarray  # int32 (out,), positive = left
    in_offset: int
    out_offset: int
    act_min: int
    act_max: int


def quantize_multiplier(real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's QuantizeMultiplier: real = mult * 2**(shift - 31), mult in [2**30, 2**31)."""
    mant, exp = np.frexp(np.asarray(real, dtype=np.float64))
    mult = np.round(mant * (1 << 31)).astype(np.int64)
    exp = np.where(mult == (1 << 31), exp + 1, exp)
    mult = np.where(mult == (1 << 31), 1 << 30, mult)
    if (exp > 30).any() or (exp < -31).any():
        raise UserError("requantisation scale out of range for the CMSIS-NN baseline")
    return mult.astype(np.int32), exp.astype(np.int32)


def quantise(low: convert.Lowered, calib_u8: np.ndarray) -> list[FC]:
    """Per-channel int8 quantisation of a dense-only network (the MLP); activation ranges from ``calib_u8``."""
    if any(st.kind != "dense" for st in low.stages):
        raise UserError("the CMSIS-NN baseline handles dense-only networks so far (the MLP)")
    with torch.no_grad():
        out, acts = convert.float_forward(low, torch.from_numpy(calib_u8.astype(np.float64) / 255.0), collect=True)
    s_in, zp_in = 1.0 / 255.0, -128  # int8 input = pixel - 128
    layers = []
    for i, st in enumerate(low.stages):
        readout = i == len(low.stages) - 1
        w = st.weight
        sw = np.abs(w).max(1) / 127.0
        sw[sw == 0] = 1.0
        wq = np.clip(np.round(w / sw[:, None]), -127, 127).astype(np.int8)
        bq = np.round(st.bias / (s_in * sw)).astype(np.int64)
        if readout:  # int8 logits over the calibration range, asymmetric
            lo, hi = float(out.min()), float(out.max())
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            s_out = max(hi - lo, 1e-12) / 255.0
            zp_out = int(np.clip(np.round(-128 - lo / s_out), -128, 127))
        else:
            s_out = max(float(acts[i].max()), 1e-12) / 255.0
            zp_out = -128
        mult, shift = quantize_multiplier(s_in * sw / s_out)
        layers.append(FC(wq, bq.astype(np.int32), mult, shift, -zp_in, zp_out, zp_out if not readout else -128, 127))
        s_in, zp_in = s_out, zp_out
    return layers


def _requantize(acc: np.ndarray, mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """CMSIS-NN's default arm_nn_requantize: doubling high multiply (no saturation), then a rounding
    divide by a power of two (midpoint away from zero)."""
    left = np.maximum(shift, 0).astype(np.int64)
    right = np.maximum(-shift, 0).astype(np.int64)
    v = acc.astype(np.int64) * (np.int64(1) << left)
    v = ((v.astype(np.int32).astype(np.int64)) * mult.astype(np.int64) + (1 << 30)) >> 31
    v = v.astype(np.int32).astype(np.int64)
    mask = (np.int64(1) << right) - 1
    rem = v & mask
    res = v >> right
    thr = (mask >> 1) + (res < 0)
    return res + (rem > thr)


def forward(layers: list[FC], images_u8: np.ndarray) -> np.ndarray:
    """The int8 outputs (N, classes) CMSIS-NN computes, in numpy (exact)."""
    x = images_u8.reshape(len(images_u8), -1).astype(np.int64) - 128
    for q in layers:
        acc = q.bias.astype(np.int64) + (x + q.in_offset) @ q.weight.astype(np.int64).T
        v = _requantize(acc, q.mult, q.shift) + q.out_offset
        x = np.clip(v, q.act_min, q.act_max)
    return x


def _arr(ctype, name, v):
    v = np.asarray(v).ravel()
    rows = [", ".join(str(int(t)) for t in v[i:i + 16]) for i in range(0, len(v), 16)]
    return f"static const {ctype} {name}[{max(1, len(v))}] = {{\n    " + ",\n    ".join(rows or ["0"]) + "\n};\n"


def generate(layers: list[FC], sym: str, input_size: int) -> dict[str, bytes]:
    """C calling CMSIS-NN: ``int SYM_infer(const uint8_t *pixels, int32_t *logits)`` (logits: the int8 outputs)."""
    sizes = [input_size] + [q.weight.shape[0] for q in layers]
    parts = [f"/* BASELINE: CMSIS-NN int8 network {sym} (generated). */\n#include <stdint.h>\n#include \"arm_nnfunctions.h\"\n\n"]
    for i, q in enumerate(layers):
        parts.append(_arr("int8_t", f"w{i}", q.weight))
        parts.append(_arr("int32_t", f"b{i}", q.bias))
        parts.append(f"static int32_t m{i}[{len(q.mult)}] = {{ {', '.join(map(str, q.mult.tolist()))} }};\n")
        parts.append(f"static int32_t s{i}[{len(q.shift)}] = {{ {', '.join(map(str, q.shift.tolist()))} }};\n")
    parts.append(f"static int8_t act0[{max(sizes[0::2])}];\nstatic int8_t act1[{max(sizes[1::2])}];\n\n")
    body = [f"int {sym}_infer(const uint8_t *pixels, int32_t *logits)\n{{",
            "    cmsis_nn_context ctx = { NULL, 0 };",
            f"    for (int i = 0; i < {input_size}; i++) act0[i] = (int8_t)((int)pixels[i] - 128);"]
    for i, q in enumerate(layers):
        src, dst = ("act0", "act1") if i % 2 == 0 else ("act1", "act0")
        o, n = q.weight.shape
        body += [f"    {{ /* layer {i}: fully connected {n} -> {o} */",
                 f"        const cmsis_nn_fc_params fc = {{ {q.in_offset}, 0, {q.out_offset}, {{ {q.act_min}, {q.act_max} }} }};",
                 f"        const cmsis_nn_per_channel_quant_params qp = {{ m{i}, s{i} }};",
                 f"        const cmsis_nn_dims in = {{ 1, 1, 1, {n} }}, fl = {{ {n}, 1, 1, {o} }}, bd = {{ 1, 1, 1, {o} }}, "
                 f"od = {{ 1, 1, 1, {o} }};",
                 f"        if (arm_fully_connected_per_channel_s8(&ctx, &fc, &qp, &in, {src}, &fl, w{i}, &bd, b{i}, &od, {dst}) "
                 f"!= ARM_CMSIS_NN_SUCCESS) return -1;",
                 "    }"]
    last = "act1" if len(layers) % 2 == 1 else "act0"
    k = layers[-1].weight.shape[0]
    body += [f"    int best = 0;",
             f"    for (int i = 0; i < {k}; i++) {{ logits[i] = {last}[i]; if ({last}[i] > {last}[best]) best = i; }}",
             "    return best;", "}\n"]
    parts.append("\n".join(body))
    return {f"{sym}.c": "".join(parts).encode()}
