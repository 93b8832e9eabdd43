"""BASELINE ONLY: the same ANN through Arm's CMSIS-NN (what TFLite Micro / Edge Impulse call on a Cortex-M).

TFLite-style post-training quantisation: int8 activations (zero point -128: the input is pixel - 128,
every hidden activation follows a ReLU), int8 weights per output channel, int32 bias, Q31 requantisation
(``multiplier``, ``shift`` as TFLite's QuantizeMultiplier gives them; positive shift = left); NHWC
activations. Layers: ``arm_fully_connected_per_channel_s8``, ``arm_convolve_wrapper_s8`` and
``arm_max_pool_s8``. The uint8 image (C, H, W) becomes the int8 NHWC input (pixel - 128) in the
generated C, read from the network's own buffer (``SYM_input``, so no second image buffer): a
one-channel image is converted in place, a multi-channel one (the RGB detector) is transposed from
the other activation buffer. :func:`forward` is a numpy reading of CMSIS-NN's arithmetic (the same
input step, sums of ``(x + input_offset) * w`` plus bias, the default ``arm_nn_requantize``, the
output offset, the activation clamp), which the firmware's output must equal exactly. The outputs
are the readout's int8 values in (C, H, W) order (a classifier's logits; a detector's readout map in
the one-spike map's order); :func:`dequantise` gives their real values (a detector's map for the
float decode and mAP).

CMSIS-NN is built from ``../shared/vendor/cmsis-nn`` (beside the datasets; ``$ONESPIKE_CMSIS_NN``
overrides it) by :func:`build_library`; :func:`missing` says in one line why it cannot be (folder
absent).
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
    """``$ONESPIKE_CMSIS_NN``, else ``vendor/cmsis-nn`` in the same shared folder as the datasets
    (``$ONESPIKE_DATA/../vendor``), else ``<repo>/../shared/vendor/cmsis-nn``."""
    env = os.environ.get("ONESPIKE_CMSIS_NN")
    if env:
        return Path(env)
    from ...frontend.datasets import data_root

    beside_data = data_root().parent / "vendor" / "cmsis-nn"
    return beside_data if beside_data.is_dir() else ROOT.parent / "shared" / "vendor" / "cmsis-nn"


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
    out = Path(work).resolve() / f"cmsisnn-{key}"  # absolute: the firmware links from its own folder
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
    """One CMSIS-NN layer: ``kind`` dense, conv2d (weights [out][kh][kw][in], NHWC) or maxpool."""

    weight: np.ndarray | None  # int8: dense (out, in) with NHWC input order; conv2d (out, kh, kw, in)
    bias: np.ndarray | None  # int32 (out,)
    mult: np.ndarray | None  # int32 (out,)
    shift: np.ndarray | None  # int32 (out,), positive = left
    in_offset: int
    out_offset: int
    act_min: int
    act_max: int
    kind: str = "dense"
    in_shape: tuple = ()  # (C, H, W) or (N,)
    out_shape: tuple = ()
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    out_scale: float = 1.0  # real value of one output unit: real = (q - out_offset) * out_scale


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
    """Per-channel int8 quantisation of a dense / conv2d / maxpool network (the shipped classifiers and
    the detector); activation ranges from ``calib_u8`` (uint8 (N, C, H, W)); the readout is one
    asymmetric int8 scale over its calibration range (a detector's class and box channels alike)."""
    calib_u8 = np.asarray(calib_u8)
    if calib_u8.dtype != np.uint8 or len(calib_u8) < 1 or tuple(calib_u8.shape[1:]) != tuple(low.input_shape):
        raise UserError(f"CMSIS-NN calibration images must be uint8 (N, {', '.join(map(str, low.input_shape))}), "
                        f"not {tuple(calib_u8.shape)}")
    with torch.no_grad():
        out, acts = convert.float_forward(low, torch.from_numpy(calib_u8.astype(np.float64) / 255.0), collect=True)
    s_in, zp_in = 1.0 / 255.0, -128  # int8 input = pixel - 128
    layers, k = [], 0
    for i, st in enumerate(low.stages):
        readout = i == len(low.stages) - 1
        if st.kind == "maxpool":
            layers.append(FC(None, None, None, None, 0, 0, -128, 127, "maxpool", tuple(st.in_shape), tuple(st.out_shape),
                             st.kernel, st.stride, st.padding, s_in))
            continue
        if st.kind not in ("dense", "conv2d"):
            raise UserError(f"the CMSIS-NN baseline does not support {st.kind} layers")
        w = st.weight.reshape(st.weight.shape[0], -1)
        sw = np.abs(w).max(1) / 127.0
        sw[sw == 0] = 1.0
        wq = np.clip(np.round(st.weight / sw.reshape((-1,) + (1,) * (st.weight.ndim - 1))), -127, 127).astype(np.int8)
        prev = tuple(low.input_shape) if i == 0 else tuple(low.stages[i - 1].out_shape)
        if st.kind == "conv2d":
            wq = np.ascontiguousarray(wq.transpose(0, 2, 3, 1))  # [out][kh][kw][in]
        elif len(prev) == 3:
            c, h, ww = prev  # flattened (C, H, W) in torch: reorder the columns to NHWC
            wq = np.ascontiguousarray(wq.reshape(-1, c, h, ww).transpose(0, 2, 3, 1).reshape(wq.shape[0], -1))
        bq = np.round(st.bias / (s_in * sw)).astype(np.int64)
        if np.abs(bq).max(initial=0) >= 2 ** 31:
            raise UserError("bias out of int32 range for the CMSIS-NN baseline")
        if readout:  # int8 logits over the calibration range, asymmetric
            lo, hi = min(float(out.min()), 0.0), max(float(out.max()), 0.0)
            s_out = max(hi - lo, 1e-12) / 255.0
            zp_out = int(np.clip(np.round(-128 - lo / s_out), -128, 127))
        else:
            s_out = max(float(acts[k].max()), 1e-12) / 255.0
            zp_out = -128
            k += 1
        mult, shift = quantize_multiplier(s_in * sw / s_out)
        layers.append(FC(wq, bq.astype(np.int32), mult, shift, -zp_in, zp_out, zp_out if not readout else -128, 127,
                         st.kind, tuple(st.in_shape), tuple(st.out_shape), st.kernel, st.stride, st.padding, s_out))
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


def forward(layers: list[FC], images_u8: np.ndarray, batch: int = 500) -> np.ndarray:
    """The int8 outputs CMSIS-NN computes, (N, readout size) in the readout's (C, H, W) order, in numpy
    (exact: integer sums in float64 stay below 2**53); ``batch`` images at a time."""
    if len(images_u8) > batch:
        return np.concatenate([forward(layers, images_u8[i:i + batch], batch) for i in range(0, len(images_u8), batch)])
    n = len(images_u8)
    x = images_u8.astype(np.int64).transpose(0, 2, 3, 1) - 128  # the C's input step: NCHW uint8 -> NHWC int8
    for q in layers:
        if q.kind == "maxpool":
            t = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float64))
            t = torch.nn.functional.max_pool2d(t, q.kernel, q.stride, q.padding)
            x = np.clip(t.numpy().astype(np.int64).transpose(0, 2, 3, 1), q.act_min, q.act_max)
            continue
        if q.kind == "dense":
            acc = q.bias.astype(np.int64) + (x.reshape(n, -1) + q.in_offset) @ q.weight.astype(np.int64).T
        else:
            xin = torch.from_numpy((x + q.in_offset).transpose(0, 3, 1, 2).astype(np.float64))
            wt = torch.from_numpy(q.weight.transpose(0, 3, 1, 2).astype(np.float64))
            acc = torch.nn.functional.conv2d(xin, wt, torch.from_numpy(q.bias.astype(np.float64)), q.stride, q.padding)
            acc = np.round(acc.numpy()).astype(np.int64).transpose(0, 2, 3, 1)  # NHWC
        v = _requantize(acc, q.mult, q.shift) + q.out_offset
        x = np.clip(v, q.act_min, q.act_max)
    if x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)  # NHWC -> the readout's (C, H, W) order, as the C writes it
    return np.ascontiguousarray(x.reshape(n, -1))


