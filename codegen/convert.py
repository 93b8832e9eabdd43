"""ANN -> one-spike SNN conversion (seed 004, One-Spike SNN) and lowering to the integer specification.

Pipeline (``convert``):

1. **Lower** the PyTorch ``nn.Sequential`` into float stages: fold BatchNorm into the preceding
   Conv2d/Linear, drop Dropout/Identity, attach each ReLU to its affine layer (a ReLU after a MaxPool
   commutes with it), check every shape.
2. **Calibrate**: run the float ANN on calibration images and take, per channel of every firing stage,
   the activation scale ``lambda`` (``max`` or a ``percentile`` of the positive activations).
3. **Normalise**: ``W' = W * lambda_in / lambda_out``, ``b' = b / lambda_out``, so activations live in
   [0, 1] where single-spike phase coding represents ``Q**-f``.
4. **Quantise** for a base Q and T phases: int8 weights per output channel (scale ``s_o``), the decode
   table ``D``, bias ``B = round(b' / s_o * 2**F)``, thresholds ``Theta[o, f] = ceil(theta_f * 2**F / s_o)``
   with the seed's threshold shift ``theta_f = Q**-f (1 + 1/Q) / 2``. The readout layer uses one scale
   for the whole layer so that argmax over its integer logits equals argmax over the real values.
   ``F`` is the largest number of fraction bits (<= ``max_F``) for which the range analysis fits every
   accumulator in ``MAX_ACC_BITS``.
5. **Choose (Q, T)** (base manipulation) unless given. The error target is the share of held-out
   calibration images (``eval_fraction`` of them, not used for the statistics) whose integer-model class
   differs from the ANN's class: at most ``max_disagree`` percent. For each candidate Q the smallest T
   that meets it is found by bisection over ``T_CANDIDATES``; the pair with the smallest T (lowest latency) wins, ties going to the smaller
   disagreement, then the larger Q. If nothing meets it, the most faithful pair tried is used.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import nn
from tqdm import tqdm

from runtime import golden
from runtime.errors import UserError
from runtime.spec import (MAX_ACC_BITS, MAX_T, IntModel, Layer, SpecError, encode_table, infer_out_shape, level,
                          shifted_threshold, validate)

from .ann import check_supported, flatten_modules

Q_CANDIDATES = (2.0, 1.75, 1.5, 1.4, 1.3, 1.25, 1.2, 1.15)
T_CANDIDATES = tuple(range(4, 65, 2))
# The input's own phase code: 8-bit pixels need a finer base than hidden activations. With
# Q_in = 1.02 and T_in = 255 every pixel value >= 2/255 is represented within 1% ((Q-1)/(Q+1)).
INPUT_Q = 1.02
INPUT_T = 255


@dataclass
class Stage:
    """A float stage of the lowered network (float64 numpy arrays)."""

    kind: str  # dense | conv2d | maxpool | avgpool
    in_shape: tuple
    out_shape: tuple
    position: int  # index of the originating module
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    relu: bool = False
    scale: np.ndarray | None = None  # lambda per output channel (firing stages), set by calibration

    @property
    def fires(self) -> bool:
        return self.kind == "avgpool" or (self.kind in ("dense", "conv2d") and self.relu)


@dataclass
class Lowered:
    input_shape: tuple
    stages: list[Stage]


# ------------------------------------------------------------------------------------------ lower

def _sq(v, what: str, pos: int, typ: str) -> int:
    if isinstance(v, tuple):
        if len(set(v)) != 1:
            raise UserError(f"{typ} at position {pos}: non-square {what} {v} is not supported")
        v = v[0]
    return int(v)


def lower(model: nn.Module, input_shape: tuple[int, int, int]) -> Lowered:
    """Turn a sequential PyTorch ANN into float stages, refusing anything the spec cannot express."""
    mods = flatten_modules(model)
    check_supported(mods)
    shape = tuple(int(x) for x in input_shape)
    if len(shape) != 3:
        raise UserError(f"input shape must be (C, H, W), not {shape}")
    stages: list[Stage] = []
    flat = False
    last_affine_pos = None
    for pos, m in enumerate(mods):
        typ = type(m).__name__
        prev = stages[-1] if stages else None
        if typ in ("Dropout", "Identity"):
            continue
        if typ == "Flatten":
            if m.start_dim != 1 or m.end_dim != -1:
                raise UserError(f"Flatten at position {pos}: only start_dim=1, end_dim=-1 is supported")
            shape = (int(np.prod(shape)),)
            flat = True
            continue
        if typ == "Conv2d":
            if len(shape) != 3 or shape[0] != m.in_channels:
                raise UserError(f"shape mismatch: Conv2d at position {pos} expects {m.in_channels} input channels but receives {shape}")
            if m.groups != 1 or _sq(m.dilation, "dilation", pos, typ) != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise UserError(f"Conv2d at position {pos}: groups, dilation, string padding and non-zero padding modes are not supported")
            k = _sq(m.kernel_size, "kernel_size", pos, typ)
            s = _sq(m.stride, "stride", pos, typ)
            p = _sq(m.padding, "padding", pos, typ)
            w = m.weight.detach().double().numpy().copy()
            b = m.bias.detach().double().numpy().copy() if m.bias is not None else np.zeros(m.out_channels)
            try:
                out = infer_out_shape("conv2d", shape, w, k, s, p)
            except SpecError as e:
                raise UserError(f"Conv2d at position {pos}: {e}") from None
            stages.append(Stage("conv2d", shape, out, pos, w, b, k, s, p))
            shape = out
            last_affine_pos = pos
            continue
        if typ == "Linear":
            if len(shape) != 1:
                raise UserError(f"shape mismatch: Linear at position {pos} receives a {shape} tensor; add a Flatten before it")
            if shape[0] != m.in_features:
                raise UserError(f"shape mismatch: Linear at position {pos} expects {m.in_features} inputs but receives {shape[0]}")
            w = m.weight.detach().double().numpy().copy()
            b = m.bias.detach().double().numpy().copy() if m.bias is not None else np.zeros(m.out_features)
            stages.append(Stage("dense", shape, (m.out_features,), pos, w, b))
            shape = (m.out_features,)
            last_affine_pos = pos
            continue
        if typ in ("BatchNorm1d", "BatchNorm2d"):
            if prev is None or prev.kind not in ("dense", "conv2d") or prev.relu or last_affine_pos != pos - 1 - _skipped_before(mods, pos):
                raise UserError(f"{typ} at position {pos} must directly follow a Conv2d or Linear to be folded")
            if m.num_features != prev.out_shape[0]:
                raise UserError(f"shape mismatch: {typ} at position {pos} has {m.num_features} features but receives {prev.out_shape[0]} channels")
            if m.running_mean is None:
                raise UserError(f"{typ} at position {pos}: track_running_stats=False cannot be folded")
            g = m.weight.detach().double().numpy() if m.affine else np.ones(m.num_features)
            beta = m.bias.detach().double().numpy() if m.affine else np.zeros(m.num_features)
            mu = m.running_mean.detach().double().numpy()
            var = m.running_var.detach().double().numpy()
            k = g / np.sqrt(var + m.eps)
            prev.weight = prev.weight * k.reshape((-1,) + (1,) * (prev.weight.ndim - 1))
            prev.bias = (prev.bias - mu) * k + beta
            continue
        if typ == "ReLU":
            if prev is not None and prev.kind in ("dense", "conv2d") and not prev.relu:
                prev.relu = True
            elif (prev is not None and prev.kind == "maxpool" and len(stages) >= 2
                  and stages[-2].kind in ("dense", "conv2d") and not stages[-2].relu):
                stages[-2].relu = True  # relu(maxpool(x)) == maxpool(relu(x))
            # otherwise the input is already non-negative (pixels, spikes, pooled spikes): a no-op
            continue
        if typ in ("MaxPool2d", "AvgPool2d"):
            if len(shape) != 3 or flat:
                raise UserError(f"shape mismatch: {typ} at position {pos} needs a (C, H, W) input, not {shape}")
            if m.ceil_mode:
                raise UserError(f"{typ} at position {pos}: ceil_mode=True is not supported")
            k = _sq(m.kernel_size, "kernel_size", pos, typ)
            s = _sq(m.stride if m.stride is not None else k, "stride", pos, typ)
            p = _sq(m.padding, "padding", pos, typ)
            if typ == "MaxPool2d" and _sq(m.dilation, "dilation", pos, typ) != 1:
                raise UserError(f"MaxPool2d at position {pos}: dilation is not supported")
            if typ == "AvgPool2d" and (not m.count_include_pad or m.divisor_override is not None):
                raise UserError(f"AvgPool2d at position {pos}: only count_include_pad=True without divisor_override is supported")
            if prev is not None and prev.kind in ("dense", "conv2d") and not prev.relu and typ == "AvgPool2d":
                raise UserError(f"AvgPool2d at position {pos} must follow a ReLU: one-spike coding carries only non-negative values")
            kind = "maxpool" if typ == "MaxPool2d" else "avgpool"
            try:
                out = infer_out_shape(kind, shape, None, k, s, p)
            except SpecError as e:
                raise UserError(f"{typ} at position {pos}: {e}") from None
            stages.append(Stage(kind, shape, out, pos, kernel=k, stride=s, padding=p))
            shape = out
            continue
        raise UserError(f"unsupported layer {typ} at position {pos}")  # pragma: no cover (check_supported)
    affines = [s for s in stages if s.kind in ("dense", "conv2d")]
    if not affines:
        raise UserError("the network has no Conv2d or Linear layer")
    last = stages[-1]
    if last.kind not in ("dense", "conv2d"):
        raise UserError(f"the network must end in a Linear or Conv2d readout, not {last.kind}")
    if last.relu:
        raise UserError(f"the readout layer at position {last.position} must not be followed by ReLU: its integer accumulators are the logits")
    for s in stages[:-1]:
        if s.kind in ("dense", "conv2d") and not s.relu:
            raise UserError(f"layer at position {s.position} ({s.kind}) is not followed by ReLU: one-spike coding needs non-negative activations")
        if s.kind == "maxpool" and stages.index(s) > 0:
            pass
    for s in stages:
        for a in (s.weight, s.bias):
            if a is not None and not np.isfinite(a).all():
                raise UserError(f"layer at position {s.position} holds NaN or infinite weights")
    return Lowered(tuple(int(x) for x in input_shape), stages)


def _skipped_before(mods: list, pos: int) -> int:
    """Dropout/Identity modules directly before ``pos`` (they do not break Conv/Linear -> BatchNorm)."""
    n = 0
    j = pos - 1
    while j >= 0 and type(mods[j]).__name__ in ("Dropout", "Identity"):
        n += 1
        j -= 1
    return n


# ------------------------------------------------------------------------------------- float runs

def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def _affine(st: Stage, x: torch.Tensor, w: np.ndarray, b: np.ndarray) -> torch.Tensor:
    if st.kind == "dense":
        return x.reshape(x.shape[0], -1) @ _t(w).T + _t(b)
    return Fn.conv2d(x, _t(w), _t(b), stride=st.stride, padding=st.padding)


def _pool(st: Stage, x: torch.Tensor) -> torch.Tensor:
    if st.kind == "maxpool":
        return Fn.max_pool2d(x, st.kernel, st.stride, st.padding)
    return Fn.avg_pool2d(x, st.kernel, st.stride, st.padding, count_include_pad=True)


def float_forward(low: Lowered, x: torch.Tensor, collect: bool = False):
    """The float ANN (BN folded) on float64 input in [0, 1]; optionally the activations of firing stages."""
    acts = []
    for st in low.stages:
        if st.kind in ("dense", "conv2d"):
            x = _affine(st, x, st.weight, st.bias)
            if st.relu:
                x = torch.relu(x)
        else:
            x = _pool(st, x)
        if collect and st.fires:
            acts.append(x)
    return (x, acts) if collect else x


def _channel_values(a: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (C, N*...)"""
    return a.transpose(0, 1).reshape(a.shape[1], -1)


