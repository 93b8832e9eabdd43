"""The one-spike integer specification: the single definition that codegen, runtime and rtl share.

Everything a backend needs to reproduce the golden model bit for bit is defined here: the value
codes, the tables and how they are built, the per-layer integer operations, the range analysis that
fixes accumulator widths, and the ``model.pt`` schema. ``docs/spec.md`` is the prose version.

Value codes
    Between layers an activation is a spike phase ``f`` in ``0..T-1`` or "no spike", coded as ``T``
    (so phase arrays are uint8 and ``T <= 255``). A spike at phase ``f`` stands for ``Q**-f`` (times the
    layer scale that conversion folds into the weights). The input image has a phase code of its own,
    ``(Q_in, T_in)``, encoded the same way: 8-bit pixels need a finer base than hidden activations
    (base manipulation per tensor), so a 256-entry table maps each pixel to a phase in ``0..T_in-1``
    or to ``T_in`` (no spike). Every firing layer emits the hidden code ``(Q, T)``; a max-pool keeps
    the code of its input. :meth:`IntModel.input_codes` says which code each layer reads.

Tables (all integers, stored in model.pt; backends read them, they never recompute them)
    ``D[f] = round_half_up(Q**-f * 2**F)`` for ``f < T`` and ``D[T] = 0`` (decode table, length T+1).
    ``D_in[f] = round_half_up(Q_in**-f * 2**F)``, ``D_in[T_in] = 0`` (decode table of the input code).
    ``E[p]`` for ``p`` in 0..255: the input phase of pixel ``p`` (input-encoding table).
    ``Theta[c, f]`` per output channel ``c`` of a firing layer: non-increasing in ``f``.

Layers (``acc`` is an exact integer; no rounding anywhere, so any exact summation order is valid)
    dense / conv2d:  ``acc[o] = B[o] + sum_j W[o, j] * D[f_j]``  (conv: zero padding contributes 0)
    avgpool:         ``acc[c] = sum_{j in window} D[f_j]``      (padding contributes 0)
                     (D is the decode table of the layer's input code: ``D_in`` before the first
                     firing layer, ``D`` after it)
    fire:            ``f_out = min{f : acc >= Theta[c, f]}``, or ``T`` (no spike) if there is none.
                     Because Theta is non-increasing this equals ``#{f : Theta[c, f] > acc}``.
    maxpool:         ``f_out = min_{j in window} f_j`` (earliest spike; padding is "no spike").
    readout:         the last layer is dense/conv2d without fire; its ``acc`` are the output logits;
                     the class is ``argmax`` with ties going to the lowest index.
    Inputs of a dense layer are the previous activation flattened in (C, H, W) order.
    Padding: conv2d ``0 <= p <= kernel - 1`` (every window overlaps the input); max- and avg-pool
    ``2 * p <= kernel``.

Limits
    ``MAX_SIDE``, ``MAX_CHANNELS``, ``MAX_NEURONS`` bound every activation, ``MAX_KERNEL``,
    ``MAX_STRIDE``, ``MAX_LAYERS`` and ``MAX_WEIGHTS`` the layers; :func:`check_limits` refuses a model
    beyond them from its declared shapes alone, before anything is allocated for it.

Widths
    :func:`analyse_ranges` bounds every accumulator (and every threshold compared with it) by interval
    arithmetic over all possible inputs; ``acc_bits`` is the signed width that holds that bound. A model
    whose bound exceeds ``MAX_ACC_BITS`` is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import UserError

SCHEMA_FORMAT = "onespike-snn"
SCHEMA_VERSION = 2  # 2: "task" and "head" (detectors); version 1 files are classifiers
READABLE_SCHEMA_VERSIONS = (1, 2)
MAX_T = 255  # phases are uint8; code T means "no spike"
MAX_ACC_BITS = 32  # widest accumulator a backend must support (int32 on an MCU)
LAYER_KINDS = ("dense", "conv2d", "maxpool", "avgpool")
# Size limits: every backend supports a model within them, and they are checked before any
# backend allocates anything for a model (a small file can declare a huge shape).
MAX_SIDE = 1024  # H and W of any activation (the input included)
MAX_CHANNELS = 1024  # C of any activation, outputs of a dense layer
MAX_NEURONS = 1 << 20  # C*H*W of any activation
MAX_KERNEL = 32  # conv2d / pooling window side
MAX_STRIDE = 32
MAX_LAYERS = 64
MAX_WEIGHTS = 1 << 24  # int8 weights of one layer


class SpecError(UserError):
    """A model that violates the integer specification."""


# --------------------------------------------------------------------------------------- tables

def round_half_up(x: np.ndarray | float) -> np.ndarray:
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def level(Q: float, T: int) -> np.ndarray:
    """The real values ``Q**-f`` for f = 0..T-1."""
    return np.power(float(Q), -np.arange(T, dtype=np.float64))


def shifted_threshold(Q: float, T: int, shift: bool = True) -> np.ndarray:
    """Real fire thresholds ``theta_f`` of the seed (One-Spike SNN).

    With the threshold shift, ``theta_f = Q**-f * (1 + 1/Q) / 2``: the midpoint between levels f and
    f+1, so a value rounds to the nearest level (saturating at level 0, flushed to zero below
    ``theta_{T-1}``). Without it, ``theta_f = Q**-f`` (floor to level).
    """
    lv = level(Q, T)
    return lv * (1.0 + 1.0 / Q) / 2.0 if shift else lv


def decode_table(Q: float, T: int, F: int) -> np.ndarray:
    """``D[f] = round_half_up(Q**-f * 2**F)``, ``D[T] = 0``; int64 of length T+1."""
    check_qtf(Q, T, F)
    d = np.zeros(T + 1, dtype=np.int64)
    d[:T] = round_half_up(level(Q, T) * float(2 ** F))
    return d


def encode_table(Q: float, T: int, pixel_scale: float = 1.0, shift: bool = True) -> np.ndarray:
    """Input encoding ``E[p]``: the phase of pixel value ``a = p / 255 / pixel_scale`` (or T).

    ``E[p] = min{f : a >= theta_f}``; pixels below ``theta_{T-1}`` (always pixel 0) do not spike.
    """
    a = np.arange(256, dtype=np.float64) / 255.0 / float(pixel_scale)
    return fire_float(a, shifted_threshold(Q, T, shift)).astype(np.uint8)


def fire_float(a: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """First f with ``a >= theta[f]`` (theta non-increasing), else len(theta); float version."""
    return (np.asarray(a)[..., None] < np.asarray(theta)).sum(-1)


def fire_int(acc: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """The integer fire rule: ``#{f : theta[f] > acc}`` == first f with ``acc >= theta[f]`` (or T).

    ``acc`` has shape (..., C) and ``theta`` shape (C, T).
    """
    return (np.asarray(theta)[None, ...] > np.asarray(acc)[..., None]).sum(-1)


def check_qtf(Q: float, T: int, F: int) -> None:
    if not (isinstance(Q, (int, float)) and math.isfinite(Q) and 1.0 < Q <= 2.0):
        raise SpecError(f"base Q must be a number in (1, 2], not {Q!r}")
    if not (isinstance(T, (int, np.integer)) and 1 <= T <= MAX_T):
        raise SpecError(f"T must be an integer in 1..{MAX_T}, not {T!r}")
    if not (isinstance(F, (int, np.integer)) and 0 <= F <= 30):
        raise SpecError(f"fraction bits F must be an integer in 0..30, not {F!r}")


# --------------------------------------------------------------------------------------- model

@dataclass
class Layer:
    """One layer of an integer one-spike model (plain numpy arrays, see the module docstring)."""

    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: np.ndarray | None = None  # int8: dense (O, I); conv2d (O, C, K, K)
    bias: np.ndarray | None = None  # int64 (O,), in accumulator units
    theta: np.ndarray | None = None  # int64 (O or C, T); None for the readout and maxpool
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    readout: bool = False
    acc_bits: int = 0  # filled by analyse_ranges
    name: str = ""

    @property
    def fires(self) -> bool:
        return self.kind in ("dense", "conv2d", "avgpool") and not self.readout


@dataclass
class IntModel:
    """An integer one-spike model: what ``model.pt`` holds, as numpy arrays."""

    Q: float
    T: int
    F: int
    input_shape: tuple[int, int, int]
    decode: np.ndarray  # int64 (T+1,)
    encode: np.ndarray  # uint8 (256,), phases of the input code
    layers: list[Layer]
    meta: dict = field(default_factory=dict)
    input_Q: float = 0.0  # 0 means: the same code as the hidden layers
    input_T: int = 0
    input_decode: np.ndarray | None = None  # int64 (input_T+1,)
    task: str = "classify"  # or "detect": the readout is a detection map decoded with ``head``
    head: "DetectHead | None" = None

    def __post_init__(self):
        if not self.input_T:
            self.input_Q, self.input_T = self.Q, self.T
            self.input_decode = self.decode

    def input_codes(self) -> list[bool]:
        """For each layer, True when it reads the input code (no firing layer precedes it)."""
        out, seen_fire = [], False
        for l in self.layers:
            out.append(not seen_fire)
            seen_fire = seen_fire or l.fires
        return out

    def code_of_layer_input(self, i: int) -> tuple[np.ndarray, int]:
        """(decode table, no-spike code) of the activation layer ``i`` reads."""
        return (self.input_decode, self.input_T) if self.input_codes()[i] else (self.decode, self.T)

    @property
    def num_classes(self) -> int:
        return int(np.prod(self.layers[-1].out_shape))

    def neuron_counts(self) -> list[int]:
        """Neurons that can spike: the input, then every firing layer's outputs (readout excluded)."""
        return [int(np.prod(self.input_shape))] + [int(np.prod(l.out_shape)) for l in self.layers if l.fires]


def conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def infer_out_shape(kind: str, in_shape: tuple[int, ...], weight: np.ndarray | None, k: int, s: int, p: int) -> tuple[int, ...]:
    if kind == "dense":
        n_in = int(np.prod(in_shape))
        if weight.ndim != 2 or weight.shape[1] != n_in:
            raise SpecError(f"shape mismatch: dense weight {tuple(weight.shape)} does not take {n_in} inputs {tuple(in_shape)}")
        return (int(weight.shape[0]),)
    if len(in_shape) != 3:
        raise SpecError(f"shape mismatch: {kind} needs a (C, H, W) input, not {tuple(in_shape)}")
    c, h, w = in_shape
    if kind == "conv2d":
        if weight.ndim != 4 or weight.shape[1] != c or weight.shape[2] != weight.shape[3]:
            raise SpecError(f"shape mismatch: conv2d weight {tuple(weight.shape)} does not take input {tuple(in_shape)}")
        k = int(weight.shape[2])
        c = int(weight.shape[0])
    oh, ow = conv_out(h, k, s, p), conv_out(w, k, s, p)
    if oh < 1 or ow < 1:
        raise SpecError(f"shape mismatch: {kind} kernel {k} stride {s} padding {p} leaves no output from {tuple(in_shape)}")
    return (c, oh, ow)


