"""The few-pin board wrapper ``<sym>_pins``: a generated network as a black box, its result serialised to bytes.

Boards with few I/Os (iCE40UP5K-SG48 and the like) cannot bring out a result word of a hundred
bits and more. :class:`PinWrapper` instantiates the network module ``<sym>`` (its Verilog lives in
its own file, ``<sym>.v``) and passes the pixel byte stream straight through; each result leaves as
``ceil(payload_bits / 8)`` bytes, least significant first, through a :class:`ResultSerialiser`.
:func:`pins_verilog` converts the wrapper to Verilog.
"""
from __future__ import annotations

from amaranth import *
from amaranth.hdl import Instance
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["LOAD_PINS", "PINS", "PinWrapper", "ResultSerialiser", "byte_layout", "pins_verilog"]

#: I/O pins of the wrapper: clk, rst, pix[7:0], pix_valid, pix_ready, res[7:0], res_valid, res_ready, res_last.
PINS = 23
#: ... plus ld[7:0], ld_valid, ld_ready, loaded with a RAM store (34 pins).
LOAD_PINS = 11

#: One byte of a serialised result; ``last`` marks the final byte.
byte_layout = data.StructLayout({"data": unsigned(8), "last": unsigned(1)})


def _check_payload_bits(payload_bits) -> int:
    if isinstance(payload_bits, bool) or not isinstance(payload_bits, int) or payload_bits < 1:
        raise ValueError(f"Payload width must be a positive integer, not {payload_bits!r}")
    return payload_bits