def calibrate(low: Lowered, images_u8: np.ndarray, norm: str = "percentile", percentile: float = 99.99,
              batch: int = 500) -> None:
    """Set ``scale`` (lambda per output channel) on every firing stage from calibration images."""
    if norm not in ("max", "percentile"):
        raise UserError(f"normalisation must be 'max' or 'percentile', not {norm!r}")
    if not (0 < percentile <= 100):
        raise UserError(f"percentile must be in (0, 100], not {percentile}")
    per_stage: dict[int, list] = {}
    with torch.no_grad():
        for i in range(0, len(images_u8), batch):
            x = _t(images_u8[i:i + batch].astype(np.float64) / 255.0)
            _, acts = float_forward(low, x, collect=True)
            for j, a in enumerate(acts):
                per_stage.setdefault(j, []).append(_channel_values(a))
    firing = [s for s in low.stages if s.fires]
    gen = torch.Generator().manual_seed(0)
    for j, st in enumerate(firing):
        v = torch.cat(per_stage[j], dim=1)  # (C, M)
        if norm == "max":
            lam = v.max(dim=1).values
        else:
            lam = torch.empty(v.shape[0], dtype=torch.float64)
            for c in range(v.shape[0]):
                pos = v[c][v[c] > 0]
                if pos.numel() > 1_000_000:
                    pos = pos[torch.randperm(pos.numel(), generator=gen)[:1_000_000]]
                lam[c] = torch.quantile(pos, percentile / 100.0) if pos.numel() else 0.0
        lam = lam.numpy().astype(np.float64)
        lam[~(lam > 0)] = 1.0  # a channel that never fires: any positive scale works
        st.scale = lam


