"""Step 1 of the conversion: lower a PyTorch ``nn.Sequential`` into float stages (BatchNorm folded into
the preceding Conv2d/Linear, Dropout/Identity dropped, each ReLU attached to its affine layer, a ReLU
after a MaxPool commuted with it, every shape checked)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from runtime.errors import UserError
from runtime.spec import (MAX_KERNEL, MAX_LAYERS, MAX_STRIDE, MAX_WEIGHTS, SpecError, check_shape_limits,
                         infer_out_shape)

from .ann import check_supported, flatten_modules


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
    cap: float | None = None  # a ReLU6 / Hardtanh(0, c): the activation is clipped at c (the scale is capped there)
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
        if typ in ("ReLU", "ReLU6", "Hardtanh"):
            cap = None
            if typ != "ReLU":   # ReLU6 is Hardtanh(0, 6)
                if m.min_val != 0 or not m.max_val > 0:
                    raise UserError(f"{typ}({m.min_val:g}, {m.max_val:g}) at position {pos}: only a ReLU capped at a "
                                    f"positive value (min_val 0) is supported")
                cap = float(m.max_val)
            target = None
            if prev is not None and prev.kind in ("dense", "conv2d") and not prev.relu:
                target = prev
            elif (prev is not None and prev.kind == "maxpool" and len(stages) >= 2
                  and stages[-2].kind in ("dense", "conv2d") and not stages[-2].relu):
                target = stages[-2]  # relu(maxpool(x)) == maxpool(relu(x)) (and so is a clip)
            elif cap is not None:
                raise UserError(f"{typ} at position {pos} must follow a Conv2d or Linear (a cap on spikes or pixels "
                                f"does not fold)")
            if target is not None:
                target.relu, target.cap = True, cap
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
