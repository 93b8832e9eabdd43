"""The project's differential fuzzer: hypothesis strategies of spec-valid models, and the checker.

:func:`cases` draws a :class:`Case` (a model that passes ``runtime.spec.validate``, its test images,
and FPGA lanes/stores) aimed at the corners of the specification:

* every layer kind (dense, conv2d, maxpool, avgpool) in any order, ending in a dense/conv2d readout;
  pooling directly on the input code; models without a firing layer (a lone readout, or only
  max-pools before it); dense layers on a flat or a (C, H, W) ``in_shape``;
* T from 1 to 255, Q from just above 1 up to 2, F from the fewest fraction bits that keep the
  decode tables positive up to 30 (what the accumulators allow); an input code of its own or the
  hidden one; standard, scaled or arbitrary (non-monotone) input-encoding tables;
* accumulators of exactly 32 bits (biases at the very end of the int32 range that the weights
  leave, thresholds at ``INT32_MIN``/``INT32_MAX``), single products ``W * D[0]`` beyond int32
  while every sum fits (F >= 25, one large weight, the bias near the opposite end);
* padding up to the spec's limit (conv2d ``p = kernel - 1``, pools ``2p = kernel``), kernels up
  to ``MAX_KERNEL``, strides up to ``MAX_STRIDE``; thresholds on observed accumulator values (ties
  with ``acc >= theta``), all-255 and all-0 images (every input at its largest decoded value, or
  silent).

Structural choices are hypothesis draws (so they shrink); bulk arrays (weights, thresholds,
images) come from a numpy generator seeded by one draw.

:func:`check` runs one case through the backends and returns a :class:`Verdict` per backend:
``ref`` (the plain-Python reading ``spec_reference``), ``c`` / ``c-san`` (host C, plain and with
ASan+UBSan), ``rtl`` (the cocotb bench under Icarus or Verilator). Every comparison is exact:
logits, classes and every layer's phases (plus synaptic operations and spike counts for ``ref``).
``tests/test_fuzz.py`` (CI) and ``scripts/fuzz.py`` (the long campaign) both use it.
"""
from __future__ import annotations

import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

import spec_reference as ref
from runtime import golden
from runtime.errors import ToolError, UserError
from runtime.spec import (MAX_ACC_BITS, IntModel, Layer, conv_out, decode_table, encode_table, validate)

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
try:  # the lead's size limits (runtime/spec.py); the fuzzer stays within them
    from runtime.spec import MAX_KERNEL, MAX_STRIDE
except ImportError:  # pragma: no cover
    MAX_KERNEL, MAX_STRIDE = 32, 32

BACKENDS = ("ref", "c", "c-san", "rtl")
KINDS = ("dense", "conv2d", "maxpool", "avgpool")
# Corners a case can hit (Case.tags); tests/test_fuzz.py checks that the strategy reaches each.
CORNERS = ("acc32", "product>int32", "T=1", "T=255", "Q~1", "Q=2", "F=30", "F=min", "conv-pad-max", "pool-pad-max",
           "pool-on-input", "no-firing-layer", "own-input-code", "random-encode", "theta-extreme", "big-kernel",
           "big-stride", "conv-readout", "dense-3d-in", "zero-weights", *(f"kind:{k}" for k in KINDS))


@dataclass
class Case:
    """One fuzz case: a spec-valid model, its images, and the FPGA configuration to try."""

    model: IntModel
    images: np.ndarray              # uint8 (N, C, H, W)
    lanes: list[int]
    store: list[str]
    tags: set = field(default_factory=set)
    rtl_seed: int = 0               # the RTL bench's stimulus (gaps, stalls, reset point)
    spikes: tuple = (0, 0)          # hidden neurons (over the images) that spike / stay silent

    def describe(self) -> str:
        m = self.model
        layers = " ".join(f"{l.kind}{_lshape(l)}" for l in m.layers)
        return (f"Q={m.Q!r} T={m.T} F={m.F} input {tuple(m.input_shape)} code ({m.input_Q!r}, {m.input_T}); "
                f"{layers}; acc_bits {[l.acc_bits for l in m.layers]}; {len(self.images)} images")