def _in_scale_per_feature(st: Stage, lam_in: np.ndarray) -> np.ndarray:
    """Expand the previous activation's per-channel lambda to this stage's input features."""
    if st.kind == "dense" and lam_in.shape[0] != st.in_shape[0]:
        reps = st.in_shape[0] // lam_in.shape[0]
        return np.repeat(lam_in, reps)  # (C, H, W) flattened in C-major order
    return lam_in


@dataclass
class Normalised:
    """The float one-spike model: normalised weights, per stage."""

    input_shape: tuple
    stages: list[Stage]
    ratios: list = field(default_factory=list)  # avgpool: lambda_in / lambda_out per channel


def normalise(low: Lowered) -> Normalised:
    out = []
    lam = np.ones(low.input_shape[0])  # pixels / 255 are already in [0, 1]
    for st in low.stages:
        n = Stage(**{k: getattr(st, k) for k in st.__dataclass_fields__})
        if st.kind in ("dense", "conv2d"):
            lin = _in_scale_per_feature(st, lam)
            lout = st.scale if st.fires else np.ones(st.out_shape[0])
            if st.kind == "dense":
                n.weight = st.weight * lin[None, :] / lout[:, None]
            else:
                n.weight = st.weight * lin[None, :, None, None] / lout[:, None, None, None]
            n.bias = st.bias / lout
            if st.fires:
                lam = st.scale
        elif st.kind == "avgpool":
            n.weight = lam / st.scale  # ratio lambda_in / lambda_out per channel
            lam = st.scale
        out.append(n)
    return Normalised(low.input_shape, out)


