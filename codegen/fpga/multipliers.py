"""The multipliers of a design (lane multipliers, constant multiplies of the index and address
arithmetic) and the DSP blocks Yosys's ``mul2dsp`` maps them to on a board."""
from __future__ import annotations

from dataclasses import dataclass


from boards.kinds import FpgaBoard
from runtime.spec import IntModel

from .design import inspect_network
from .memories import is_conv_engine, varying_bits, weight_words


@dataclass(frozen=True)
class Mul:
    """One multiplier of the design as Yosys sees it before DSP mapping (after ``wreduce``): a lane
    multiplier ``int8 x D[f]`` or a multiply by a constant (``const``: its odd part; the constant's
    trailing zero bits are a shift)."""

    site: str       # layer<k>.<where>
    a_bits: int     # the variable operand
    b_bits: int     # the other operand (the constant's odd part)
    y_bits: int     # product bits that are used
    const: int | None = None
    # A lane no channel uses (a firing layer with fewer channels than lanes): its accumulator bits are
    # never read, and Yosys's iCE40 flow removes the multiplier with them before DSP mapping (the
    # ECP5 flow maps it first; measured on tests/test_synth.py's small conv model).
    dead: bool = False


def _tz(c: int) -> int:
    return (c & -c).bit_length() - 1


def _ubits(n: int) -> int:
    """Bits of ``Signal(range(n))`` (0 for ``range(1)``)."""
    return max(0, int(n) - 1).bit_length()


def _mul_width(a: int, c: int) -> int:
    """Width of ``x * c`` (``x`` ``a`` bits wide, ``c`` a Python int) as Amaranth builds it; 0 when
    ``x`` has no bits (the product is the constant 0, which Yosys folds away); ``a`` for ``c == 1``
    (Yosys drops the multiply and the zero-extension)."""
    if a <= 0:
        return 0
    return a if c == 1 else a + max(1, int(c).bit_length())


def _add_width(a: int, b: int) -> int:
    """Width of ``x + y``; adding a constant 0 (a folded product or a constant table) adds no bit."""
    return max(a, b) + 1 if a > 0 and b > 0 else max(a, b)


def _const_mul(out: list, site: str, a: int, const: int, need: int, copies: int = 1) -> None:
    """Record ``x * const`` (``x``: ``a`` bits; ``need``: bits of the product used downstream) unless Yosys
    turns it into a shift (``const`` a power of two, or 0), or it has no variable input or no used bits.
    ``copies``: how many identical multipliers Yosys keeps (see :func:`_table`)."""
    const = int(const)
    if const <= 0 or a <= 0:
        return
    tz = _tz(const)
    odd = const >> tz
    y = min(a + odd.bit_length(), need - tz)
    if odd == 1 or y <= 0:
        return
    for i in range(copies):
        out.append(Mul(site if copies == 1 else f"{site}#{i}", a, odd.bit_length(), y, odd))


def _row_offset_muls(out: list, site: str, C: int, W: int) -> None:
    """The split of an event's offset in its row, ``off = x * C + c`` (raster index minus the row's
    base, :mod:`rtl.layouts`): bit slices when ``C`` is a power of two, otherwise ``x = off // C`` by a
    reciprocal multiply and shift, and ``off - x * C``."""
    from rtl.coords import magic_divisor

    if C & (C - 1) == 0:
        return
    ob = max(1, (W * C - 1).bit_length())
    mult, shift = magic_divisor(C, W * C - 1)
    _const_mul(out, f"{site}.x", ob, mult, ob + mult.bit_length())
    x_bits = max(0, ob + mult.bit_length() - shift)
    _const_mul(out, f"{site}.x*C", x_bits, C, max(1, (C - 1).bit_length()))


