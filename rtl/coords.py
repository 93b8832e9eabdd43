"""Flat neuron index <-> (channel, row, column), and which windows an input pixel falls in.

Events carry a flat ``(C, H, W)`` index (see :mod:`rtl.layouts`); the conv and pool engines need
the coordinates. Dividing by the constants ``H * W`` and ``W`` is done by multiplying with a
"magic" reciprocal and shifting, with the constant pair checked exhaustively over every index the
hardware can see (so the division is exact by construction, not by argument).

For a window of ``k`` taps, stride ``s`` and padding ``p`` along one axis, the outputs that read
input coordinate ``y`` are the contiguous run ``o in [lo, lo + n)`` where
``o * s - p <= y <= o * s - p + k - 1`` and ``0 <= o < out``; the tap used by output ``o`` is
``y + p - o * s`` (the first one, for ``o = lo``, is ``tap0``; each further output is ``s`` taps
earlier). :func:`window_runs` tabulates ``(lo, n, tap0)`` per input coordinate.
"""
import numpy as np
from amaranth.hdl import Const, Value, unsigned

__all__ = ["magic_divisor", "div_const", "unflatten", "window_runs"]


def magic_divisor(divisor: int, n_max: int) -> tuple[int, int]:
    """``(mult, shift)`` with ``(n * mult) >> shift == n // divisor`` for every ``0 <= n <= n_max``."""
    if not (isinstance(divisor, (int, np.integer)) and divisor >= 1):
        raise ValueError(f"Divisor must be a positive integer, not {divisor!r}")
    if not (isinstance(n_max, (int, np.integer)) and n_max >= 0):
        raise ValueError(f"Largest dividend must be a non-negative integer, not {n_max!r}")
    n = np.arange(int(n_max) + 1, dtype=object)
    want = n // int(divisor)
    for shift in range(0, 2 * int(n_max).bit_length() + int(divisor).bit_length() + 2):
        mult = -(-(1 << shift) // int(divisor))       # ceil(2**shift / divisor)
        if ((n * mult) >> shift == want).all():
            return int(mult), int(shift)
    raise AssertionError("unreachable: a large enough shift always works")


def div_const(value: Value, divisor: int, n_max: int) -> Value:
    """``value // divisor`` for an unsigned ``value <= n_max``, as one constant multiply and a shift."""
    if divisor == 1:
        return value
    mult, shift = magic_divisor(divisor, n_max)
    return (value * Const(mult, unsigned(max(1, mult.bit_length())))) >> shift


def unflatten(index: Value, shape: tuple[int, int, int]) -> tuple[Value, Value, Value]:
    """``(c, y, x)`` of a flat index into a ``(C, H, W)`` activation (combinational)."""
    C, H, W = (int(v) for v in shape)
    c = div_const(index, H * W, C * H * W - 1)
    r = (index - c * (H * W))[:max(1, (H * W - 1).bit_length())]
    y = div_const(r, W, H * W - 1)
    x = (r - y * W)[:max(1, (W - 1).bit_length())]
    return c, y, x


def window_runs(size: int, k: int, s: int, p: int, out: int) -> np.ndarray:
    """``(size, 3)`` int table ``(lo, n, tap0)``: the outputs (and first tap) that read each input."""
    runs = np.zeros((size, 3), dtype=np.int64)
    for y in range(size):
        os_ = [o for o in range(out) if o * s - p <= y <= o * s - p + k - 1]
        if os_:
            assert os_ == list(range(os_[0], os_[-1] + 1))
            runs[y] = (os_[0], len(os_), y + p - os_[0] * s)
        else:
            runs[y] = (0, 0, 0)
    return runs