def _fire_t(a: torch.Tensor, theta: np.ndarray) -> torch.Tensor:
    """First f with a >= theta[f] (theta decreasing) else T, via a search in the reversed table."""
    rev = _t(np.ascontiguousarray(theta[::-1]))
    return len(theta) - torch.searchsorted(rev, a.contiguous(), right=True)


def onespike_float_forward(norm: Normalised, images_u8: np.ndarray, Q: float, T: int, shift: bool = True,
                           input_Q: float = INPUT_Q, input_T: int = INPUT_T) -> torch.Tensor:
    """The closed form of the one-spike network in float64 (no weight quantisation): the logits."""
    lvt = _t(np.concatenate([level(Q, T), [0.0]]))
    theta = shifted_threshold(Q, T, shift)
    lv_in = _t(np.concatenate([level(input_Q, input_T), [0.0]]))
    enc = encode_table(input_Q, input_T, 1.0, shift)
    x = lv_in[_t(enc.astype(np.int64))[_t(images_u8.astype(np.int64))]]
    for st in norm.stages:
        if st.kind in ("dense", "conv2d"):
            a = _affine(st, x, st.weight, st.bias)
            if not st.fires:
                return a.reshape(a.shape[0], -1)
            x = lvt[_fire_t(a, theta)]
        elif st.kind == "maxpool":
            x = _pool(st, x)
        else:
            a = _pool(st, x) * _t(st.weight)[None, :, None, None]
            x = lvt[_fire_t(a, theta)]
    raise AssertionError("unreachable: lower() guarantees a readout")


# ---------------------------------------------------------------------------------------- quantise

def quantise(norm: Normalised, Q: float, T: int, F: int | None = None, max_F: int = 16,
             max_bits: int = MAX_ACC_BITS, shift: bool = True, input_Q: float = INPUT_Q,
             input_T: int = INPUT_T) -> IntModel:
    """Lower the float one-spike model to an :class:`IntModel` (largest F that fits ``max_bits``)."""
    for name, q, t in (("Q", Q, T), ("input Q", input_Q, input_T)):
        if not (isinstance(q, (int, float)) and math.isfinite(q) and 1.0 < q <= 2.0):
            raise UserError(f"{name} must be a number in (1, 2], not {q}")
        if not (isinstance(t, (int, np.integer)) and 1 <= t <= MAX_T):
            raise UserError(f"{'T' if name == 'Q' else 'input T'} must be an integer in 1..{MAX_T}, not {t}")
    candidates = [F] if F is not None else list(range(max_F, -1, -1))
    last_err = None
    for f in candidates:
        model = _quantise_f(norm, float(Q), int(T), f, shift, float(input_Q), int(input_T))
        try:
            validate(model, max_bits)
            return model
        except SpecError as e:
            last_err = e
    where = f"F = {F}" if F is not None else f"any F <= {max_F}"
    raise UserError(f"no valid {max_bits}-bit integer model at {where} for Q={Q:g}, T={T}: {last_err}")