class ResultSerialiser(wiring.Component):
    """Sends each ``payload_bits`` wide word of ``i`` as ``nb = ceil(payload_bits / 8)`` bytes on ``o``.

    ``i`` : ``In(stream.Signature(payload_bits))``
        The words. ``i.ready`` is ``~busy``: a word is taken only while nothing is being sent.
    ``o`` : ``Out(stream.Signature(byte_layout))``
        The bytes, least significant first (the word zero-padded to ``nb * 8`` bits);
        ``o.payload.last`` is high on the final byte of a word. ``o.valid`` is ``busy``.

    Registers: ``busy``; ``count`` (``max(1, (nb - 1).bit_length())`` bits), the index of the byte
    on ``o``; ``shift`` (``nb * 8`` bits), the bytes still to send, the current one in ``[7:0]``.
    A taken word is loaded into ``shift`` with ``busy <= 1`` and ``count <= 0``; each byte taken on
    ``o`` shifts ``shift`` right by 8 and increments ``count``, and the last one (``count == nb - 1``)
    clears ``busy``, so back-to-back words cost one idle cycle between them. Reset clears ``busy`` and
    ``count``; ``shift`` keeps its value through reset (it is neither cleared nor loaded or shifted).
    While ``o.valid`` is low, ``o.payload.data`` is whatever ``shift`` holds (0 after a whole word)
    and ``o.payload.last`` is still ``count == nb - 1``. This is cycle for cycle the serialiser of
    the hand-written Verilog wrapper that this module replaced.
    """

    def __init__(self, payload_bits: int):
        self.payload_bits = _check_payload_bits(payload_bits)
        self.nb = -(-payload_bits // 8)
        self.count_bits = max(1, (self.nb - 1).bit_length())
        super().__init__({
            "i": In(stream.Signature(unsigned(payload_bits))),
            "o": Out(stream.Signature(byte_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        nb = self.nb
        busy = Signal()
        count = Signal(self.count_bits)
        shift = Signal(nb * 8, reset_less=True)
        last = Signal()
        m.d.comb += [
            last.eq(count == nb - 1),
            self.i.ready.eq(~busy),
            self.o.valid.eq(busy),
            self.o.payload.data.eq(shift[:8]),
            self.o.payload.last.eq(last),
        ]
        with m.If(~busy):
            with m.If(self.i.valid):
                m.d.sync += [busy.eq(1), count.eq(0)]
        with m.Elif(self.o.ready):
            m.d.sync += count.eq(count + 1)
            with m.If(last):
                m.d.sync += busy.eq(0)
        with m.If(~ResetSignal("sync")):       # shift is neither cleared nor changed in reset
            with m.If(~busy & self.i.valid):
                m.d.sync += shift.eq(self.i.payload)
            with m.Elif(busy & self.o.ready):
                m.d.sync += shift.eq(shift >> 8)
        return m


class PinWrapper(wiring.Component):
    """The network module ``sym`` (a black-box :class:`~amaranth.hdl.Instance`) with few pins.

    Ports (``clk`` and ``rst``, synchronous active-high, come from the ``sync`` domain)

    ``pix[7:0]``, ``pix_valid`` in, ``pix_ready`` out
        The pixel stream, passed to the network's ``i__payload``/``i__valid``/``i__ready``.
    ``res[7:0]``, ``res_valid``, ``res_last`` out, ``res_ready`` in
        Each result of the network's ``o`` stream (``o__payload``, ``payload_bits`` wide, e.g.
        ``{logits, cls}``) as :attr:`nb` bytes, least significant first, ``res_last`` on the final
        one (:class:`ResultSerialiser`; ``o__ready`` is low while a result is being sent).
    ``ld[7:0]``, ``ld_valid`` in, ``ld_ready``, ``loaded`` out (only with ``load``)
        The store image byte stream of a network with a RAM store, passed to its
        ``load__payload``/``load__valid``/``load__ready`` and ``loaded``.

    :data:`PINS` pins, plus :data:`LOAD_PINS` with ``load``.
    """

    def __init__(self, sym: str, payload_bits: int, load: bool = False):
        if not (isinstance(sym, str) and sym.isidentifier() and sym.isascii()):
            raise ValueError(f"Network module name must be a Verilog identifier, not {sym!r}")
        self.sym = sym
        self.payload_bits = _check_payload_bits(payload_bits)
        self.load = bool(load)
        self.nb = -(-payload_bits // 8)
        ports = {
            "pix": In(8), "pix_valid": In(1), "pix_ready": Out(1),
            "res": Out(8), "res_valid": Out(1), "res_ready": In(1), "res_last": Out(1),
        }
        if self.load:
            ports.update({"ld": In(8), "ld_valid": In(1), "ld_ready": Out(1), "loaded": Out(1)})
        super().__init__(ports)

    @property
    def pins(self) -> int:
        """The number of I/O pins (``clk`` and ``rst`` included)."""
        return PINS + (LOAD_PINS if self.load else 0)

    def elaborate(self, platform):
        m = Module()
        m.submodules.serialiser = ser = ResultSerialiser(self.payload_bits)
        conn = dict(
            i_clk=ClockSignal("sync"), i_rst=ResetSignal("sync"),
            i_i__payload=self.pix, i_i__valid=self.pix_valid, o_i__ready=self.pix_ready,
            o_o__payload=ser.i.payload, o_o__valid=ser.i.valid, i_o__ready=ser.i.ready,
        )
        if self.load:
            conn.update(i_load__payload=self.ld, i_load__valid=self.ld_valid, o_load__ready=self.ld_ready,
                        o_loaded=self.loaded)
        m.submodules.net = Instance(self.sym, **conn)
        m.d.comb += [
            self.res.eq(ser.o.payload.data),
            self.res_valid.eq(ser.o.valid),
            self.res_last.eq(ser.o.payload.last),
            ser.o.ready.eq(self.res_ready),
        ]
        return m


def pins_verilog(sym: str, payload_bits: int, load: bool = False) -> str:
    """Verilog of :class:`PinWrapper` as module ``<sym>_pins`` (instantiating ``sym``, which is not
    included), after a header comment. Deterministic: the same arguments give the same text."""
    from amaranth.back import verilog

    top = PinWrapper(sym, payload_bits, load)
    ld_doc = ("\n// The weight store image (weights.bin) goes in once after configuration on ld/ld_valid/ld_ready,"
              "\n// one byte per transfer in file order; loaded goes high when it is complete.") if load else ""
    header = f"""// Generated by onespike codegen (fpga target). Do not edit.
// {sym}_pins: {sym} with {top.pins} pins. Pixels in as a valid/ready byte stream; each result
// ({{logits, cls}}, {payload_bits} bits) leaves as {top.nb} bytes, least significant first (byte 0 holds cls),
// with res_last on the final byte.{ld_doc}
"""
    return header + verilog.convert(top, name=f"{sym}_pins", emit_src=False)
