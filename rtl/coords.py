"""Constant division by reciprocal multiplication, and which windows an input pixel falls in.

Events carry a raster index (see :mod:`rtl.layouts`); a row-buffered engine takes the row from the
row markers and splits the offset in the row, ``x * C + c``, dividing by the constant ``C`` (when it
is not a power of two) with a "magic" reciprocal and a shift, the constant pair checked
exhaustively over every value the hardware can see (so the division is exact by construction).

For a window of ``k`` taps, stride ``s`` and padding ``p`` along one axis, the outputs that read
input coordinate ``y`` are the contiguous run ``o in [lo, lo + n)`` where
``o * s - p <= y <= o * s - p + k - 1`` and ``0 <= o < out``; the tap used by output ``o`` is
``y + p - o * s`` (the first one, for ``o = lo``, is ``tap0``; each further output is ``s`` taps
earlier). :func:`window_runs` tabulates ``(lo, n, tap0)`` per input coordinate.
"""
import functools

import numpy as np
from amaranth.hdl import Const, Value, unsigned

__all__ = ["magic_divisor", "div_const", "window_runs", "ring_plan"]


@functools.lru_cache(maxsize=256)
def magic_divisor(divisor: int, n_max: int) -> tuple[int, int]:
    """``(mult, shift)`` with ``(n * mult) >> shift == n // divisor`` for every ``0 <= n <= n_max``:
    the smallest such ``shift``, with ``mult = ceil(2**shift / divisor)``.

    The shift is found from an exact criterion: with ``e = mult * divisor - 2**shift`` (``0 <= e <
    divisor``) and ``n = q * divisor + r``, ``(n * mult) >> shift == q`` holds iff ``n * e < (divisor -
    r) * 2**shift``, i.e. ``(n * e) >> shift < divisor - r``, and for each residue ``r`` the largest
    such ``n`` is the hardest, so only the last ``divisor`` dividends need checking. The pair found is
    then checked exhaustively over every ``0 <= n <= n_max`` (vectorised: index spaces are at most
    ``2**20``, so the products fit 64 bits)."""
    if not (isinstance(divisor, (int, np.integer)) and divisor >= 1):
        raise ValueError(f"Divisor must be a positive integer, not {divisor!r}")
    if not (isinstance(n_max, (int, np.integer)) and n_max >= 0):
        raise ValueError(f"Largest dividend must be a non-negative integer, not {n_max!r}")
    d, n_max = int(divisor), int(n_max)
    wide = n_max.bit_length() + d.bit_length() > 62     # products beyond int64: exact Python ints
    dt = object if wide else np.int64
    tail = np.arange(max(0, n_max - d + 1), n_max + 1, dtype=dt)     # the largest n of every residue
    room = d - tail % d
    for shift in range(0, 2 * n_max.bit_length() + d.bit_length() + 2):
        mult = -(-(1 << shift) // d)       # ceil(2**shift / divisor)
        e = mult * d - (1 << shift)
        if ((tail * e) >> shift < room).all():
            break
    else:
        raise AssertionError("unreachable: a large enough shift always works")
    n = np.arange(n_max + 1, dtype=object if wide or (n_max * mult).bit_length() > 62 else np.int64)
    if not ((n * mult) >> shift == n // d).all():
        raise AssertionError(f"magic divisor of {d} up to {n_max} is wrong: {mult}, {shift}")
    return int(mult), int(shift)


def div_const(value: Value, divisor: int, n_max: int) -> Value:
    """``value // divisor`` for an unsigned ``value <= n_max``, as one constant multiply and a shift."""
    if divisor == 1:
        return value
    mult, shift = magic_divisor(divisor, n_max)
    return (value * Const(mult, unsigned(max(1, mult.bit_length())))) >> shift


def window_runs(size: int, k: int, s: int, p: int, out: int) -> np.ndarray:
    """``(size, 3)`` int table ``(lo, n, tap0)``: the outputs (and first tap) that read each input
    (``(0, 0, 0)`` for an input no window reads). Output ``o`` reads ``o*s - p .. o*s - p + k - 1``, so
    input ``y`` is read by ``ceil((y + p - k + 1) / s) <= o <= floor((y + p) / s)``, within ``0 .. out-1``."""
    y = np.arange(int(size), dtype=np.int64)
    lo = np.maximum(0, -((k - 1 - y - p) // s))          # ceil((y + p - k + 1) / s)
    hi = np.minimum(int(out) - 1, (y + p) // s)
    n = np.maximum(0, hi - lo + 1)
    runs = np.stack([lo, n, y + p - lo * s], axis=1)
    runs[n == 0] = 0
    return runs


def ring_plan(size: int, k: int, s: int, p: int, out: int) -> tuple[int, np.ndarray]:
    """Row buffering of a window layer along one axis, when the input arrives row by row.

    Output row ``o`` is complete once input row ``last(o) = min(size - 1, o*s - p + k - 1)`` has
    arrived. Returns ``(rows, close)``: ``close[y]`` output rows complete after input row ``y``
    (consecutive; they sum to ``out``), and ``rows``, the most output rows open at once (those
    fed by input row ``y`` and every row not yet complete before it) — the ring of accumulator or
    phase rows an engine keeps, output row ``o`` in ring slot ``o % rows``."""
    size, k, s, p, out = (int(v) for v in (size, k, s, p, out))
    runs = window_runs(size, k, s, p, out)
    last = np.clip(np.arange(out, dtype=np.int64) * s - p + k - 1, 0, size - 1)
    close = np.bincount(last, minlength=size).astype(np.int64)
    closed_before = np.concatenate([[0], np.cumsum(close)[:-1]])
    hi = np.where(runs[:, 1] > 0, runs[:, 0] + runs[:, 1] - 1, closed_before - 1)
    rows = int(max(1, (hi - closed_before + 1).max()))
    return rows, close