def dequantise(layers: list[FC], out: np.ndarray) -> np.ndarray:
    """Real values of :func:`forward`'s (or the firmware's) int8 outputs, (N, *readout shape) float64."""
    q = layers[-1]
    real = (np.asarray(out, dtype=np.float64) - q.out_offset) * q.out_scale
    return real.reshape((len(real),) + tuple(q.out_shape))


def _arr(ctype, name, v):
    v = np.asarray(v).ravel()
    rows = [", ".join(str(int(t)) for t in v[i:i + 16]) for i in range(0, len(v), 16)]
    return f"static const {ctype} {name}[{max(1, len(v))}] = {{\n    " + ",\n    ".join(rows or ["0"]) + "\n};\n"


def generate(layers: list[FC], sym: str, input_size: int) -> dict[str, bytes]:
    """C calling CMSIS-NN: ``int SYM_infer(const uint8_t *pixels, int32_t *logits)``: ``pixels`` uint8
    (C, H, W), ``logits`` the readout's int8 values in (C, H, W) order; returns their argmax. Weights,
    biases and the requantisation multipliers and shifts are ``const`` (flash; CMSIS-NN only reads them).

    The input step writes ``pixel - 128`` into the first activation buffer in NHWC order.
    ``uint8_t *SYM_input(void)`` is where the image may be written before ``SYM_infer(SYM_input(),
    logits)``, so the firmware needs no image buffer of its own: the first activation buffer itself
    for a one-channel image (converted in place), the other one (sized for the image) for a
    multi-channel image (transposed from there)."""
    c0, h0, w0 = layers[0].in_shape if len(layers[0].in_shape) == 3 else (1, 1, input_size)
    if c0 * h0 * w0 != input_size:
        raise UserError(f"CMSIS-NN input size {input_size} differs from the first layer's input {layers[0].in_shape}")
    sizes = [input_size] + [int(np.prod(q.out_shape)) for q in layers]
    in_buf = c0 > 1
    scratch = max([4 * int(np.prod(q.weight.shape[1:])) for q in layers if q.kind == "conv2d"] + [4])
    parts = [f"/* BASELINE: CMSIS-NN int8 network {sym} (generated). */\n#include <stdint.h>\n#include \"arm_nnfunctions.h\"\n\n"]
    for i, q in enumerate(layers):
        if q.weight is None:
            continue
        parts.append(_arr("int8_t", f"w{i}", q.weight))
        parts.append(_arr("int32_t", f"b{i}", q.bias))
        parts.append(_arr("int32_t", f"m{i}", q.mult))
        parts.append(_arr("int32_t", f"s{i}", q.shift))
    act1 = max(sizes[1::2] + ([input_size] if in_buf else []))
    parts.append(f"static int8_t act0[{max(sizes[0::2])}];\nstatic int8_t act1[{act1}];\n")
    parts.append(f"static int16_t scratch[{scratch}];\n\n")
    how = f"{sym}_infer transposes it into act0" if in_buf else f"{sym}_infer converts it in place"
    parts.append(f"uint8_t *{sym}_input(void)\n{{\n    return (uint8_t *){'act1' if in_buf else 'act0'}; "
                 f"/* the image (C, H, W); {how} */\n}}\n\n")
    body = [f"int {sym}_infer(const uint8_t *pixels, int32_t *logits)\n{{",
            "    cmsis_nn_context ctx = { scratch, (int32_t)sizeof scratch };"]
    if in_buf:
        body += [f"    for (int p = 0, j = 0; p < {h0 * w0}; p++) /* (C, H, W) uint8 -> NHWC int8 */",
                 f"        for (int c = 0; c < {c0}; c++, j++) act0[j] = (int8_t)((int)pixels[c * {h0 * w0} + p] - 128);"]
    else:
        body.append(f"    for (int i = 0; i < {input_size}; i++) act0[i] = (int8_t)((int)pixels[i] - 128);")
    for i, q in enumerate(layers):
        src, dst = ("act0", "act1") if i % 2 == 0 else ("act1", "act0")
        if q.kind == "maxpool":
            c, h, w = q.in_shape
            _, oh, ow = q.out_shape
            body += [f"    {{ /* layer {i}: max-pool {q.kernel}x{q.kernel} */",
                     f"        const cmsis_nn_pool_params pp = {{ {{ {q.stride}, {q.stride} }}, {{ {q.padding}, {q.padding} }}, "
                     f"{{ {q.act_min}, {q.act_max} }} }};",
                     f"        const cmsis_nn_dims in = {{ 1, {h}, {w}, {c} }}, fl = {{ 1, {q.kernel}, {q.kernel}, 1 }}, "
                     f"od = {{ 1, {oh}, {ow}, {c} }};",
                     f"        if (arm_max_pool_s8(&ctx, &pp, &in, {src}, &fl, &od, {dst}) != ARM_CMSIS_NN_SUCCESS) return -1;",
                     "    }"]
            continue
        if q.kind == "conv2d":
            o, kh, kw, c = q.weight.shape
            _, h, w = q.in_shape
            _, oh, ow = q.out_shape
            body += [f"    {{ /* layer {i}: conv {kh}x{kw} {c} -> {o} */",
                     f"        const cmsis_nn_conv_params cp = {{ {q.in_offset}, {q.out_offset}, {{ {q.stride}, {q.stride} }}, "
                     f"{{ {q.padding}, {q.padding} }}, {{ 1, 1 }}, {{ {q.act_min}, {q.act_max} }} }};",
                     f"        const cmsis_nn_per_channel_quant_params qp = {{ (int32_t *)m{i}, (int32_t *)s{i} }};",
                     f"        const cmsis_nn_dims in = {{ 1, {h}, {w}, {c} }}, fl = {{ {o}, {kh}, {kw}, {c} }}, "
                     f"bd = {{ 1, 1, 1, {o} }}, od = {{ 1, {oh}, {ow}, {o} }};",
                     "        if (arm_convolve_wrapper_s8_get_buffer_size(&cp, &in, &fl, &od) > (int32_t)sizeof scratch) return -1;",
                     f"        if (arm_convolve_wrapper_s8(&ctx, &cp, &qp, &in, {src}, &fl, w{i}, &bd, b{i}, &od, {dst}) "
                     f"!= ARM_CMSIS_NN_SUCCESS) return -1;",
                     "    }"]
            continue
        o, n = q.weight.shape
        body += [f"    {{ /* layer {i}: fully connected {n} -> {o} */",
                 f"        const cmsis_nn_fc_params fc = {{ {q.in_offset}, 0, {q.out_offset}, {{ {q.act_min}, {q.act_max} }} }};",
                 f"        const cmsis_nn_per_channel_quant_params qp = {{ (int32_t *)m{i}, (int32_t *)s{i} }};",
                 f"        const cmsis_nn_dims in = {{ 1, 1, 1, {n} }}, fl = {{ {n}, 1, 1, {o} }}, bd = {{ 1, 1, 1, {o} }}, "
                 f"od = {{ 1, 1, 1, {o} }};",
                 f"        if (arm_fully_connected_per_channel_s8(&ctx, &fc, &qp, &in, {src}, &fl, w{i}, &bd, b{i}, &od, {dst}) "
                 f"!= ARM_CMSIS_NN_SUCCESS) return -1;",
                 "    }"]
    last = "act1" if len(layers) % 2 == 1 else "act0"
    k = int(np.prod(layers[-1].out_shape))
    if len(layers[-1].out_shape) == 3 and layers[-1].out_shape[1] * layers[-1].out_shape[2] > 1:
        c, h, w = layers[-1].out_shape  # a readout map: NHWC -> (C, H, W)
        body += [f"    for (int p = 0, j = 0; p < {h * w}; p++) /* the NHWC readout map -> (C, H, W) */",
                 f"        for (int c = 0; c < {c}; c++, j++) logits[c * {h * w} + p] = {last}[j];"]
    else:
        body.append(f"    for (int i = 0; i < {k}; i++) logits[i] = {last}[i];")
    body += ["    int best = 0;",
             f"    for (int i = 1; i < {k}; i++) if (logits[i] > logits[best]) best = i;",
             "    return best;", "}\n"]
    parts.append("\n".join(body))
    return {f"{sym}.c": "".join(parts).encode()}
