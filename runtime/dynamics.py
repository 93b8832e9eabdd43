"""Reference dynamics: the seed's one-spike neuron simulated step by step (not used for inference).

This is the time-stepped model of One-Spike SNN (seed 004, as implemented by its authors with the
fire window W = T), kept to show that the closed form the golden model uses gives the same spikes.

Timeline. Layer l integrates during global steps ``[l*T, (l+1)*T)`` and fires during
``[(l+1)*T, (l+2)*T)``, which is the integrate window of layer l+1 (layers are pipelined one window
apart). The input layer fires in window 0. Per neuron and step:

* integrate step k (0..T-1):  ``v <- v * Q + sum_j w_j * s_j(k)``, with the bias injected once at
  step 0 (``v = b + ...``), the canonical exact rule;
* fire step f (0..T-1): ``v <- v * Q``, then spike if ``v >= theta_step[f]`` and the neuron has not
  spiked yet (a spike is a plain binary event; the receiver's growth by Q applies the weight Q**-f).

After the integrate window ``v = Q**(T-1) * a`` with ``a = b + sum_j w_j Q**-k_j``, and at fire step f
``v = Q**(T+f) * a``; with ``theta_step[f] = Q**(T+f) * theta_f`` the neuron fires at the first f with
``a >= theta_f``: the closed form. With the shifted threshold ``theta_f = Q**-f (1+1/Q)/2`` the step
threshold is the constant ``Q**T (1+1/Q)/2`` of the authors' code. Max-pool passes the first spike in its window (binary OR,
then blocked); avg-pool is a firing layer with weights ``ratio / k**2``. The readout returns ``a`` =
``v / Q**(T-1)`` at the end of its integrate window.

Arithmetic is generic: pass Python ``Fraction`` values (numpy object arrays) for an exact run, or
float64 arrays.
"""
from __future__ import annotations

import numpy as np


def _conv_windows(x: np.ndarray, k: int, s: int, p: int, fill) -> np.ndarray:
    """(C, H, W) -> (C, OH, OW, k, k) windows (object-safe)."""
    c, h, w = x.shape
    xp = np.full((c, h + 2 * p, w + 2 * p), fill, dtype=x.dtype)
    xp[:, p:p + h, p:p + w] = x
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.empty((c, oh, ow, k, k), dtype=x.dtype)
    for y in range(oh):
        for xx in range(ow):
            out[:, y, xx] = xp[:, y * s:y * s + k, xx * s:xx * s + k]
    return out


def synaptic_input(stage: dict, s: np.ndarray) -> np.ndarray:
    """Weighted sum of a binary spike map ``s`` (one step) into the stage's outputs."""
    kind = stage["kind"]
    if kind == "dense":
        return stage["weight"].dot(s.reshape(-1))
    if kind == "conv2d":
        win = _conv_windows(s, stage["kernel"], stage["stride"], stage["padding"], s.dtype.type(0) if s.dtype != object else 0)
        # (C, OH, OW, k, k) x (O, C, k, k) -> (O, OH, OW)
        return np.tensordot(stage["weight"], win, axes=([1, 2, 3], [0, 3, 4]))
    if kind == "avgpool":
        k = stage["kernel"]
        win = _conv_windows(s, k, stage["stride"], stage["padding"], 0)
        return win.sum(axis=(3, 4)) * stage["ratio"][:, None, None] / (k * k)
    raise ValueError(kind)


def simulate(stages: list[dict], input_values: np.ndarray, Q, T: int, theta: np.ndarray):
    """Time-stepped run of one input. Returns (spike phase per firing stage incl. input, readout a).

    ``stages``: dicts with kind in {dense, conv2d, maxpool, avgpool}, ``weight``/``bias`` (normalised
    floats or Fractions), ``kernel``/``stride``/``padding``, ``ratio`` for avgpool, and ``fires``.
    ``input_values``: the input activations in [0, 1] (C, H, W). ``theta``: ``theta_f`` (length T).
    Phases use ``T`` for "no spike".
    """
    one = Q / Q  # 1 in the arithmetic of Q
    # the input layer: a neuron preloaded with its value, no synaptic input, firing in window 0
    th_step = np.array([theta[f] * Q ** (T + f) for f in range(T)], dtype=object)
    v_in = np.array(input_values, dtype=object) * Q ** (T - 1)  # preloaded at step 0 of window -1
    done = np.zeros(v_in.shape, dtype=bool)
    phase = np.full(v_in.shape, T, dtype=np.int64)
    cur = []
    for f in range(T):
        v_in = v_in * Q
        s = (v_in >= th_step[f]) & ~done
        phase[s] = f
        done |= s
        cur.append(s.astype(object) * one)
    phases = [phase]
    for st in stages:
        if st["kind"] == "maxpool":
            # OR of the window at each step, blocked after the first output spike: same window
            out = []
            seen = None
            for f in range(T):
                win = _conv_windows(cur[f].astype(object), st["kernel"], st["stride"], st["padding"], 0 * one)
                s = (win.sum(axis=(3, 4)) > 0)
                if seen is None:
                    seen = np.zeros(s.shape, dtype=bool)
                s = s & ~seen
                seen |= s
                out.append(s.astype(object) * one)
            cur = out
            continue
        # integrate window of this layer = fire window of the previous one
        bias = st.get("bias")
        v = None
        for k in range(T):
            x = synaptic_input(st, cur[k])
            if v is None:  # step 0: v = 0 * Q + x + b (the bias is injected once)
                v = x.astype(object)
                if bias is not None:
                    b = np.array(bias, dtype=object)
                    v = v + (b[:, None, None] if v.ndim == 3 else b)
            else:
                v = v * Q + x
        if not st["fires"]:
            return phases, v / Q ** (T - 1)
        done = np.zeros(v.shape, dtype=bool)
        phase = np.full(v.shape, T, dtype=np.int64)
        out = []
        for f in range(T):
            v = v * Q
            s = (v >= th_step[f]) & ~done
            phase[s] = f
            done |= s
            out.append(s.astype(object) * one)
        phases.append(phase)
        cur = out
    raise ValueError("the network has no readout stage")


def closed_form(stages: list[dict], input_values: np.ndarray, Q, T: int, theta: np.ndarray):
    """The closed form of the same network: a = W * Q**-f + b; f = first phase with a >= theta_f."""
    lv = [Q ** -f for f in range(T)] + [0 * Q]

    def fire(a):
        ph = np.full(a.shape, T, dtype=np.int64)
        for idx in np.ndindex(a.shape):
            for f in range(T):
                if a[idx] >= theta[f]:
                    ph[idx] = f
                    break
        return ph

    def dec(ph):
        return np.vectorize(lambda f: lv[f], otypes=[object])(ph)

    ph = fire(np.array(input_values, dtype=object))
    phases = [ph]
    for st in stages:
        if st["kind"] == "maxpool":
            win = _conv_windows(ph, st["kernel"], st["stride"], st["padding"], T)
            ph = win.min(axis=(3, 4))
            continue
        x = synaptic_input(st, dec(ph))
        bias = st.get("bias")
        if bias is not None:
            b = np.array(bias, dtype=object)
            x = x + (b[:, None, None] if x.ndim == 3 else b)
        if not st["fires"]:
            return phases, x
        ph = fire(x)
        phases.append(ph)
    raise ValueError("the network has no readout stage")
