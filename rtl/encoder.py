"""Input encoding: pixels in, spike events of the input code out."""
import numpy as np
from amaranth import *
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import PHASE_BITS, event_layout

__all__ = ["PixelEncoder"]


class PixelEncoder(wiring.Component):
    """Encode a stream of uint8 pixels into spike events with the 256-entry table ``E``.

    Pixels arrive one per transfer in ``(H, W, C)`` order (camera order: row by row, the channels
    of a pixel together; for ``C = 1`` this is also the ``(C, H, W)`` order); a frame is exactly
    ``n_pixels`` of them (the frame length is fixed, so the pixel stream carries no delimiter).
    Pixel number ``j`` of a frame is the neuron of raster index ``j`` (:mod:`rtl.layouts`) and
    becomes the event ``(index=j, phase=E[p])`` if ``E[p] != no_spike``, and nothing otherwise.
    After the last pixel of each row (``row_pixels = W * C`` of them) the encoder sends an
    end-of-row marker (``eol = 1``), and after the frame's last row's marker one end-of-frame
    marker (``eof = 1``), also when no pixel of the row or frame spiked.

    Parameters
    ----------
    encode : array of 256 ints
        The input-encoding table ``E`` (``IntModel.encode``), values ``0..no_spike``.
    no_spike : int
        The no-spike code of the input (``IntModel.input_T``).
    n_pixels : int
        Pixels per frame (``C * H * W``).
    row_pixels : int
        Pixels per row (``W * C``; a divisor of ``n_pixels``). Default: the whole frame is one row.

    Members
    -------
    i : ``In(stream.Signature(unsigned(8)))``
        Pixels.
    o : ``Out(stream.Signature(event_layout(n_pixels)))``
        Spike events ``{index, phase, eol, eof}`` (see :mod:`rtl.layouts`).

    Cycle behaviour: the table is a synchronous ROM, so an event leaves one cycle after its pixel
    was accepted. With ``o.ready`` held high the encoder takes one pixel per cycle; each marker
    costs one extra cycle (``H + 1`` per frame). Back-pressure on ``o`` stalls ``i``; gaps on ``i``
    are bubbles.
    """

    def __init__(self, encode, no_spike: int, n_pixels: int, row_pixels: int | None = None):
        encode = np.asarray(encode)
        if encode.shape != (256,):
            raise ValueError(f"Encode table must hold 256 entries, not {encode.shape}")
        if not (isinstance(no_spike, (int, np.integer)) and 1 <= no_spike < 2 ** PHASE_BITS):
            raise ValueError(f"No-spike code must be an integer in 1..{2 ** PHASE_BITS - 1}, not {no_spike!r}")
        if encode.min() < 0 or encode.max() > no_spike:
            raise ValueError(f"Encode table values must lie in 0..{no_spike}")
        if not (isinstance(n_pixels, int) and n_pixels >= 1):
            raise ValueError(f"Pixel count must be a positive integer, not {n_pixels!r}")
        row_pixels = n_pixels if row_pixels is None else row_pixels
        if not (isinstance(row_pixels, int) and row_pixels >= 1 and n_pixels % row_pixels == 0):
            raise ValueError(f"Row length must be a positive divisor of {n_pixels}, not {row_pixels!r}")
        self.row_pixels = row_pixels
        self.encode = [int(x) for x in encode]
        self.no_spike = int(no_spike)
        self.n_pixels = n_pixels
        super().__init__({
            "i": In(stream.Signature(unsigned(8))),
            "o": Out(stream.Signature(event_layout(n_pixels))),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.n_pixels

        m.submodules.rom = rom = memory.Memory(shape=unsigned(PHASE_BITS), depth=256, init=self.encode)
        rd = rom.read_port()

        count = Signal(range(n))        # index of the next pixel to accept
        col = Signal(range(self.row_pixels))   # its place in its row
        s_valid = Signal()              # the ROM output holds the phase of pixel s_index
        s_index = Signal(range(n))
        s_eol = Signal()                # ... and that pixel ends a row
        s_last = Signal()               # ... and the frame
        eol_pending = Signal()          # a row's marker is due on o
        eof_pending = Signal()          # the frame's marker is due on o (after the last row's)

        spike = rd.data != self.no_spike
        marker = eol_pending | eof_pending
        # The held pixel leaves the stage: silent pixels are dropped, spikes when o takes them.
        # Markers go first, so a row's events never overtake the previous row's marker.
        consume = s_valid & ~marker & (~spike | self.o.ready)
        m.d.comb += [
            self.i.ready.eq(~marker & (~s_valid | consume)),
            # The read enable follows i.ready so that a stalled stage keeps its ROM output.
            rd.addr.eq(self.i.payload),
            rd.en.eq(self.i.ready),
        ]

        with m.If(eol_pending):
            m.d.comb += [self.o.valid.eq(1), self.o.payload.eol.eq(1)]
            with m.If(self.o.ready):
                m.d.sync += eol_pending.eq(0)
        with m.Elif(eof_pending):
            m.d.comb += [self.o.valid.eq(1), self.o.payload.eof.eq(1)]
            with m.If(self.o.ready):
                m.d.sync += eof_pending.eq(0)
        with m.Else():
            m.d.comb += [
                self.o.valid.eq(s_valid & spike),
                self.o.payload.index.eq(s_index),
                self.o.payload.phase.eq(rd.data),
            ]

        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                s_valid.eq(1),
                s_index.eq(count),
                s_eol.eq(col == self.row_pixels - 1),
                s_last.eq(count == n - 1),
                count.eq(Mux(count == n - 1, 0, count + 1)),
                col.eq(Mux(col == self.row_pixels - 1, 0, col + 1)),
            ]
        with m.Elif(consume):
            m.d.sync += s_valid.eq(0)
        with m.If(consume & s_eol):
            m.d.sync += eol_pending.eq(1)
        with m.If(consume & s_last):
            m.d.sync += eof_pending.eq(1)
        return m
