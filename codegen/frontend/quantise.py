"""Step 4 of the conversion: the integer model for a base Q and T phases (int8 weights per output
channel, decode table, biases and shifted thresholds, the largest fraction bits F that fit)."""
from __future__ import annotations

import math

import numpy as np

from runtime.errors import UserError
from runtime.spec import (MAX_ACC_BITS, MAX_T, IntModel, Layer, SpecError, encode_table, level, shifted_threshold,
                         validate)

from .calibrate import Normalised
from .calibrate import INPUT_Q, INPUT_T


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
                s = np.full(w.shape[0], readout_scale(st.weight))
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


def readout_scale(weight: np.ndarray) -> float:
    """The one weight scale of the readout layer (real weight per int8 step), so that its integer logits
    are the real ones times ``2**F / scale``: ``real = acc * scale / 2**F``."""
    s = float(np.abs(weight).max()) / 127.0
    return s if s > 0 else 1.0 / 127.0


def _decode(Q: float, T: int, F: int) -> np.ndarray:
    """decode_table without its own checks: validate() reports a table with zero entries."""
    d = np.zeros(T + 1, dtype=np.int64)
    d[:T] = np.floor(level(Q, T) * float(2 ** F) + 0.5).astype(np.int64)
    return d