def _quantise_f(norm: Normalised, Q: float, T: int, F: int, shift: bool, input_Q: float, input_T: int) -> IntModel:
    theta = shifted_threshold(Q, T, shift)
    two_f = float(2 ** F)
    layers = []
    for i, st in enumerate(norm.stages):
        readout = i == len(norm.stages) - 1
        name = f"{st.kind}{i}"
        if st.kind in ("dense", "conv2d"):
            w = st.weight.reshape(st.weight.shape[0], -1)
            if readout:
                s = np.full(w.shape[0], np.abs(w).max() / 127.0)
            else:
                s = np.abs(w).max(axis=1) / 127.0
            s[~(s > 0)] = 1.0 / 127.0
            wq = np.clip(np.floor(st.weight / s.reshape((-1,) + (1,) * (st.weight.ndim - 1)) + 0.5), -127, 127).astype(np.int8)
            b = np.floor(st.bias / s * two_f + 0.5).astype(np.int64)
            th = None
            if not readout:
                th = np.ceil(theta[None, :] * two_f / s[:, None]).astype(np.int64)
            layers.append(Layer(st.kind, st.in_shape, st.out_shape, wq, b, th, st.kernel, st.stride, st.padding, readout, name=name))
        elif st.kind == "maxpool":
            layers.append(Layer("maxpool", st.in_shape, st.out_shape, kernel=st.kernel, stride=st.stride, padding=st.padding, name=name))
        else:
            ratio = st.weight  # lambda_in / lambda_out
            th = np.ceil(theta[None, :] * (st.kernel ** 2) * two_f / ratio[:, None]).astype(np.int64)
            layers.append(Layer("avgpool", st.in_shape, st.out_shape, theta=th, kernel=st.kernel, stride=st.stride,
                                padding=st.padding, name=name))
    return IntModel(Q=float(Q), T=int(T), F=int(F), input_shape=tuple(norm.input_shape), decode=_decode(Q, T, F),
                    encode=encode_table(input_Q, input_T, 1.0, shift), layers=layers,
                    input_Q=float(input_Q), input_T=int(input_T), input_decode=_decode(input_Q, input_T, F))


def _decode(Q: float, T: int, F: int) -> np.ndarray:
    """decode_table without its own checks: validate() reports a table with zero entries."""
    d = np.zeros(T + 1, dtype=np.int64)
    d[:T] = np.floor(level(Q, T) * float(2 ** F) + 0.5).astype(np.int64)
    return d


# ------------------------------------------------------------------------------------------ convert

def ann_predict(low: Lowered, images_u8: np.ndarray, batch: int = 1000) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(images_u8), batch):
            out.append(float_forward(low, _t(images_u8[i:i + batch].astype(np.float64) / 255.0)).reshape(
                min(batch, len(images_u8) - i), -1).argmax(1).numpy())
    return np.concatenate(out)


def onespike_predict(norm: Normalised, images_u8: np.ndarray, Q: float, T: int, batch: int = 1000,
                     input_Q: float = INPUT_Q, input_T: int = INPUT_T) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(images_u8), batch):
            out.append(onespike_float_forward(norm, images_u8[i:i + batch], Q, T, input_Q=input_Q,
                                              input_T=input_T).argmax(1).numpy())
    return np.concatenate(out)


@dataclass
class Conversion:
    model: IntModel
    lowered: Lowered
    normalised: Normalised
    search: list  # {"Q", "T", "F", "disagreement_percent"} of every candidate evaluated