def _lshape(l: Layer) -> str:
    if l.kind == "dense":
        return f"[{l.out_shape[0]}]"
    return f"[k{l.kernel}s{l.stride}p{l.padding}->{'x'.join(map(str, l.out_shape))}]"


# --------------------------------------------------------------------------------------- codes

def min_fraction_bits(Q: float, T: int) -> int | None:
    """The fewest fraction bits F (<= 30) whose decode table is valid (every D[f < T] >= 1)."""
    for F in range(31):
        if decode_table(Q, T, F)[T - 1] >= 1:
            return F
    return None


@st.composite
def codes(draw, t_max: int = 255):
    """(Q, T): T in 1..t_max with the ends likely; Q in (1, Qmax(T)] with its ends likely, where
    Qmax(T) is the largest base a 30-bit fraction still resolves over T phases."""
    T = draw(st.one_of(st.sampled_from([1, 2, t_max]), st.integers(1, 16), st.integers(1, t_max)))
    q_max = 2.0 if T <= 2 else min(2.0, 2.0 ** (30.9 / (T - 1)))
    Q = draw(st.one_of(st.sampled_from([q_max, 1.0 + 1e-9, 1.0 + 2.0 ** -20, 1.0001, 1.02]),
                       st.floats(1.0, q_max, exclude_min=True, allow_nan=False)))
    return float(min(max(Q, 1.0 + 1e-12), q_max)), int(T)


# --------------------------------------------------------------------------------------- layers

def _fit_rows(rng, w: np.ndarray, budget: int, big: int) -> np.ndarray:
    """Weights (O, fan-in) with ``sum |w| <= budget`` per row (so that ``(pos - neg) * 2**F`` spans
    at most 2**32 - 1); with ``big`` > 0 each row first gets one weight of magnitude >= big."""
    w = w.astype(np.int64).copy()
    n = w.shape[1]
    for o in range(w.shape[0]):
        row = w[o]
        lead = None
        if big:
            lead = int(rng.integers(n))
            row[lead] = int(rng.choice([-1, 1])) * int(rng.integers(big, min(127, budget) + 1))
        if np.abs(row).sum() <= budget:
            continue
        order = rng.permutation(n)
        if lead is not None:
            order = np.concatenate([[lead], order[order != lead]])
        mag = np.abs(row[order])
        cum = np.cumsum(mag)
        keep = cum <= budget
        out = np.zeros(n, dtype=np.int64)
        out[order[keep]] = row[order[keep]]
        cut = np.flatnonzero(~keep)
        if len(cut):
            k = int(cut[0])
            rem = budget - (int(cum[k - 1]) if k else 0)
            if rem > 0:
                out[order[k]] = int(np.sign(row[order[k]])) * rem
        w[o] = out
    return w