def engine_multipliers(k: int, e) -> list[Mul]:
    """Every multiplier engine ``k`` (of :func:`network`) builds, with the widths Yosys sees.

    ConvEngine (dense, conv2d, avg-pool): ``lanes`` lane multipliers ``W x D[f]`` (signed int8 times
    the unsigned decode value: ``8 x (d+1)`` bits; an avg-pool's 0/1 weights are still read as int8,
    and DSP mapping happens before Yosys looks at ROM contents); for a row-buffered one the split of
    the row offset (none when ``C_in`` is a power of two) and ``c * G`` in the first weight address
    (the other address terms are constant tables, the output index a counter); a readout's output
    index ``(g*lanes + lane)*OH*OW`` (its logits keep the flat index). MaxPoolEngine: the split of
    the row offset. Products by powers of two are shifts and not listed."""
    out: list[Mul] = []
    site = f"layer{k}"
    if is_conv_engine(e):
        C_in, H, W = e.in_shape
        C_out, OH, OW = e.out_shape
        G, L = e.groups, e.lanes
        d_bits = max(1, int(e.decode.max()).bit_length())
        for lane in range(L):
            # signed 8 x signed (d_bits + 1) (the decode value zero-extended); the product of an int8
            # and a non-negative value needs 8 + d_bits bits.
            dead = not e.readout and G == 1 and lane >= C_out
            out.append(Mul(f"{site}.lane{lane}", 8, d_bits + 1, 8 + d_bits, dead=dead))
        if not e.frame:
            _row_offset_muls(out, f"{site}.row_offset", C_in, W)
        # first_w = tap_y[y] + tap_x[x] + c * G (none if every weight word is the same, e.g. a
        # one-channel avg-pool: Yosys replaces the weight ROM by a constant and drops its address logic)
        if getattr(e, "store", "rom") == "ram" or varying_bits(weight_words(e), 8):
            w_bits = _ubits(e.weight_depth)
            _const_mul(out, f"{site}.first_w.c*G", _ubits(C_in), G, w_bits)
        o_bits = max(1, (e.n_out - 1).bit_length())
        P = e.n_pos
        g_bits, l_bits = _ubits(G), _ubits(L)
        if getattr(e, "fold_bias", False):
            # One FireUnit: row d_g * L + lane (into its row index).
            r_bits = max(1, (C_out - 1).bit_length())
            _const_mul(out, f"{site}.row.g*L", g_bits, L, r_bits)
        if e.readout:
            _const_mul(out, f"{site}.index.g*L", g_bits, L, o_bits - _tz(P))
            _const_mul(out, f"{site}.index*P", _add_width(_mul_width(g_bits, L), l_bits), P, o_bits)
            if e.acc_bits % 2 == 0:
                # word[lane]: a part select at lane * acc_bits. Yosys's peepopt (shiftmul) turns it
                # into a multiplexer when acc_bits is odd; an even one is split into a shift first,
                # and the multiply by its odd part stays.
                _const_mul(out, f"{site}.lane_select", l_bits, e.acc_bits,
                           l_bits + e.acc_bits.bit_length())
    else:
        C, _, W = e.in_shape
        _row_offset_muls(out, f"{site}.row_offset", C, W)
    return out


DSP_MIN_WIDTH = 2   # synth_ecp5 / synth_ice40 -dsp: mul2dsp DSP_A_MINWIDTH = DSP_B_MINWIDTH = 2


def mul_dsps(a: int, b: int, y: int, b_: FpgaBoard, top: bool = True) -> int:
    """DSP blocks for one ``a x b`` multiplier (``y`` product bits) after Yosys's ``mul2dsp``: operands
    or a product narrower than the board's minimums stay in soft logic; wider ones are split into
    pieces of at most ``dsp_a_max x dsp_b_max`` (each piece checked again)."""
    if a < DSP_MIN_WIDTH or b < DSP_MIN_WIDTH or y < b_.dsp_y_min:
        return 0
    if top and a < b:
        a, b = b, a
    if a > b_.dsp_a_max:
        n = (a - 1) // b_.dsp_a_max
        last = a - n * b_.dsp_a_max
        return (n * mul_dsps(b_.dsp_a_max, b, min(y, b + b_.dsp_a_max), b_, False)
                + mul_dsps(last, b, b + last, b_, False))
    if b > b_.dsp_b_max:
        n = (b - 1) // b_.dsp_b_max
        last = b - n * b_.dsp_b_max
        return (n * mul_dsps(a, b_.dsp_b_max, min(y, a + b_.dsp_b_max), b_, False)
                + mul_dsps(a, last, a + last, b_, False))
    return 1


def all_multipliers(model: IntModel, lanes: int, net=None, store="rom") -> list[Mul]:
    net = net if net is not None else inspect_network(model, lanes, 0, store)
    return [mu for k, e in enumerate(net.engines) for mu in engine_multipliers(k, e)]


def multipliers(model: IntModel, lanes: int, b: FpgaBoard | None, net=None, store="rom") -> dict:
    """The multipliers of the design (:func:`engine_multipliers`) and, for a board, the DSP blocks
    Yosys maps them to (``dsp``; per multiplier in ``dsp_by_site``)."""
    net = net if net is not None else inspect_network(model, lanes, 0, store)
    muls = all_multipliers(model, lanes, net)
    lane = [mu for mu in muls if mu.const is None]
    const = [mu for mu in muls if mu.const is not None]
    operands = []
    for k, e in enumerate(net.engines):
        if is_conv_engine(e):
            operands.append(f"int8 x uint{max(1, int(e.decode.max()).bit_length())}")
        else:
            operands.append("none (max-pool)")
    out = {"lane_multipliers": len(lane), "constant_multipliers": len(const), "operands": operands,
           "constant": [{"site": mu.site, "a_bits": mu.a_bits, "const": mu.const, "y_bits": mu.y_bits}
                        for mu in const]}
    if b is not None:
        per = {mu.site: 0 if mu.dead and b.family == "ice40" else mul_dsps(mu.a_bits, mu.b_bits, mu.y_bits, b)
               for mu in muls}
        out["dsp"] = sum(per.values())
        out["dsp_lane"] = sum(per[mu.site] for mu in lane)
        out["dsp_constant"] = sum(per[mu.site] for mu in const)
        out["dsp_available"] = b.dsp_count
    return out