def convert(ann: nn.Module, input_shape, calib_images: np.ndarray,
            Q: float | None = None, T: int | None = None, F: int | None = None, norm: str = "percentile",
            percentile: float = 99.99, max_disagree: float = 0.2, eval_fraction: float = 0.5,
            input_Q: float = INPUT_Q, input_T: int = INPUT_T, progress: bool = True) -> Conversion:
    """Convert a trained ANN into an integer one-spike model (see the module docstring)."""
    if Q is not None and not (isinstance(Q, (int, float)) and math.isfinite(Q) and 1.0 < Q <= 2.0):
        raise UserError(f"base Q must be a number in (1, 2], not {Q}")
    if T is not None and not (isinstance(T, (int, np.integer)) and 1 <= T <= MAX_T):
        raise UserError(f"T must be an integer in 1..{MAX_T}, not {T}")
    if not (isinstance(input_Q, (int, float)) and math.isfinite(input_Q) and 1.0 < input_Q <= 2.0):
        raise UserError(f"input Q must be a number in (1, 2], not {input_Q}")
    if not (isinstance(input_T, (int, np.integer)) and 1 <= input_T <= MAX_T):
        raise UserError(f"input T must be an integer in 1..{MAX_T}, not {input_T}")
    qkw = {"F": F, "input_Q": float(input_Q), "input_T": int(input_T)}
    if not (0 <= max_disagree <= 100):
        raise UserError(f"error target must be a percentage in 0..100, not {max_disagree}")
    ann = ann.eval()
    calib_images = golden.check_images(
        IntModel(1.5, 1, 0, tuple(input_shape), np.zeros(2, np.int64), np.zeros(256, np.uint8), []), calib_images)
    if len(calib_images) < 2:
        raise UserError("calibration needs at least 2 images")
    low = lower(ann, tuple(input_shape))
    n_eval = int(len(calib_images) * eval_fraction) if (Q is None or T is None) else 0
    stats_imgs = calib_images[:len(calib_images) - n_eval] if n_eval else calib_images
    calibrate(low, stats_imgs, norm, percentile)
    normd = normalise(low)
    search = []
    if Q is not None and T is not None:
        model = quantise(normd, float(Q), int(T), **qkw)
        met = None
    else:
        ev_x = calib_images[len(calib_images) - n_eval:]
        ev_y = ann_predict(low, ev_x)  # the target is agreement with the ANN's own classes
        qs = [float(Q)] if Q is not None else list(Q_CANDIDATES)
        ts = [int(T)] if T is not None else list(T_CANDIDATES)
        best = None
        bar = tqdm(total=len(qs), desc="search Q, T", disable=not progress, leave=False)
        cache = {}

        def meets(q, t):
            if (q, t) not in cache:
                try:
                    m = quantise(normd, q, t, **qkw)
                except UserError:  # e.g. Q**-(T-1) * 2**F rounds to 0: not representable
                    cache[(q, t)] = (False, -1.0, None)
                    return cache[(q, t)]
                agree = float((golden.run_batched(m, ev_x).classes == ev_y).mean())
                search.append({"Q": q, "T": t, "F": m.F, "disagreement_percent": round(100 * (1 - agree), 4)})
                cache[(q, t)] = (100 * (1 - agree) <= max_disagree, agree, m)
            return cache[(q, t)]

        for q in qs:
            bar.update(1)
            # the smallest T meeting the target, by bisection (disagreement falls as T grows);
            # only T below the best found so far can improve on it
            cand = [t for t in ts if best is None or t <= best[1]]
            if not cand or not meets(q, cand[-1])[0]:
                continue
            lo, hi = 0, len(cand) - 1  # cand[hi] meets the target
            while lo < hi:
                mid = (lo + hi) // 2
                if meets(q, cand[mid])[0]:
                    hi = mid
                else:
                    lo = mid + 1
            t = cand[hi]
            ok, agree, m = meets(q, t)
            key = (t, -agree, -q)
            if best is None or key < best[3]:
                best = (q, t, m, key)
        bar.close()
        met = best is not None
        if best is None:  # nothing met the target: the most faithful configuration tried
            if not search:
                raise UserError("no (Q, T) candidate gives a valid integer model; give --Q, --T or --F")
            top = min(search, key=lambda r: (r["disagreement_percent"], r["T"]))
            model = quantise(normd, top["Q"], top["T"], **qkw)
        else:
            model = best[2]
    model.meta.update({
        "converter": "onespike-codegen 0.1.0", "normalisation": norm,
        "percentile": percentile if norm == "percentile" else None, "calibration_images": int(len(stats_imgs)),
        "threshold_shift": True, "error_target_disagreement_percent": max_disagree, "error_target_met": met,
    })
    return Conversion(model, low, normd, search)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