def _weights(draw, rng, shape, F: int, wild: bool) -> tuple[np.ndarray, set]:
    """int8 weights (O, ...) whose every accumulator range fits int32 at this F."""
    tags = set()
    mode = draw(st.sampled_from(["uniform", "sparse", "extreme", "small", "zero", "single", "big"] if wild
                                else ["uniform", "sparse", "small", "single"]))
    n = int(np.prod(shape[1:]))
    if mode == "uniform":
        w = rng.integers(-127, 128, size=(shape[0], n))
    elif mode == "sparse":
        w = rng.integers(-127, 128, size=(shape[0], n)) * (rng.random((shape[0], n)) < 0.15)
    elif mode == "extreme":
        w = rng.choice([-127, 0, 127], size=(shape[0], n))
    elif mode == "small":
        w = rng.integers(-2, 3, size=(shape[0], n))
    elif mode == "zero":
        w = np.zeros((shape[0], n), dtype=np.int64)
    else:  # single / big: one weight per row, the rest sparse
        w = rng.integers(-127, 128, size=(shape[0], n)) * (rng.random((shape[0], n)) < 0.05)
    budget = ((1 << 32) - 1) >> F                      # sum |w| * 2**F <= 2**32 - 1
    if mode not in ("big", "single"):                   # not always the whole int32 range
        budget = max(1, budget >> draw(st.sampled_from([0, 0, 2, 6, 12] if wild else [4, 8, 12])))
    big = 0
    if mode == "big" and F >= 25:
        big = -(-(INT32_MAX + 1) // (1 << F))           # smallest |w| with |w| * 2**F > INT32_MAX
    elif mode == "single":
        w[:] = 0
        big = 1
    w = _fit_rows(rng, w, budget, big)
    if (np.abs(w).max(initial=0) << F) > INT32_MAX:
        tags.add("product>int32")
    return w.reshape(shape).astype(np.int8), tags


def _biases(draw, rng, w: np.ndarray, F: int, wild: bool) -> np.ndarray:
    """Biases in the int32 range the weights leave: 0, small, or at either end of it (acc32)."""
    w2 = w.astype(np.int64).reshape(w.shape[0], -1)
    pos = np.where(w2 > 0, w2, 0).sum(1) << F
    neg = np.where(w2 < 0, w2, 0).sum(1) << F
    bmin, bmax = INT32_MIN - neg, INT32_MAX - pos      # lo = b + neg >= INT32_MIN, hi = b + pos <= INT32_MAX
    assert (bmin <= bmax).all()
    mode = draw(st.sampled_from(["zero", "small", "low", "high", "uniform", "mixed"] if wild else ["zero", "small", "small"]))
    spread = max(1, (pos - neg).max(initial=0) // 8)
    small = rng.integers(-spread, spread + 1, size=len(bmin))
    uni = np.array([int(rng.integers(a, b + 1)) for a, b in zip(bmin, bmax)], dtype=np.int64)
    pick = {"zero": np.zeros(len(bmin), dtype=np.int64), "small": small, "low": bmin, "high": bmax, "uniform": uni}
    if mode == "mixed":
        b = np.stack([pick[k] for k in ("small", "low", "high", "uniform")])[rng.integers(0, 4, size=len(bmin)),
                                                                           np.arange(len(bmin))]
    else:
        b = pick[mode]
    return np.clip(b, bmin, bmax).astype(np.int64)


def _thetas(draw, rng, acc: np.ndarray, lo: np.ndarray, hi: np.ndarray, T: int, wild: bool) -> tuple[np.ndarray, set]:
    """Non-increasing threshold rows (C, T) from observed accumulators ``acc`` (C, samples)."""
    tags = set()
    mode = draw(st.sampled_from(["observed", "range", "extreme", "flat"] if wild else ["observed", "observed", "flat"]))
    C = acc.shape[0]
    th = np.empty((C, T), dtype=np.int64)
    for c in range(C):
        seen = acc[c]
        # thresholds among the observed values above a random quantile: the rest stays silent
        top = np.sort(seen)[int(rng.uniform(0.0, 0.9) * len(seen)):]
        obs = rng.choice(top, size=T) + rng.integers(-1, 2, size=T) * (rng.random(T) < 0.5)
        if mode == "observed":
            row = obs
        elif mode == "range":
            row = rng.integers(int(lo[c]), int(hi[c]) + 1, size=T)
        elif mode == "flat":
            row = np.full(T, obs[0])
        else:
            row = obs.copy()
            row[rng.random(T) < 0.2] = INT32_MAX
            row[rng.random(T) < 0.2] = INT32_MIN
            tags.add("theta-extreme")
        th[c] = np.sort(np.clip(row, INT32_MIN, INT32_MAX))[::-1]
    return th, tags


def _windows(a: np.ndarray, k: int, s: int, p: int, fill) -> np.ndarray:
    """(N, C, OH, OW, k, k) windows of ``a`` (N, C, H, W) padded with ``fill``."""
    a = np.pad(a, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
    return np.lib.stride_tricks.sliding_window_view(a, (k, k), axis=(2, 3))[:, :, ::s, ::s]


def _forward(layer: Layer, ph: np.ndarray, dec: np.ndarray, no_spike: int) -> np.ndarray:
    """Accumulators (dense/conv2d/avgpool, (N, C[, OH, OW])) or phases (maxpool) of ``layer`` on
    input phases ``ph``, in numpy. Only used to place thresholds where accumulators really fall
    (the checks compare the backends with golden and the spec reading, never with this)."""
    n = len(ph)
    if layer.kind == "maxpool":
        return _windows(ph, layer.kernel, layer.stride, layer.padding, no_spike).min(axis=(4, 5))
    d = dec[ph]                                                   # int64, 0 for "no spike"
    if layer.kind == "dense":
        return d.reshape(n, -1) @ layer.weight.astype(np.int64).T + layer.bias
    win = _windows(d, layer.kernel, layer.stride, layer.padding, 0)
    oh, ow = layer.out_shape[1:]
    win = win[:, :, :oh, :ow]
    if layer.kind == "avgpool":
        return win.sum(axis=(4, 5))
    return np.einsum("ncyxij,ocij->noyx", win, layer.weight.astype(np.int64)) + layer.bias[None, :, None, None]


def _fire(acc: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """The fire rule on (N, C[, H, W]) accumulators: #{f : theta[c, f] > acc}."""
    a = np.moveaxis(acc, 1, -1)
    return np.moveaxis((theta > a[..., None]).sum(-1), -1, 1).astype(np.uint8)


def _window(draw, h: int, w: int, kind: str, k_cap: int, s_cap: int, out_cap: int, tags: set,
            k_max: int = MAX_KERNEL):
    """(kernel, stride, padding) of a window on an h x w activation whose output sides stay within
    ``out_cap``; padding up to the spec's limit (conv2d ``kernel - 1``, pools ``kernel // 2``)."""
    k_cap = min(k_cap, k_max)
    if k_cap < k_max and draw(st.integers(0, 19)) == 0:
        k = draw(st.integers(k_cap + 1, k_max))
        tags.add("big-kernel")
    else:
        k = draw(st.integers(1, k_cap))
    s = MAX_STRIDE if draw(st.integers(0, 9)) == 0 else draw(st.integers(1, s_cap))
    if s == MAX_STRIDE:
        tags.add("big-stride")
    p_max = k - 1 if kind == "conv2d" else k // 2
    p_min = max(0, -(-(k - min(h, w)) // 2))            # every output side >= 1: side + 2p >= k
    p_out = (out_cap * s - 1 + k - max(h, w)) // 2       # every output side <= out_cap
    p_hi = min(p_max, p_out)
    assume(p_min <= p_hi)
    p = draw(st.one_of(st.just(p_hi), st.integers(p_min, p_hi)))
    if p > 0 and p == p_max:
        tags.add("conv-pad-max" if kind == "conv2d" else "pool-pad-max")
    return k, s, p


@st.composite
def cases(draw, small: bool = False, n_images: int | None = None):
    """A :class:`Case` (model valid under ``runtime.spec.validate``). ``small``: shapes that the
    RTL simulates quickly (input at most 2x6x6, at most three layers)."""
    tags: set = set()
    T_cap = 255
    Q, T = draw(codes(T_cap))
    if draw(st.integers(0, 3)) == 0:
        Q_in, T_in = Q, T
    else:
        Q_in, T_in = draw(codes(T_cap))
        if (Q_in, T_in) != (Q, T):
            tags.add("own-input-code")
    f_need = [min_fraction_bits(Q, T), min_fraction_bits(Q_in, T_in)]
    assume(None not in f_need)
    f_lo = max(f_need)
    F = draw(st.one_of(st.sampled_from([f_lo, 30]), st.integers(max(f_lo, 25), 30), st.integers(f_lo, 30),
                       st.integers(f_lo, 30)))
    tags |= {"T=1"} if 1 in (T, T_in) else set()
    tags |= {"T=255"} if 255 in (T, T_in) else set()
    tags |= {"Q~1"} if min(Q, Q_in) < 1.001 else set()
    tags |= {"Q=2"} if 2.0 in (Q, Q_in) else set()
    tags |= {"F=30"} if F == 30 else set()
    tags |= {"F=min"} if F == f_lo else set()

    side_max, c_max, n_layers_max = (6, 2, 3) if small else (10, 3, 4)
    out_cap, k_cap, s_cap, ch_max, dense_max = (8, 4, 3, 3, 6) if small else (14, 5, 3, 4, 8)
    C = draw(st.integers(1, c_max))
    H = draw(st.integers(1, side_max))
    W = draw(st.one_of(st.just(H), st.integers(1, side_max)))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))

    # images: random pixels with zeros, and often an all-255 and an all-0 image
    n = n_images or draw(st.integers(4, 8 if small else 10))
    x = rng.integers(0, 256, size=(n, C, H, W)).astype(np.uint8)
    x[rng.random(x.shape) < draw(st.sampled_from([0.0, 0.3, 0.8]))] = 0
    if draw(st.booleans()):
        x[0] = 255
    if draw(st.booleans()):
        x[-1] = 0

    enc_mode = draw(st.sampled_from(["standard", "standard", "scaled", "random"]))
    if enc_mode == "standard":
        enc = encode_table(Q_in, T_in)
    elif enc_mode == "scaled":
        enc = encode_table(Q_in, T_in, pixel_scale=float(rng.uniform(0.05, 3.0)))
    else:
        enc = rng.integers(0, T_in + 1, size=256).astype(np.uint8)
        tags.add("random-encode")
    dec, dec_in = decode_table(Q, T, F), decode_table(Q_in, T_in, F)
    ph, code = enc[x], (dec_in, T_in)        # the activation a layer reads, and its code

    wild = draw(st.booleans())           # extreme weights, biases and thresholds (acc32, products)
    # hypothesis favours the first choices: the deepest model first, a lone readout last
    n_layers = draw(st.sampled_from([k for k in range(n_layers_max, 1, -1) for _ in range(2)] + [1]))
    layers: list[Layer] = []
    shape: tuple = (C, H, W)
    fired = silent = 0
    for i in range(n_layers):
        last = i == n_layers - 1
        flat = len(shape) == 1
        if flat:
            kind = "dense"
        elif last:
            kind = draw(st.sampled_from(["dense", "conv2d"]))
        else:
            kind = draw(st.sampled_from(KINDS))
        tags.add(f"kind:{kind}")
        if kind == "dense":
            n_in = int(np.prod(shape))
            n_out = draw(st.integers(1, dense_max))
            w, t = _weights(draw, rng, (n_out, n_in), F, wild)
            tags |= t
            b = _biases(draw, rng, w, F, wild)
            in_shape = shape if flat or not draw(st.booleans()) else (n_in,)
            if len(in_shape) == 3:
                tags.add("dense-3d-in")
            layer = Layer("dense", in_shape, (n_out,), w, b, None, readout=last, name=f"dense{i}")
        else:
            c, h, wd = shape
            # an avg-pool's sum of k * k values up to 2**F must fit int32
            k_max = min(MAX_KERNEL, math.isqrt(INT32_MAX >> F)) if kind == "avgpool" else MAX_KERNEL
            k, s, p = _window(draw, h, wd, kind, k_cap, s_cap, out_cap, tags, k_max)
            oh, ow = conv_out(h, k, s, p), conv_out(wd, k, s, p)
            assert 1 <= min(oh, ow) and max(oh, ow) <= out_cap, (h, wd, k, s, p)
            if i == 0 and kind in ("maxpool", "avgpool"):
                tags.add("pool-on-input")
            if kind == "conv2d":
                o = draw(st.integers(1, ch_max))
                w, t = _weights(draw, rng, (o, c, k, k), F, wild)
                tags |= t
                b = _biases(draw, rng, w, F, wild)
                layer = Layer("conv2d", shape, (o, oh, ow), w, b, None, k, s, p, last, name=f"conv{i}")
                if last:
                    tags.add("conv-readout")
            else:
                layer = Layer(kind, shape, (c, oh, ow), None, None, None, k, s, p, name=f"{kind}{i}")
        out = _forward(layer, ph, code[0], code[1])
        if layer.fires:
            acc = out.reshape(n, layer.out_shape[0], -1).transpose(1, 0, 2).reshape(layer.out_shape[0], -1)
            if layer.kind == "avgpool":
                lo = np.zeros(layer.out_shape[0], dtype=np.int64)
                hi = np.full(layer.out_shape[0], layer.kernel ** 2 << F, dtype=np.int64)
            else:
                w2 = layer.weight.astype(np.int64).reshape(layer.weight.shape[0], -1)
                lo = layer.bias + (np.where(w2 < 0, w2, 0).sum(1) << F)
                hi = layer.bias + (np.where(w2 > 0, w2, 0).sum(1) << F)
            layer.theta, t = _thetas(draw, rng, acc, lo, hi, T, wild)
            tags |= t
            ph, code = _fire(out, layer.theta), (dec, T)
            fired += int((ph != T).sum())
            silent += int((ph == T).sum())
        elif layer.kind == "maxpool":
            ph = out
        layers.append(layer)
        shape = layer.out_shape

    model = IntModel(Q=Q, T=T, F=F, input_shape=(C, H, W), decode=dec, encode=enc, layers=layers,
                     input_Q=Q_in, input_T=T_in, input_decode=dec_in)
    validate(model)                     # a generator bug (not a backend bug) if this raises
    if not any(l.fires for l in layers):
        tags.add("no-firing-layer")
    if max(l.acc_bits for l in layers) == MAX_ACC_BITS:
        tags.add("acc32")
    if any(l.weight is not None and not l.weight.any() for l in layers):
        tags.add("zero-weights")        # with a zero bias: an accumulator range of one value
    lanes = [draw(st.integers(1, 4)) for _ in layers]
    store = ["rom"] * len(layers)
    if draw(st.integers(0, 4)) == 0:     # RAM weight stores (a lane word must hold a threshold)
        for j, l in enumerate(layers):
            if l.kind in ("dense", "conv2d") and draw(st.booleans()):
                store[j] = "ram"
                lanes[j] = max(lanes[j], -(-l.acc_bits // 8))
        if "ram" in store:
            tags.add("ram-store")
    return Case(model, x, lanes, store, tags, draw(st.integers(0, 2 ** 16)), (fired, silent))


# --------------------------------------------------------------------------------------- checks

@dataclass
class Verdict:
    """What one backend did with one case.

    ``status``: ``match``; ``mismatch`` (a value differs: ``detail`` names image, layer, neuron);
    ``refused`` (the backend raised a UserError: ``detail`` is its message); ``compile-error``
    (the generated code did not build); ``ub`` (a sanitizer reported undefined behaviour);
    ``crash`` (the program failed otherwise); ``error`` (the simulator hung, lost a result or
    reported something impossible). ``known``: the known bug this matches, if any."""

    backend: str
    status: str
    detail: str = ""
    known: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "match"

    def __str__(self) -> str:
        k = f" [known: {self.known}]" if self.known else ""
        return f"{self.backend}: {self.status}{': ' + self.detail if self.detail else ''}{k}"


# Known bugs (issue 9) that fixes in flight remove; a verdict matching one is labelled, not hidden.
KNOWN = [
    ("c", "compile-error", r"defined but not used", "issue 9 #1: unused decode table under -Werror"),
    ("c-san", "compile-error", r"defined but not used", "issue 9 #1: unused decode table under -Werror"),
    ("c-san", "ub", r"signed integer overflow", "issue 9 #2: int32 product overflow in the C kernel"),
    ("rtl", "error", r"negative latency|latency -?\d+ cycles is not positive",
     "issue 9 #3: negative latency after a mid-frame reset"),
    ("rtl", "refused", r"Thresholds minus biases must fit", "issue 9 #4: RAM store chosen for a theta-bias too wide"),
]


def _known(v: Verdict) -> Verdict:
    for backend, status, pat, label in KNOWN:
        if v.backend == backend and v.status == status and re.search(pat, v.detail):
            v.known = label
    return v


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def check_reference(model: IntModel, images: np.ndarray, gold: golden.GoldenResult) -> Verdict:
    """The golden result against the plain-Python spec reading: logits, class, every layer's phases,
    synaptic operations and spike counts."""
    codes_ = [model.input_T] + [model.T if l.fires else model.code_of_layer_input(i)[1] for i, l in enumerate(model.layers)]
    for n in range(len(images)):
        logits, phases, sops = ref.run_one(model, images[n])
        if gold.logits[n].tolist() != logits:
            j = next(j for j, (a, b) in enumerate(zip(gold.logits[n].tolist(), logits)) if a != b)
            return Verdict("ref", "mismatch", f"image {n}, readout logit {j}: spec {logits[j]}, golden {int(gold.logits[n, j])}")
        if int(gold.classes[n]) != ref.argmax_lowest(logits):
            return Verdict("ref", "mismatch", f"image {n}, class: spec {ref.argmax_lowest(logits)}, golden {int(gold.classes[n])}")
        for li, p in enumerate(phases):
            if p is None:
                if gold.phases[li] is not None:
                    return Verdict("ref", "mismatch", f"image {n}: golden has phases for the readout")
                continue
            want = np.asarray(p).reshape(-1)
            got = np.asarray(gold.phases[li][n]).reshape(-1)
            if want.shape != got.shape or (want != got).any():
                j = int(np.flatnonzero(want != got)[0]) if want.shape == got.shape else -1
                where = "input" if li == 0 else f"layer {li - 1} ({model.layers[li - 1].kind})"
                return Verdict("ref", "mismatch", f"image {n}, {where} phases, neuron {j}: spec {want[j]}, golden {got[j]}")
        if gold.sops[n].tolist() != sops:
            return Verdict("ref", "mismatch", f"image {n}: synaptic operations spec {sops}, golden {gold.sops[n].tolist()}")
        spikes = [int((np.asarray(p) != c).sum()) for p, c in zip(phases, codes_) if p is not None]
        if gold.spikes[n][: len(spikes)].tolist() != spikes:
            return Verdict("ref", "mismatch", f"image {n}: spike counts spec {spikes}, golden {gold.spikes[n].tolist()}")
    return Verdict("ref", "match")


def _tool_output(e: Exception) -> str:
    """The message of a failed tool, and its log when the message names one (``...; log: PATH``)."""
    msg = str(e)
    m = re.search(r"log: (\S+)\s*$", msg)
    if m and Path(m.group(1)).is_file():
        msg += "\n" + Path(m.group(1)).read_text(errors="replace")
    return msg


def _first(lines: list[str], *needles: str) -> str | None:
    return next((ln for ln in lines if any(n in ln for n in needles)), None)


def check_c(model: IntModel, images: np.ndarray, gold: golden.GoldenResult, work: Path, sanitize: bool = False,
            name: str = "fuzz") -> Verdict:
    """Host C (generated by emit_c, built by c_target with -Werror; ASan+UBSan with ``sanitize``)
    against the golden result: logits, class and every layer's phases (the runner's trace)."""
    from codegen.c import host as c_host

    backend = "c-san" if sanitize else "c"
    try:
        exe = c_host.build_host(model, name, work, sanitize=sanitize)
    except ToolError as e:
        lines = _tool_output(e).splitlines()
        return _known(Verdict(backend, "compile-error", _one_line(_first(lines, "error:") or lines[0])))
    except UserError as e:
        return _known(Verdict(backend, "refused", _one_line(e)))
    except (RuntimeError, OSError) as e:
        return _known(Verdict(backend, "compile-error", _one_line(e)))
    try:
        got = c_host.run_host(model, exe, images, trace=True)
    except (ToolError, RuntimeError) as e:
        lines = _tool_output(e).splitlines()
        ub = _first(lines, "runtime error", "Sanitizer")
        if ub:
            return _known(Verdict(backend, "ub", _one_line(ub)))
        return _known(Verdict(backend, "crash", _one_line(lines[0] if lines else e)))
    except UserError as e:
        return _known(Verdict(backend, "refused", _one_line(e)))
    matched, first = c_host.compare(model, gold, got)
    if first is not None or matched != len(images):
        return Verdict(backend, "mismatch", f"{matched}/{len(images)} matched; {first}")
    return Verdict(backend, "match")


def check_rtl(case: Case, work: Path, sim: str = "icarus", mutate: bool = False) -> Verdict:
    """The network RTL in ``sim`` (cocotb bench: input gaps, result stalls, a reset that cuts
    frames in flight) against the golden model: every firing layer's spike events, logits, class."""
    from codegen.fpga import sim as fpga_sim

    try:
        r = fpga_sim.verify(case.model, case.images, sim, lanes=case.lanes, store=case.store, mutate=mutate,
                            seed=case.rtl_seed, work=work)
    except ToolError as e:
        return _known(Verdict("rtl", "crash", _one_line(e)))
    except UserError as e:
        return _known(Verdict("rtl", "refused", _one_line(e)))
    except RuntimeError as e:
        return _known(Verdict("rtl", "crash", _one_line(e)))
    if r.error is not None:
        return _known(Verdict("rtl", "error", _one_line(r.error)))
    if r.first_mismatch is not None or r.matched != r.total:
        return Verdict("rtl", "mismatch", f"{r.matched}/{r.total} matched; {r.first_mismatch}")
    if any(c < 0 for c in r.cycles):
        return _known(Verdict("rtl", "error", f"negative latency: cycles per frame {r.cycles}"))
    return Verdict("rtl", "match")


def check(case: Case, backends=("ref", "c"), work: Path | None = None, sim: str = "icarus",
          gold: golden.GoldenResult | None = None, keep: bool = False) -> dict[str, Verdict]:
    """Run ``case`` through ``backends`` (names from :data:`BACKENDS`); one verdict per backend.

    ``gold``: the golden result to compare with (default: ``golden.run``; a test passes a corrupted
    one to show the checks can fail). Builds go to a fresh folder under ``work`` (deleted unless
    ``keep``)."""
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown backends {sorted(unknown)}; known: {', '.join(BACKENDS)}")
    if gold is None:
        gold = golden.run(case.model, case.images)
    out: dict[str, Verdict] = {}
    base = Path(work) if work is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="case-", dir=base))
    try:
        for b in backends:
            try:
                if b == "ref":
                    out[b] = check_reference(case.model, case.images, gold)
                elif b in ("c", "c-san"):
                    out[b] = check_c(case.model, case.images, gold, tmp, sanitize=b == "c-san")
                else:
                    out[b] = check_rtl(case, tmp / "rtl", sim=sim)
            except Exception as e:   # anything but a UserError from a backend (or the reference) is a crash
                out[b] = _known(Verdict(b, "crash", f"{type(e).__name__}: {_one_line(e)}"))
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def corrupt(model: IntModel, gold: golden.GoldenResult) -> tuple[golden.GoldenResult, str]:
    """A copy of ``gold`` with one value changed (a planted bug): the first hidden layer's first
    neuron of image 0 moved by one phase if a layer fires, else the first logit of image 0 plus one."""
    phases = [None if p is None else p.copy() for p in gold.phases]
    logits = gold.logits.copy()
    what = None
    for li, l in enumerate(model.layers):
        if l.fires:
            p = phases[li + 1]
            flat = p[0].reshape(-1)
            flat[0] = (int(flat[0]) + 1) % (model.T + 1)
            what = f"layer {li} phase of neuron 0, image 0"
            break
    if what is None:
        logits[0, 0] += 1
        what = "logit 0 of image 0"
    return golden.GoldenResult(logits=logits, classes=gold.classes.copy(), phases=phases, spikes=gold.spikes.copy(),
                               sops=gold.sops.copy()), what
