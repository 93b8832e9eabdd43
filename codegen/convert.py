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
   differs from the ANN's class: at most ``max_disagree`` percent. The cheapest pair that meets it
   wins: the smallest T (fewest phases: lowest latency), then the lowest disagreement, then the larger
   Q. Each Q is searched over the T it can represent (see :func:`_search`); if nothing meets the
   target, the most faithful pair evaluated is used. Every decision is logged in ``Conversion.search``.
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
from runtime.spec import (MAX_ACC_BITS, MAX_KERNEL, MAX_LAYERS, MAX_STRIDE, MAX_T, MAX_WEIGHTS, IntModel, Layer,
                          SpecError, check_shape_limits, encode_table, infer_out_shape, level, shifted_threshold,
                          validate)

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
    check_shape_limits(shape, "input shape")
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
            _check_window(typ, pos, k, s, p)
            if m.weight.numel() > MAX_WEIGHTS:
                raise UserError(f"Conv2d at position {pos}: {m.weight.numel()} weights exceed the limit of {MAX_WEIGHTS} "
                                f"per layer (runtime.spec.MAX_WEIGHTS)")
            w = m.weight.detach().double().numpy().copy()
            b = m.bias.detach().double().numpy().copy() if m.bias is not None else np.zeros(m.out_channels)
            try:
                out = infer_out_shape("conv2d", shape, w, k, s, p)
            except SpecError as e:
                raise UserError(f"Conv2d at position {pos}: {e}") from None
            check_shape_limits(out, f"Conv2d at position {pos} output")
            stages.append(Stage("conv2d", shape, out, pos, w, b, k, s, p))
            shape = out
            last_affine_pos = pos
            continue
        if typ == "Linear":
            if len(shape) != 1:
                raise UserError(f"shape mismatch: Linear at position {pos} receives a {shape} tensor; add a Flatten before it")
            if shape[0] != m.in_features:
                raise UserError(f"shape mismatch: Linear at position {pos} expects {m.in_features} inputs but receives {shape[0]}")
            if m.weight.numel() > MAX_WEIGHTS:
                raise UserError(f"Linear at position {pos}: {m.weight.numel()} weights exceed the limit of {MAX_WEIGHTS} "
                                f"per layer (runtime.spec.MAX_WEIGHTS)")
            check_shape_limits((m.out_features,), f"Linear at position {pos} output")
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
            _check_window(typ, pos, k, s, p)
            try:
                out = infer_out_shape(kind, shape, None, k, s, p)
            except SpecError as e:
                raise UserError(f"{typ} at position {pos}: {e}") from None
            check_shape_limits(out, f"{typ} at position {pos} output")
            stages.append(Stage(kind, shape, out, pos, kernel=k, stride=s, padding=p))
            shape = out
            continue
        raise UserError(f"unsupported layer {typ} at position {pos}")  # pragma: no cover (check_supported)
    affines = [s for s in stages if s.kind in ("dense", "conv2d")]
    if not affines:
        raise UserError("the network has no Conv2d or Linear layer")
    if len(stages) > MAX_LAYERS:
        raise UserError(f"the network has {len(stages)} Conv2d/Linear/pooling layers, more than the limit of {MAX_LAYERS} "
                        f"(runtime.spec.MAX_LAYERS)")
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


