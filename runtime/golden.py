"""The Numba golden model: runs an integer one-spike model (runtime.spec) on a batch, bit-exactly.

Every backend (C, RTL) is compared with :func:`run` for exact equality. The kernels are event-driven,
like the hardware: each input spike scatters ``W * D[f]`` into the accumulators it reaches, so the work
done equals the synaptic operations counted. Integer sums are exact, so the order is irrelevant and
the result is the value the specification defines.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from .errors import UserError
from .spec import IntModel, Layer, decode_detections


@njit(parallel=True, cache=True)
def _encode(images, enc, out):
    n = images.shape[0]
    flat_in = images.reshape(n, -1)
    flat_out = out.reshape(n, -1)
    for i in prange(n):
        for j in range(flat_in.shape[1]):
            flat_out[i, j] = enc[flat_in[i, j]]


@njit(cache=True, inline="always")
def _fire(acc, theta_row):
    f = 0
    for t in range(theta_row.shape[0]):
        if theta_row[t] > acc:
            f += 1
    return f


@njit(parallel=True, cache=True)
def _dense(ph, wt, bias, dec, theta, readout, out_ph, out_acc, sops):
    n, n_in = ph.shape
    n_out = wt.shape[1]
    for i in prange(n):
        acc = bias.copy()
        s = 0
        for j in range(n_in):
            d = dec[ph[i, j]]
            if d == 0:
                continue
            s += n_out
            for o in range(n_out):
                acc[o] += np.int64(wt[j, o]) * d
        sops[i] = s
        if readout:
            out_acc[i, :] = acc
        else:
            for o in range(n_out):
                out_ph[i, o] = _fire(acc[o], theta[o])


@njit(parallel=True, cache=True)
def _conv(ph, wt, bias, dec, theta, stride, pad, readout, oh, ow, out_ph, out_acc, sops):
    # ph (N, C, H, W); wt (C, K, K, O); out_* (N, O, OH, OW) (only the one in use is full size)
    n, c_in, h, w = ph.shape
    k = wt.shape[1]
    n_out = wt.shape[3]
    for i in prange(n):
        acc = np.empty((oh, ow, n_out), dtype=np.int64)
        for y in range(oh):
            for x in range(ow):
                acc[y, x, :] = bias
        s = 0
        for c in range(c_in):
            for iy in range(h):
                for ix in range(w):
                    d = dec[ph[i, c, iy, ix]]
                    if d == 0:
                        continue
                    for ky in range(k):
                        ty = iy + pad - ky
                        if ty < 0 or ty % stride != 0:
                            continue
                        oy = ty // stride
                        if oy >= oh:
                            continue
                        for kx in range(k):
                            tx = ix + pad - kx
                            if tx < 0 or tx % stride != 0:
                                continue
                            ox = tx // stride
                            if ox >= ow:
                                continue
                            s += n_out
                            for o in range(n_out):
                                acc[oy, ox, o] += np.int64(wt[c, ky, kx, o]) * d
        sops[i] = s
        for y in range(oh):
            for x in range(ow):
                for o in range(n_out):
                    if readout:
                        out_acc[i, o, y, x] = acc[y, x, o]
                    else:
                        out_ph[i, o, y, x] = _fire(acc[y, x, o], theta[o])


@njit(parallel=True, cache=True)
def _pool(ph, dec, theta, k, stride, pad, is_max, no_spike, out_ph, sops):
    n, c_in, h, w = ph.shape
    oh = out_ph.shape[2]
    ow = out_ph.shape[3]
    for i in prange(n):
        s = 0
        for c in range(c_in):
            for y in range(oh):
                for x in range(ow):
                    best = no_spike
                    acc = np.int64(0)
                    for ky in range(k):
                        iy = y * stride - pad + ky
                        if iy < 0 or iy >= h:
                            continue
                        for kx in range(k):
                            ix = x * stride - pad + kx
                            if ix < 0 or ix >= w:
                                continue
                            f = ph[i, c, iy, ix]
                            if is_max:
                                if f < best:
                                    best = f
                            else:
                                d = dec[f]
                                if d != 0:
                                    acc += d
                                    s += 1
                    if is_max:
                        out_ph[i, c, y, x] = best
                    else:
                        out_ph[i, c, y, x] = _fire(acc, theta[c])
        sops[i] = s


@dataclass
class GoldenResult:
    """Outputs of :func:`run` for a batch of N inputs.

    ``phases[0]`` is the encoded input, ``phases[l + 1]`` the output phases of layer l (None for the
    readout). ``spikes`` and ``sops`` are (N, L+1) and (N, L): spikes emitted by the input and by every
    layer, and synaptic operations (accumulates) performed by every layer.
    """

    logits: np.ndarray
    classes: np.ndarray
    phases: list
    spikes: np.ndarray
    sops: np.ndarray
    detections: list | None = None  # a detector: per image int64 (n, 6) (class, x0, y0, x1, y1, score)


def check_images(model: IntModel, images) -> np.ndarray:
    """Validate a batch of uint8 pixels (N, C, H, W) (or one image (C, H, W)) for ``model``."""
    if not isinstance(images, np.ndarray):
        raise UserError(f"input must be a numpy array of uint8 pixels, not {type(images).__name__}")
    if images.dtype != np.uint8:
        raise UserError(f"input must be uint8 pixels, not {images.dtype}")
    if images.shape == tuple(model.input_shape):
        images = images[None]
    if images.ndim != 4 or images.shape[1:] != tuple(model.input_shape):
        raise UserError(f"input must have shape (N, {', '.join(map(str, model.input_shape))}), not {tuple(images.shape)}")
    return np.ascontiguousarray(images)


def encode(model: IntModel, images: np.ndarray) -> np.ndarray:
    images = check_images(model, images)
    out = np.empty(images.shape, dtype=np.uint8)
    _encode(images, model.encode, out)
    return out


def _prepared(model: IntModel) -> list:
    """Weights laid out for the scatter kernels.

    Cached on the model object, keyed by the identity and contents of every weight array, so that
    a model changed in place (or a deep copy that was then changed) is never run with stale tables."""
    key = tuple((id(l.weight), hash(l.weight.tobytes())) if l.weight is not None else None for l in model.layers)
    cached = getattr(model, "_golden_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    cache = []
    for l in model.layers:
        if l.kind == "dense":
            cache.append(np.ascontiguousarray(l.weight.T))
        elif l.kind == "conv2d":
            cache.append(np.ascontiguousarray(l.weight.transpose(1, 2, 3, 0)))
        else:
            cache.append(None)
    model._golden_cache = (key, cache)
    return cache


def run_layer(model: IntModel, index: int, ph: np.ndarray, wt=None):
    """Run layer ``index`` on input phases; returns ``(out_phases or None, acc or None, sops (N,))``."""
    l: Layer = model.layers[index]
    dec, no_spike = model.code_of_layer_input(index)
    wt = _prepared(model)[index] if wt is None else wt
    n = ph.shape[0]
    sops = np.zeros(n, dtype=np.int64)
    dummy_theta = np.zeros((1, 1), dtype=np.int64)
    theta = l.theta if l.theta is not None else dummy_theta
    out_shape = (n,) + tuple(l.out_shape)
    out_ph = np.empty(out_shape if not l.readout else (1,) * len(out_shape), dtype=np.uint8)
    out_acc = np.empty(out_shape if l.readout else (1,) * len(out_shape), dtype=np.int64)
    if l.kind == "dense":
        _dense(np.ascontiguousarray(ph.reshape(n, -1)), wt, l.bias, dec, theta, l.readout, out_ph, out_acc, sops)
    elif l.kind == "conv2d":
        _conv(ph, wt, l.bias, dec, theta, l.stride, l.padding, l.readout, l.out_shape[1], l.out_shape[2],
              out_ph, out_acc, sops)
    else:
        _pool(ph, dec, theta, l.kernel, l.stride, l.padding, l.kind == "maxpool", np.uint8(no_spike), out_ph, sops)
    if l.readout:
        return None, out_acc, sops
    return out_ph, None, sops


def run(model: IntModel, images: np.ndarray, keep_phases: bool = True) -> GoldenResult:
    """Run the golden model on uint8 images (N, C, H, W)."""
    ph = encode(model, images)
    n = ph.shape[0]
    phases = [ph] if keep_phases else []
    spikes = np.zeros((n, len(model.layers) + 1), dtype=np.int64)
    sops = np.zeros((n, len(model.layers)), dtype=np.int64)
    spikes[:, 0] = (ph.reshape(n, -1) != model.input_T).sum(1)
    logits = None
    for i in range(len(model.layers)):
        out_ph, acc, s = run_layer(model, i, ph)
        sops[:, i] = s
        if acc is not None:
            logits = acc.reshape(n, -1)
            if keep_phases:
                phases.append(None)
        else:
            code = model.T if l_fires(model, i) else model.code_of_layer_input(i)[1]
            spikes[:, i + 1] = (out_ph.reshape(n, -1) != code).sum(1)
            if keep_phases:
                phases.append(out_ph)
            ph = out_ph
    classes = np.argmax(logits, axis=1).astype(np.int64)  # numpy argmax: first maximum = lowest index
    return GoldenResult(logits=logits, classes=classes, phases=phases, spikes=spikes, sops=sops,
                        detections=detect(model, logits))


def detect(model: IntModel, logits: np.ndarray) -> list | None:
    """The detections of a detector's readout maps (runtime.spec.decode_detections); None for a classifier."""
    if model.task != "detect":
        return None
    shape = tuple(model.layers[-1].out_shape)
    hw = tuple(model.input_shape[1:])
    return [decode_detections(row.reshape(shape), model.head, hw) for row in np.asarray(logits)]


def run_batched(model: IntModel, images: np.ndarray, batch: int = 1000, progress: bool = False, desc: str = "golden"):
    """Run over a large set in batches (progress bar), keeping logits, classes, spikes and sops only."""
    from tqdm import tqdm

    parts = []
    for i in tqdm(range(0, len(images), batch), desc=desc, disable=not progress, unit="batch"):
        r = run(model, images[i:i + batch], keep_phases=False)
        parts.append(r)
    return GoldenResult(
        logits=np.concatenate([r.logits for r in parts]), classes=np.concatenate([r.classes for r in parts]),
        phases=[], spikes=np.concatenate([r.spikes for r in parts]), sops=np.concatenate([r.sops for r in parts]),
        detections=None if model.task != "detect" else [d for r in parts for d in r.detections])


def l_fires(model: IntModel, i: int) -> bool:
    return model.layers[i].fires


def threads() -> int:
    return numba.get_num_threads()