def bits_signed(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding every integer in [lo, hi]."""
    b = 1
    while not (-(1 << (b - 1)) <= lo and hi <= (1 << (b - 1)) - 1):
        b += 1
    return b


def layer_range(layer: Layer, decode: np.ndarray) -> tuple[int, int]:
    """``decode``: the decode table of the layer's input code."""
    """Exact bounds of ``acc`` over all inputs (and of the thresholds compared with it)."""
    dmax = int(decode.max())
    dmin = int(decode.min())  # 0: "no spike"
    if layer.kind in ("dense", "conv2d"):
        w = layer.weight.astype(np.int64).reshape(layer.weight.shape[0], -1)
        pos = np.where(w > 0, w, 0).sum(1)
        neg = np.where(w < 0, w, 0).sum(1)
        b = layer.bias.astype(np.int64)
        hi = b + pos * dmax + neg * dmin
        lo = b + neg * dmax + pos * dmin
        lo, hi = int(lo.min()), int(hi.max())
    elif layer.kind == "avgpool":
        lo, hi = 0, layer.kernel * layer.kernel * dmax
    else:
        return 0, 0
    if layer.theta is not None:
        lo = min(lo, int(layer.theta.min()))
        hi = max(hi, int(layer.theta.max()))
    return lo, hi


def analyse_ranges(model: IntModel, max_bits: int = MAX_ACC_BITS) -> list[int]:
    """Set and return ``acc_bits`` for every layer; refuse a model that needs more than ``max_bits``."""
    out = []
    for i, layer in enumerate(model.layers):
        lo, hi = layer_range(layer, model.code_of_layer_input(i)[0])
        # at least 2 bits (a sign and a value bit): a layer whose range is 0..0 (all-zero weights and
        # bias) would need 1, which no register file or HDL backend should have to special-case
        bits = max(2, bits_signed(lo, hi)) if layer.kind != "maxpool" else 0
        if bits > max_bits:
            raise SpecError(
                f"layer {i} ({layer.kind}) needs a {bits}-bit accumulator (range {lo}..{hi}); "
                f"the supported width is {max_bits} bits: lower F or the weight range")
        layer.acc_bits = bits
        out.append(bits)
    return out


def check_shape_limits(shape, what: str) -> None:
    """Refuse an activation shape beyond the size limits (a (C, H, W) or a flat (N,) shape)."""
    shape = tuple(int(x) for x in shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise SpecError(f"{what}: shape must be (C, H, W) or (N,) of positive sizes, not {shape}")
    if len(shape) == 3:
        c, h, w = shape
        if c > MAX_CHANNELS:
            raise SpecError(f"{what}: {c} channels exceed the limit of {MAX_CHANNELS} (runtime.spec.MAX_CHANNELS)")
        if max(h, w) > MAX_SIDE:
            raise SpecError(f"{what}: {h}x{w} exceeds the limit of {MAX_SIDE} per side (runtime.spec.MAX_SIDE)")
    n = int(np.prod(shape, dtype=object))
    if n > MAX_NEURONS:
        raise SpecError(f"{what}: {shape} holds {n} neurons, more than the limit of {MAX_NEURONS} (runtime.spec.MAX_NEURONS)")


def check_limits(model: IntModel) -> None:
    """The size limits, from the declared shapes and parameters only (cheap; nothing is allocated)."""
    check_shape_limits(model.input_shape, "input")
    if len(model.layers) > MAX_LAYERS:
        raise SpecError(f"model has {len(model.layers)} layers, more than the limit of {MAX_LAYERS} (runtime.spec.MAX_LAYERS)")
    for i, layer in enumerate(model.layers):
        where = f"layer {i} ({layer.kind})"
        check_shape_limits(layer.in_shape, f"{where} input")
        check_shape_limits(layer.out_shape, f"{where} output")
        if layer.kind != "dense":
            for nm, lim in (("kernel", MAX_KERNEL), ("stride", MAX_STRIDE)):
                v = getattr(layer, nm)
                if not 1 <= v <= lim:
                    raise SpecError(f"{where}: {nm} must be an integer in 1..{lim}, not {v}")
        if layer.weight is not None and layer.weight.size > MAX_WEIGHTS:
            raise SpecError(f"{where}: {layer.weight.size} weights exceed the limit of {MAX_WEIGHTS} per layer "
                            f"(runtime.spec.MAX_WEIGHTS)")


def validate(model: IntModel, max_bits: int = MAX_ACC_BITS) -> None:
    """Check every invariant of the specification; raises :class:`SpecError` naming the first problem."""
    check_limits(model)
    check_qtf(model.Q, model.T, model.F)
    check_qtf(model.input_Q, model.input_T, model.F)
    T = model.T
    for what, d, t in (("decode", model.decode, T), ("input decode", model.input_decode, model.input_T)):
        if d is None or d.shape != (t + 1,) or d[t] != 0 or (d[:t] <= 0).any() or (np.diff(d[:t]) > 0).any():
            raise SpecError(f"{what} table must hold {t + 1} entries, positive and non-increasing, ending in 0 "
                            f"(F={model.F} fraction bits are too few for this base and T)")
    e = model.encode
    if e.shape != (256,) or e.dtype != np.uint8 or (e > model.input_T).any():
        raise SpecError(f"input-encoding table must hold 256 uint8 phases in 0..{model.input_T}")
    if len(model.input_shape) != 3 or min(model.input_shape) < 1:
        raise SpecError(f"input shape must be (C, H, W), not {model.input_shape}")
    if not model.layers:
        raise SpecError("model has no layers")
    shape = tuple(model.input_shape)
    for i, layer in enumerate(model.layers):
        where = f"layer {i} ({layer.kind})"
        if layer.kind not in LAYER_KINDS:
            raise SpecError(f"{where}: unknown layer kind; known: {', '.join(LAYER_KINDS)}")
        flat_ok = layer.kind == "dense" and len(layer.in_shape) == 1 and layer.in_shape[0] == int(np.prod(shape))
        if tuple(layer.in_shape) != shape and not flat_ok:
            raise SpecError(f"shape mismatch: {where} expects input {tuple(layer.in_shape)} but the previous layer gives {shape}")
        last = i == len(model.layers) - 1
        if layer.readout != last:
            raise SpecError(f"{where}: exactly the last layer must be the readout")
        if last and layer.kind not in ("dense", "conv2d"):
            raise SpecError(f"{where}: the readout must be a dense or conv2d layer")
        for nm in ("kernel", "stride"):
            if int(getattr(layer, nm)) < 1:
                raise SpecError(f"{where}: {nm} must be a positive integer, not {getattr(layer, nm)}")
        if layer.padding < 0:
            raise SpecError(f"{where}: padding must be >= 0, not {layer.padding}")
        if layer.kind == "conv2d" and layer.padding > layer.kernel - 1:
            raise SpecError(f"{where}: padding must be at most kernel - 1 = {layer.kernel - 1}, not {layer.padding}")
        if layer.kind in ("dense", "conv2d"):
            if layer.weight is None or layer.weight.dtype != np.int8:
                raise SpecError(f"{where}: weights must be int8")
            if layer.kind == "conv2d" and layer.weight.ndim == 4 and layer.kernel != layer.weight.shape[2]:
                raise SpecError(f"{where}: kernel {layer.kernel} does not match the weight shape {tuple(layer.weight.shape)}")
            want = 2 if layer.kind == "dense" else 4
            if layer.weight.ndim != want:
                raise SpecError(f"{where}: weights must be a {want}-D array "
                                f"({'(out, in)' if want == 2 else '(out, in, k, k)'}), not shape {tuple(layer.weight.shape)}")
            if (layer.weight == -128).any():
                raise SpecError(f"{where}: weights must lie in -127..127")
            if layer.bias is None or layer.bias.shape != (layer.weight.shape[0],):
                raise SpecError(f"{where}: bias must have one entry per output channel")
        elif layer.weight is not None or layer.bias is not None:
            raise SpecError(f"{where}: pooling layers carry no weights or bias")
        if layer.kind in ("maxpool", "avgpool") and layer.padding * 2 > layer.kernel:
            raise SpecError(f"{where}: padding must be at most half the kernel ({layer.kernel // 2}), not {layer.padding}")
        out = infer_out_shape(layer.kind, shape, layer.weight, layer.kernel, layer.stride, layer.padding)
        if tuple(layer.out_shape) != out:
            raise SpecError(f"shape mismatch: {where} declares output {tuple(layer.out_shape)} but computes {out}")
        if layer.fires:
            nch = out[0]
            th = layer.theta
            if th is None or th.shape != (nch, T):
                raise SpecError(f"{where}: threshold table must have shape ({nch}, {T})")
            if (np.diff(th, axis=1) > 0).any():
                raise SpecError(f"{where}: threshold table must be non-increasing in the phase")
        elif layer.theta is not None:
            raise SpecError(f"{where}: only firing layers carry a threshold table")
        shape = out
    if model.task not in TASKS:
        raise SpecError(f"task must be one of {', '.join(TASKS)}, not {model.task!r}"[:200])
    if model.task == "detect":
        if model.head is None:
            raise SpecError("a detector (task 'detect') needs a detection head")
        check_head(model.head, model)
    elif model.head is not None:
        raise SpecError("only a detector (task 'detect') carries a detection head")
    analyse_ranges(model, max_bits)


# --------------------------------------------------------------------------------------- counts

def dense_macs(model: IntModel) -> list[int]:
    """Multiply-accumulates per inference of the equivalent dense ANN layer (for the energy estimate)."""
    out = []
    for l in model.layers:
        if l.kind == "dense":
            out.append(int(l.weight.size))
        elif l.kind == "conv2d":
            oc, oh, ow = l.out_shape
            out.append(int(oh * ow * l.weight[0].size * oc))
        elif l.kind == "avgpool":
            out.append(int(np.prod(l.out_shape)) * l.kernel * l.kernel)
        else:
            out.append(0)
    return out


# Energy model (Horowitz, ISSCC 2014, 45 nm, 32-bit float), as used by the One-Spike authors:
# an ANN layer costs one MAC (4.6 pJ) per multiply-accumulate, a spiking layer one accumulate (0.9 pJ)
# per synaptic operation. Memory traffic is not counted.
E_MAC_PJ = 4.6
E_AC_PJ = 0.9


# --------------------------------------------------------------------------------------- detection head
#
# A detector is a model whose readout is a conv2d map on a grid (a task of "detect" in the model file).
# Its channels, per cell (y, x) of the (GH, GW) grid, are
#     0            background score
#     1 .. K       class scores (K object classes, ``DetectHead.classes``)
#     K+1 .. K+4   box: dx, dy (centre offset from the cell's top-left corner), w, h
# all in accumulator units L[c, y, x] (the integer logits). Decoding them into a list of detections
# is part of the specification (integers only, every backend gives the identical list):
#
#  1. cell class and score: c(y, x) = argmax_{k in 1..K} L[k, y, x] (ties: the lowest k);
#     s(y, x) = L[c, y, x] - L[0, y, x] (an exact integer; int64 in C).
#  2. candidates: cells with s >= score_threshold; with ``peak`` = 1 only those that are a local maximum
#     among the cells of the same class in their 3x3 neighbourhood: with i = y * GW + x the raster
#     index, s(y, x) > s(n) for every such neighbour n with a smaller index and s(y, x) >= s(n) for
#     every one with a larger index (so of equal neighbours exactly the first is kept; cells of other
#     classes never suppress); with ``peak`` = 0 every such cell (grouping by step 4 alone).
#  3. box: px(v) = (v * box_mult + 2**(box_shift - 1)) >> box_shift (floor; v * box_mult is exact in int64),
#     cx = x * stride + clamp(px(dx), 0, stride), cy likewise; w = clamp(px(w), 1, W), h = clamp(px(h), 1, H)
#     (W, H the input size); x0 = clamp(cx - floor(w / 2), 0, W), x1 = clamp(cx - floor(w / 2) + w, 0, W),
#     y0, y1 likewise: a box in input pixels, x1 and y1 exclusive.
#  4. order and suppression: candidates sorted by score descending, then raster index ascending; taken
#     in that order, a candidate is kept unless a kept detection of the same class overlaps it with
#     100 * inter > nms_iou_percent * union (areas in pixels, exact integers); at most max_detections kept.
#  Output, in kept order: (class k - 1 in 0..K-1, x0, y0, x1, y1, score).

TASKS = ("classify", "detect")
BOX_CHANNELS = 4  # dx, dy, w, h
MAX_DETECTIONS = 256
DET_FIELDS = ("class", "x0", "y0", "x1", "y1", "score")


@dataclass
class DetectHead:
    """The decode parameters of a detector's readout map (see the comment above)."""

    classes: list
    stride: int
    score_threshold: int
    box_mult: int
    box_shift: int
    nms_iou_percent: int = 50
    max_detections: int = 64
    peak: int = 1  # 1: candidates are 3x3 same-class local maxima; 0: every cell above the threshold

    @property
    def channels(self) -> int:
        return 1 + len(self.classes) + BOX_CHANNELS

    def to_dict(self) -> dict:
        return {"classes": [str(c) for c in self.classes], "stride": int(self.stride),
                "score_threshold": int(self.score_threshold), "box_mult": int(self.box_mult),
                "box_shift": int(self.box_shift), "nms_iou_percent": int(self.nms_iou_percent),
                "max_detections": int(self.max_detections), "peak": int(self.peak)}


def _int_field(v, what: str, lo: int, hi: int) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
        raise SpecError(f"detection head: {what} must be an integer in {lo}..{hi}, not {v!r}"[:200])
    return int(v)


def check_head(head: DetectHead, model: "IntModel") -> None:
    """Refuse a detection head that does not fit its model's readout (one line naming the field)."""
    if not isinstance(head.classes, (list, tuple)) or not head.classes or len(head.classes) > 64 \
            or not all(isinstance(c, str) and c for c in head.classes):
        raise SpecError("detection head: classes must be a list of 1..64 non-empty names")
    if len(set(head.classes)) != len(head.classes):
        raise SpecError(f"detection head: class names must be distinct, not {list(head.classes)!r}"[:200])
    last = model.layers[-1] if model.layers else None
    if last is None or last.kind != "conv2d" or len(last.out_shape) != 3:
        raise SpecError("detection head: the readout of a detector must be a conv2d map")
    if last.out_shape[0] != head.channels:
        raise SpecError(f"detection head: the readout has {last.out_shape[0]} channels but {len(head.classes)} classes "
                        f"need {head.channels} (background, the classes, dx, dy, w, h)")
    _int_field(head.stride, "stride", 1, MAX_SIDE)
    _int_field(head.score_threshold, "score_threshold", -(1 << 32), 1 << 32)
    _int_field(head.box_mult, "box_mult", 1, (1 << 31) - 1)
    _int_field(head.box_shift, "box_shift", 1, 62)
    _int_field(head.nms_iou_percent, "nms_iou_percent", 0, 100)
    _int_field(head.max_detections, "max_detections", 1, MAX_DETECTIONS)
    _int_field(head.peak, "peak", 0, 1)
    _, gh, gw = last.out_shape
    _, h, w = model.input_shape
    if gh * head.stride < h - head.stride or gw * head.stride < w - head.stride:
        raise SpecError(f"detection head: a {gh}x{gw} grid at stride {head.stride} does not cover the "
                        f"{h}x{w} input")


def decode_box_px(v: int, head: DetectHead) -> int:
    """``px(v)`` of step 3: a box channel in input pixels (Python ints: exact)."""
    return (int(v) * int(head.box_mult) + (1 << (int(head.box_shift) - 1))) >> int(head.box_shift)


def decode_detections(logits: np.ndarray, head: DetectHead, input_hw: tuple[int, int]) -> np.ndarray:
    """Steps 1-4 on one readout map (C, GH, GW) of integers: int64 (n, 6) rows (class, x0, y0, x1, y1, score).

    Exact integer arithmetic (int64 numpy for the per-cell steps, Python ints for the boxes)."""
    L = np.asarray(logits, dtype=np.int64)
    K = len(head.classes)
    _, gh, gw = L.shape
    H, W = int(input_hw[0]), int(input_hw[1])
    cls = np.argmax(L[1:1 + K], axis=0)  # first maximum: the lowest class
    score = np.take_along_axis(L[1:1 + K], cls[None], 0)[0] - L[0]
    cands = []
    for y in range(gh):
        for x in range(gw):
            s = int(score[y, x])
            if s < head.score_threshold:
                continue
            peak = True
            for ny in (range(max(0, y - 1), min(gh, y + 2)) if head.peak else ()):
                for nx in range(max(0, x - 1), min(gw, x + 2)):
                    if (ny, nx) == (y, x) or cls[ny, nx] != cls[y, x]:
                        continue
                    t = int(score[ny, nx])
                    if (ny * gw + nx < y * gw + x and not s > t) or (ny * gw + nx > y * gw + x and not s >= t):
                        peak = False
            if peak:
                cands.append((-s, y * gw + x, y, x))
    cands.sort()
    kept: list[tuple] = []
    for neg_s, _, y, x in cands:
        if len(kept) >= head.max_detections:
            break
        box = _cell_box(L[:, y, x], K, y, x, head, H, W)
        c = int(cls[y, x])
        if any(k[0] == c and _suppresses(k[1:5], box, head.nms_iou_percent) for k in kept):
            continue
        kept.append((c,) + box + (-neg_s,))
    return np.array(kept, dtype=np.int64).reshape(-1, 6)


def _clamp(v: int, lo: int, hi: int) -> int:
    return lo if v < lo else hi if v > hi else v


def _cell_box(v, K: int, y: int, x: int, head: DetectHead, H: int, W: int) -> tuple[int, int, int, int]:
    dx, dy, bw, bh = (decode_box_px(int(v[1 + K + j]), head) for j in range(BOX_CHANNELS))
    cx = x * head.stride + _clamp(dx, 0, head.stride)
    cy = y * head.stride + _clamp(dy, 0, head.stride)
    bw, bh = _clamp(bw, 1, W), _clamp(bh, 1, H)
    x0, y0 = cx - bw // 2, cy - bh // 2
    return _clamp(x0, 0, W), _clamp(y0, 0, H), _clamp(x0 + bw, 0, W), _clamp(y0 + bh, 0, H)


def _suppresses(a, b, percent: int) -> bool:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = iw * ih if iw > 0 and ih > 0 else 0
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return 100 * inter > percent * union