def _check_window(typ: str, pos: int, k: int, s: int, p: int) -> None:
    """The spec's limits on a window (checked here, before calibration runs the float network)."""
    if not 1 <= k <= MAX_KERNEL:
        raise UserError(f"{typ} at position {pos}: kernel size {k} is outside 1..{MAX_KERNEL} (runtime.spec.MAX_KERNEL)")
    if not 1 <= s <= MAX_STRIDE:
        raise UserError(f"{typ} at position {pos}: stride {s} is outside 1..{MAX_STRIDE} (runtime.spec.MAX_STRIDE)")
    if typ == "Conv2d" and not 0 <= p <= k - 1:
        raise UserError(f"Conv2d at position {pos}: padding {p} is outside 0..{k - 1} (at most kernel - 1, so that every "
                        f"window overlaps the input)")
    if typ != "Conv2d" and not 0 <= 2 * p <= k:
        raise UserError(f"{typ} at position {pos}: padding {p} is more than half the kernel size {k}")


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
              batch: int = 500, progress: bool = False) -> None:
    """Set ``scale`` (lambda per output channel) on every firing stage from calibration images.

    ``progress`` shows one bar (stderr): a step per batch of images, then one per firing stage.
    """
    if norm not in ("max", "percentile"):
        raise UserError(f"normalisation must be 'max' or 'percentile', not {norm!r}")
    if not (isinstance(percentile, (int, float)) and not isinstance(percentile, bool) and 0 < percentile <= 100):
        raise UserError(f"percentile must be a number in (0, 100], not {percentile}")
    # keep one batch's activations (float64) within about 256 MiB, whatever the network's size
    neurons = sum(int(np.prod(st.out_shape)) for st in low.stages)
    batch = max(1, min(int(batch), (1 << 25) // max(1, neurons)))
    firing = [s for s in low.stages if s.fires]
    n_batches = -(-len(images_u8) // batch)
    bar = tqdm(total=n_batches + len(firing), desc="calibrate", unit="step", disable=not progress, leave=False)
    per_stage: dict[int, list] = {}
    with torch.no_grad():
        for i in range(0, len(images_u8), batch):
            x = _t(images_u8[i:i + batch].astype(np.float64) / 255.0)
            _, acts = float_forward(low, x, collect=True)
            for j, a in enumerate(acts):
                per_stage.setdefault(j, []).append(_channel_values(a))
            bar.update(1)
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
        per_stage[j] = None  # free the activations of this stage
        bar.update(1)
    bar.close()


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
    rev = _t(theta[::-1].copy())  # a copy: a 1-element reversed view keeps its negative stride
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

def fraction_bits_needed(Q: float, T: int) -> int | None:
    """The smallest F in 0..30 whose decode table for (Q, T) is strictly positive, or None.

    ``D[T-1] = round_half_up(Q**-(T-1) * 2**F)`` must be at least 1 (the table is non-increasing
    for any F, since rounding keeps the order). It is the same float computation as ``_decode``.
    """
    last = float(level(Q, T)[-1])
    for f in range(31):
        if math.floor(last * float(2 ** f) + 0.5) >= 1:
            return f
    return None


def _code_bound(Q: float, T: int, input_Q: float, input_T: int, F: int | None, max_F: int) -> int:
    """The smallest usable F for both codes; a UserError when the tables need more than allowed."""
    top = F if F is not None else max_F
    for what, q, t in (("decode", Q, T), ("input decode", input_Q, input_T)):
        need = fraction_bits_needed(q, t)
        if need is None or need > top:
            at = f"F = {F}" if F is not None else f"F <= {max_F}"
            needs = f"F >= {need} fraction bits" if need is not None else "more than 30 fraction bits"
            code = f"Q={q:g}, T={t}" if what == "decode" else f"input Q={q:g}, input T={t}"
            raise UserError(f"{code} is not representable at {at}: its {what} table needs {needs} "
                            f"({q:g}**-{t - 1} * 2**F must round to at least 1)")
    return max(fraction_bits_needed(Q, T), fraction_bits_needed(input_Q, input_T))


def _check_code_args(Q, T, input_Q, input_T, F) -> None:
    for name, q, t in (("Q", Q, T), ("input Q", input_Q, input_T)):
        if not (isinstance(q, (int, float)) and not isinstance(q, bool) and math.isfinite(q) and 1.0 < q <= 2.0):
            raise UserError(f"{name} must be a number in (1, 2], not {q}")
        if not (isinstance(t, (int, np.integer)) and not isinstance(t, bool) and 1 <= t <= MAX_T):
            raise UserError(f"{'T' if name == 'Q' else 'input T'} must be an integer in 1..{MAX_T}, not {t}")
    if F is not None and not (isinstance(F, (int, np.integer)) and not isinstance(F, bool) and 0 <= F <= 30):
        raise UserError(f"F must be an integer in 0..30, not {F}")


def quantise(norm: Normalised, Q: float, T: int, F: int | None = None, max_F: int = 16,
             max_bits: int = MAX_ACC_BITS, shift: bool = True, input_Q: float = INPUT_Q,
             input_T: int = INPUT_T) -> IntModel:
    """Lower the float one-spike model to an :class:`IntModel` (largest F that fits ``max_bits``).

    F must be large enough for both decode tables to stay positive (checked first, without building
    anything) and small enough for every accumulator to fit ``max_bits``; the largest such F
    ``<= max_F`` is used, or the given ``F``.
    """
    _check_code_args(Q, T, input_Q, input_T, F)
    lo = _code_bound(float(Q), int(T), float(input_Q), int(input_T), F, max_F)
    candidates = [F] if F is not None else list(range(max_F, lo - 1, -1))
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

def ann_predict(low: Lowered, images_u8: np.ndarray, batch: int = 1000, progress: bool = False,
                desc: str = "ANN float") -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(images_u8), batch), desc=desc, unit="batch", disable=not progress, leave=False):
            out.append(float_forward(low, _t(images_u8[i:i + batch].astype(np.float64) / 255.0)).reshape(
                min(batch, len(images_u8) - i), -1).argmax(1).numpy())
    return np.concatenate(out)


def onespike_predict(norm: Normalised, images_u8: np.ndarray, Q: float, T: int, batch: int = 1000,
                     input_Q: float = INPUT_Q, input_T: int = INPUT_T, progress: bool = False,
                     desc: str = "one-spike float") -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(images_u8), batch), desc=desc, unit="batch", disable=not progress, leave=False):
            out.append(onespike_float_forward(norm, images_u8[i:i + batch], Q, T, input_Q=input_Q,
                                              input_T=input_T).argmax(1).numpy())
    return np.concatenate(out)


@dataclass
class Conversion:
    model: IntModel
    lowered: Lowered
    normalised: Normalised
    search: list  # the search log, in order: one record per (Q, T) decided on (see SEARCH_RESULTS)


# ``result`` of a search record: "meets" / "misses" the error target (evaluated on the held-out images),
# or "not representable" (no valid integer model: no (Q, T) from its T on is evaluated at that Q).
SEARCH_RESULTS = ("meets", "misses", "not representable")
EVAL_CHUNK = 500  # held-out images per golden run; a miss is decided as soon as too many disagree


def _record(q, t, f=None, disagreement=None, result="meets", reason=None) -> dict:
    return {"Q": float(q), "T": int(t), "F": None if f is None else int(f), "disagreement_percent": disagreement,
            "result": result, "reason": reason}


def check_options(Q=None, T=None, F=None, norm="percentile", percentile=99.99, max_disagree=0.2,
                  eval_fraction=0.5, input_Q=INPUT_Q, input_T=INPUT_T, max_F: int = 16) -> None:
    """Refuse bad options of :func:`convert` before any work: ranges, types, and the decode tables.

    Only the weight-independent part of "representable" is checked here: with Q and T both given,
    both decode tables must be positive at F (or at some F <= ``max_F``); with a search, at least
    one candidate (Q, T) must be.
    """
    def real(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def integer(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if Q is not None and not (real(Q) and 1.0 < Q <= 2.0):
        raise UserError(f"base Q must be a number in (1, 2], not {Q}")
    if T is not None and not (integer(T) and 1 <= T <= MAX_T):
        raise UserError(f"T must be an integer in 1..{MAX_T}, not {T}")
    if F is not None and not (integer(F) and 0 <= F <= 30):
        raise UserError(f"F must be an integer in 0..30, not {F}")
    if not (real(input_Q) and 1.0 < input_Q <= 2.0):
        raise UserError(f"input Q must be a number in (1, 2], not {input_Q}")
    if not (integer(input_T) and 1 <= input_T <= MAX_T):
        raise UserError(f"input T must be an integer in 1..{MAX_T}, not {input_T}")
    if norm not in ("max", "percentile"):
        raise UserError(f"normalisation must be 'max' or 'percentile', not {norm!r}")
    if not (real(percentile) and 0 < percentile <= 100):
        raise UserError(f"percentile must be a number in (0, 100], not {percentile}")
    if not (real(max_disagree) and 0 <= max_disagree <= 100):
        raise UserError(f"error target must be a percentage in 0..100, not {max_disagree}")
    if not (real(eval_fraction) and 0 < eval_fraction < 1):
        raise UserError(f"eval_fraction must be a number in (0, 1), not {eval_fraction}")
    qs = [float(Q)] if Q is not None else list(Q_CANDIDATES)
    ts = [int(T)] if T is not None else list(range(1, max(T_CANDIDATES) + 1))
    errs = []
    for q in qs:
        for t in ts:
            try:
                _code_bound(q, t, float(input_Q), int(input_T), F, max_F)
                return
            except UserError as e:
                errs.append(e)
    if Q is not None and T is not None:
        raise errs[0]
    # the nearest miss: T = 1 at the given Q, or the given T at the smallest candidate Q
    raise UserError(f"no candidate (Q, T) is representable: {errs[0] if T is None else errs[-1]}; "
                    f"give another --Q, --T or --F")


def convert(ann: nn.Module, input_shape, calib_images: np.ndarray,
            Q: float | None = None, T: int | None = None, F: int | None = None, norm: str = "percentile",
            percentile: float = 99.99, max_disagree: float = 0.2, eval_fraction: float = 0.5,
            input_Q: float = INPUT_Q, input_T: int = INPUT_T, progress: bool = True) -> Conversion:
    """Convert a trained ANN into an integer one-spike model (see the module docstring)."""
    check_options(Q, T, F, norm, percentile, max_disagree, eval_fraction, input_Q, input_T)
    qkw = {"F": F, "input_Q": float(input_Q), "input_T": int(input_T)}
    ann = ann.eval()
    calib_images = golden.check_images(
        IntModel(1.5, 1, 0, tuple(input_shape), np.zeros(2, np.int64), np.zeros(256, np.uint8), []), calib_images)
    if len(calib_images) < 2:
        raise UserError("calibration needs at least 2 images")
    low = lower(ann, tuple(input_shape))
    searching = Q is None or T is None
    n_eval = max(1, int(len(calib_images) * eval_fraction)) if searching else 0
    stats_imgs = calib_images[:len(calib_images) - n_eval] if n_eval else calib_images
    calibrate(low, stats_imgs, norm, percentile, progress=progress)
    normd = normalise(low)
    search: list[dict] = []
    if not searching:
        model = quantise(normd, float(Q), int(T), **qkw)
        met = None
    else:
        model, met = _search(normd, low, calib_images[len(calib_images) - n_eval:], Q, T, qkw, max_disagree,
                             search, progress)
    model.meta.update({
        "converter": "onespike-codegen 0.1.0", "normalisation": norm,
        "percentile": percentile if norm == "percentile" else None, "calibration_images": int(len(stats_imgs)),
        "threshold_shift": True, "error_target_disagreement_percent": max_disagree, "error_target_met": met,
    })
    return Conversion(model, low, normd, search)


def _search(normd: Normalised, low: Lowered, ev_x: np.ndarray, Q, T, qkw: dict, max_disagree: float,
            search: list, progress: bool) -> tuple[IntModel, bool]:
    """The (Q, T) search of step 5 (docs/conversion.md); appends every decision to ``search``.

    1. For each Q, the T it can represent: the largest integer T <= max(T_CANDIDATES) with a valid
       integer model (representability falls with T: the last decode entry shrinks, the accumulator
       widths do not depend on T), found by bisection; its candidates are the T_CANDIDATES below it
       plus that largest T itself.
    2. Each Q is evaluated at its largest T. If none meets the target there, the target is taken as
       out of reach (more phases are assumed not to hurt) and the most faithful of these is used.
    3. Otherwise every Q is evaluated at T ascending (each over its own candidates); the first T at
       which any Q meets the target wins (the lowest disagreement among those, then the larger Q).
       No monotonicity is assumed here: no pair with a smaller T meets the target. Step 2
       guarantees a winner by the smallest largest-T of a Q that met it.
    A miss is decided as soon as more held-out images disagree than the target allows.
    """
    ev_y = ann_predict(low, ev_x)  # the target is agreement with the ANN's own classes
    n = len(ev_x)
    qs = [float(Q)] if Q is not None else list(Q_CANDIDATES)
    ts = [int(T)] if T is not None else list(T_CANDIDATES)
    errors: dict = {}  # (q, t) -> None (representable) or the UserError; models are rebuilt when needed,
    results: dict = {}  # (q, t) -> record                    so that at most one is held at a time
    bar = tqdm(desc="search Q, T", unit="pair", disable=not progress, leave=False)

    def ok(q, t):
        if (q, t) not in errors:
            try:
                quantise(normd, q, t, **qkw)
                errors[(q, t)] = None
            except UserError as e:
                errors[(q, t)] = e
        return errors[(q, t)] is None

    def evaluate(q, t, early: bool) -> dict:
        if (q, t) in results:
            return results[(q, t)]
        m = quantise(normd, q, t, **qkw)
        bar.set_postfix_str(f"Q={q:g} T={t}")
        d = done = 0
        for i in range(0, n, EVAL_CHUNK):
            cls = golden.run(m, ev_x[i:i + EVAL_CHUNK], keep_phases=False).classes
            d += int((cls != ev_y[i:i + EVAL_CHUNK]).sum())
            done = min(n, i + EVAL_CHUNK)
            if early and 100 * d > max_disagree * n:
                break
        meets = 100 * d <= max_disagree * n
        if done == n:
            rec = _record(q, t, m.F, round(100 * d / n, 4), "meets" if meets else "misses")
        else:
            rec = _record(q, t, m.F, None, "misses",
                          f"stopped after {done} of {n} held-out images: {d} disagree with the ANN, more than the "
                          f"{math.floor(max_disagree * n / 100 + 1e-9)} the target allows")
        results[(q, t)] = rec
        search.append(rec)
        bar.update(1)
        return rec

    # 1. what each Q can represent
    cands: dict = {}
    for q in qs:
        if T is not None:
            good, bad = ([T], None) if ok(q, T) else ([], T)
        else:
            top = max(ts)
            if ok(q, top):
                t_rep, bad = top, None
            elif not ok(q, 1):
                t_rep, bad = 0, 1
            else:
                lo, hi = 1, top  # ok(lo), not ok(hi)
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if ok(q, mid) else (lo, mid)
                t_rep, bad = lo, hi
            good = sorted({t for t in ts if t <= t_rep} | ({t_rep} if t_rep else set()))
        if bad is not None:
            err = errors[(q, bad)]
            if T is not None:
                why = str(err)
            elif bad > 1:
                why = f"{err}; nor is any larger T (the largest representable is T = {bad - 1})"
            else:
                why = f"{err}; nor is any larger T"
            search.append(_record(q, bad, result="not representable", reason=why))
        if good:
            cands[q] = good
    if not cands:
        bar.close()
        first = next(r["reason"] for r in search if r["result"] == "not representable")
        raise UserError(f"no (Q, T) candidate gives a valid integer model ({first}); give another --Q, --T or --F")
    # 2. each Q at its largest T
    tops = [evaluate(q, good[-1], early=False) for q, good in cands.items()]
    if not any(r["result"] == "meets" for r in tops):
        bar.close()
        for r, good in zip(tops, cands.values()):
            if len(good) > 1:
                r["reason"] = "no Q meets the target at its largest representable T, so no smaller T is tried"
        # the most faithful pair evaluated (every Q at its largest T, in full)
        top = min(tops, key=lambda r: (r["disagreement_percent"], r["T"], -r["Q"]))
        return quantise(normd, top["Q"], top["T"], **qkw), False
    # 3. T ascending, every Q
    for t in sorted({t for good in cands.values() for t in good}):
        met = [evaluate(q, t, early=True) for q, good in cands.items() if t in good]
        met = [r for r in met if r["result"] == "meets"]
        if met:
            best = min(met, key=lambda r: (r["disagreement_percent"], -r["Q"]))
            break
    bar.close()
    return quantise(normd, best["Q"], best["T"], **qkw), True


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
