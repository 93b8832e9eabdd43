"""Event-driven max-pool layer: keep the earliest spike phase of every window."""
import numpy as np
from amaranth import *
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .coords import div_const, ring_plan, window_runs
from .layouts import PHASE_BITS, event_layout

__all__ = ["MaxPoolEngine"]


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _positive(name, v) -> int:
    if not (_is_int(v) and v >= 1):
        raise ValueError(f"{name} must be a positive integer, not {v!r}")
    return int(v)


class MaxPoolEngine(wiring.Component):
    """One max-pool layer ``f_out[c, oy, ox] = min_{window} f_in`` (earliest spike), fed by spike events.

    Padding and silent inputs count as "no spike" (the code ``T``); input and output share the code.
    An output of ``(C, OH, OW)``, ``OH = (H + 2p - k) // s + 1`` (likewise ``OW``). The engine is
    row-buffered (:func:`rtl.coords.ring_plan`): it keeps the phase words of a ring of
    ``ring_rows`` output rows (1 when ``k == s``) in a synchronous-read memory of
    ``words = ring_rows * OW * C`` words of ``T.bit_length()`` bits, word ``(slot * OW + ox) * C + c``
    for output row ``oy`` in slot ``oy % ring_rows``.

    Frame behaviour (streams in raster order with end-of-row markers, :mod:`rtl.layouts`)
        1. *Scatter.* An input spike at ``(c, y, x)`` (``y`` from the row counter, ``x * C + c`` its
           offset in the row) lowers every output whose window contains it to ``min(word, f)``:
           the run of ``ny`` output rows times ``nx`` output columns that
           :func:`rtl.coords.window_runs` gives for ``y`` and ``x`` (one output when ``k == s``;
           none for an input that only padded windows would reach, e.g. the last row of an odd
           ``H`` with ``k = s = 2``). Events of a row may come in any order, back to back.
           Pipeline: input register (coordinates) -> issuer (one output address per cycle) ->
           read-modify-write (the read port is transparent, so back-to-back updates of one word
           are exact).
        2. *Drain*, row by row: once input row ``y``'s end-of-row marker has passed the pipeline,
           the ``close_rows[y]`` output rows it completes are read in raster order (``ox``, then
           ``c``), each spiking neuron (``word < T``) leaves as an event ``(index, word)``, every
           word is set back to ``T`` for the row that reuses the slot, and each row ends with an
           end-of-row marker. The end-of-frame marker then leaves as one marker. Output
           back-pressure stalls the drain; meanwhile the input register may take the next event.

        After reset the engine writes ``T`` to every word (``words`` cycles) before ``i`` becomes
        ready: memories have no reset, and a reset in the middle of a frame leaves one half built.

    Cycles (no input gaps, no output stalls)
        An event that covers ``m = ny * nx`` outputs occupies the issuer ``max(1, m)`` cycles
        (``m <= ceil(k / s) ** 2``; ``k == s``, ``p == 0``, as in every shipped model, gives
        ``m = 1``: one event per cycle). An end-of-row marker costs 2 cycles, plus ``OW * C + 1``
        per output row it completes (one per word, one for the row's marker); the end-of-frame
        marker 3. A frame back to back is ``sum max(1, m) + 2 H + OH (OW C + 1) + 3`` cycles (tested
        exactly). After reset, ``words`` cycles of clearing before ``i`` is ready.

    Parameters
    ----------
    in_shape : (C, H, W)
        Input activation shape.
    kernel, stride, padding : int
        ``k >= 1``, ``s >= 1``, ``0 <= p`` with ``2 * p <= k`` (as in the spec).
    T : int
        The phase code (``1..255``): phases ``0..T-1`` are spikes, ``T`` means no spike.

    Members
    -------
    i : ``In(stream.Signature(event_layout(C * H * W)))``
        Input spike events ``{index, phase, eol, eof}`` (raster index).
    o : ``Out(stream.Signature(event_layout(C * OH * OW)))``
        Output spike events, in increasing (raster) index, with the row and frame markers.
    """

    readout = False  # so that code iterating over engines treats it as a firing layer
    groups = 1
    lanes = 1

    def __init__(self, in_shape, kernel: int, stride: int, padding: int, T: int):
        try:
            shape = tuple(in_shape)
        except TypeError:
            shape = None
        if shape is None or len(shape) != 3 or not all(_is_int(v) and v >= 1 for v in shape):
            raise ValueError(f"Input shape must be (C, H, W) of positive integers, not {in_shape!r}")
        k = _positive("Kernel size", kernel)
        s = _positive("Stride", stride)
        if not (_is_int(padding) and padding >= 0):
            raise ValueError(f"Padding must be a non-negative integer, not {padding!r}")
        p = int(padding)
        if 2 * p > k:
            raise ValueError(f"Padding must be at most half the kernel, not {p} for kernel {k}")
        if not (_is_int(T) and 1 <= T <= (1 << PHASE_BITS) - 1):
            raise ValueError(f"Phase code T must be an integer in 1..{(1 << PHASE_BITS) - 1}, not {T!r}")
        T = int(T)
        shape = tuple(int(v) for v in shape)
        C, H, W = shape
        OH, OW = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        if H + 2 * p < k or W + 2 * p < k:
            raise ValueError(f"Kernel {k} with padding {p} does not fit the input {H}x{W}")
        self.in_shape, self.out_shape = shape, (C, OH, OW)
        self.kernel, self.stride, self.padding, self.T = k, s, p, T
        self.n_in, self.n_out = C * H * W, C * OH * OW
        self.row_runs = window_runs(H, k, s, p, OH)    # (lo, n, tap0) per input row
        self.col_runs = window_runs(W, k, s, p, OW)    # ... per input column
        self.ring_rows, self.close_rows = ring_plan(H, k, s, p, OH)
        self.words = self.ring_rows * OW * C
        super().__init__({
            "i": In(stream.Signature(event_layout(self.n_in))),
            "o": Out(stream.Signature(event_layout(self.n_out))),
        })

    def covered(self, index: int) -> int:
        """How many outputs input neuron ``index`` (flat ``(C, H, W)``) feeds (``m`` in the cycle count)."""
        _, H, W = self.in_shape
        y, x = (index % (H * W)) // W, index % W
        return int(self.row_runs[y, 1] * self.col_runs[x, 1])

    def elaborate(self, platform):
        m = Module()
        C, H, W = self.in_shape
        _, OH, OW = self.out_shape
        T, words, R = self.T, self.words, self.ring_rows
        RW = OW * C                              # words per output row
        word = unsigned(T.bit_length())
        m.submodules.mem = mem = memory.Memory(shape=word, depth=words, init=[T] * words)
        wr = mem.write_port()
        # Transparent, so that an update issued right after a write to the same word reads it.
        rd = mem.read_port(transparent_for=(wr,))

        run_max = max(int(self.row_runs[:, 1].max()), int(self.col_runs[:, 1].max()), 1)
        run_shape = range(run_max + 1)

        def table(values):
            values = [int(v) for v in values]
            return Array(Const(v, range(max(values) + 1)) for v in values)

        init = Signal()                          # clearing the memory (after reset)
        n = Signal(range(words))                 # init: the word being cleared

        # ---- input side: row counter and the event's offset in its row
        row_y = Signal(range(H))
        row_base = Signal(range(self.n_in))
        off = (self.i.payload.index - row_base)[:max(1, (W * C - 1).bit_length())]
        if C & (C - 1) == 0:
            cb = C.bit_length() - 1
            c_in, x_in = (off[:cb] if cb else 0), off[cb:]
        else:
            x_in = div_const(off, C, W * C - 1)
            c_in = (off - x_in * C)[:(C - 1).bit_length()]

        # ---- stage A: the accepted event, as coordinates
        a_valid = Signal()
        a_eof, a_eol = Signal(), Signal()
        a_c, a_y, a_x = Signal(range(C)), Signal(range(H)), Signal(range(W))
        a_phase = Signal(PHASE_BITS)
        # ---- stage B: the issuer, one output address per cycle
        b_valid = Signal()
        b_mark = Signal()                        # a marker: the updates before it have all issued
        b_eof = Signal()
        b_y = Signal(range(H))                   # the row an end-of-row marker ends
        b_addr, b_row = Signal(range(words)), Signal(range(words))
        b_phase = Signal(PHASE_BITS)
        b_rx = Signal(run_shape)                 # columns left in this row after the current one
        b_ry = Signal(run_shape)                 # rows left after the current one
        b_nx1 = Signal(run_shape)                # columns per row, minus one
        # ---- stage C: read-modify-write
        c_valid = Signal()
        c_addr = Signal(range(words))
        c_phase = Signal(PHASE_BITS)
        # ---- drain
        d_addr = Signal(range(words))
        d_w = Signal(range(RW))
        o_index = Signal(range(self.n_out))
        rows_left = Signal(range(OH + 1))

        b_last = (b_rx == 0) & (b_ry == 0)
        b_free = ~b_valid | (~b_mark & b_last)   # B can take A's content this cycle
        a_free = ~a_valid | b_free

        # Stage C: word = min(word, phase).
        m.d.sync += c_valid.eq(0)
        with m.If(c_valid):
            m.d.comb += [wr.addr.eq(c_addr), wr.en.eq(1),
                         wr.data.eq(Mux(c_phase < rd.data, c_phase, rd.data))]

        # Stage B: issue the read of the current output, step to the next one.
        next_row = b_row + RW
        with m.If(b_valid & ~b_mark):
            m.d.comb += rd.addr.eq(b_addr)
            m.d.sync += [c_valid.eq(1), c_addr.eq(b_addr), c_phase.eq(b_phase)]
            with m.If(b_rx != 0):
                m.d.sync += [b_rx.eq(b_rx - 1), b_addr.eq(b_addr + C)]
            with m.Elif(b_ry != 0):
                wrapped = Mux(next_row >= words, next_row - words, next_row)
                m.d.sync += [b_ry.eq(b_ry - 1), b_rx.eq(b_nx1), b_row.eq(wrapped), b_addr.eq(wrapped)]
            with m.Else():
                m.d.sync += b_valid.eq(0)

        # A -> B (an event reaching no output is dropped here).
        slot_base = table((self.row_runs[:, 0] % R) * RW)
        col_base = table(self.col_runs[:, 0] * C)
        row_n, col_n = table(self.row_runs[:, 1]), table(self.col_runs[:, 1])
        with m.If(a_valid & b_free):
            m.d.sync += a_valid.eq(0)
            with m.If(a_eof | a_eol):
                m.d.sync += [b_valid.eq(1), b_mark.eq(1), b_eof.eq(a_eof), b_y.eq(a_y)]
            with m.Else():
                ny, nx = row_n[a_y], col_n[a_x]
                first = slot_base[a_y] + col_base[a_x] + a_c
                m.d.sync += [
                    b_valid.eq((ny != 0) & (nx != 0)),
                    b_mark.eq(0),
                    b_addr.eq(first), b_row.eq(first),
                    b_phase.eq(a_phase),
                    b_rx.eq(nx - 1), b_ry.eq(ny - 1), b_nx1.eq(nx - 1),
                ]

        # Input -> A.
        m.d.comb += self.i.ready.eq(~init & a_free)
        with m.If(self.i.valid & self.i.ready):
            p_ = self.i.payload
            m.d.sync += [
                a_valid.eq(1), a_eof.eq(p_.eof), a_eol.eq(p_.eol),
                a_c.eq(c_in), a_y.eq(row_y), a_x.eq(x_in), a_phase.eq(p_.phase),
            ]
            with m.If(p_.eof):
                m.d.sync += [row_y.eq(0), row_base.eq(0)]
            with m.Elif(p_.eol & (row_y != H - 1)):
                m.d.sync += [row_y.eq(row_y + 1), row_base.eq(row_base + W * C)]

        close = table(self.close_rows)[b_y]
        with m.FSM(init="INIT"):
            with m.State("INIT"):
                m.d.comb += [init.eq(1), wr.addr.eq(n), wr.data.eq(T), wr.en.eq(1)]
                with m.If(n == words - 1):
                    m.d.sync += n.eq(0)
                    m.next = "SCATTER"
                with m.Else():
                    m.d.sync += n.eq(n + 1)

            with m.State("SCATTER"):
                # B holds a marker: every update before it has issued (the last one writes this
                # cycle, and the transparent port passes it on). Read the first word to drain.
                with m.If(b_valid & b_mark):
                    with m.If(b_eof):
                        m.next = "EOF"
                    with m.Elif(close != 0):
                        m.d.comb += rd.addr.eq(d_addr)
                        m.d.sync += rows_left.eq(close)
                        m.next = "DRAIN"
                    with m.Else():
                        m.d.sync += b_valid.eq(0)

            with m.State("DRAIN"):
                # rd.data is word d_addr. Write T back once it is sent (or silent), then read the
                # next one (reading and clearing different words: the transparent port plays no part).
                spike = rd.data != T
                m.d.comb += [
                    self.o.valid.eq(spike),
                    self.o.payload.index.eq(o_index),
                    self.o.payload.phase.eq(rd.data),
                ]
                with m.If(~spike | self.o.ready):
                    nxt = Mux(d_addr == words - 1, 0, d_addr + 1)
                    m.d.comb += [wr.addr.eq(d_addr), wr.data.eq(T), wr.en.eq(1)]
                    m.d.sync += [d_addr.eq(nxt), o_index.eq(o_index + 1)]
                    with m.If(d_w == RW - 1):
                        m.d.sync += d_w.eq(0)
                        m.next = "ROW_END"
                    with m.Else():
                        m.d.comb += rd.addr.eq(nxt)
                        m.d.sync += d_w.eq(d_w + 1)
                with m.Else():
                    m.d.comb += rd.addr.eq(d_addr)

            with m.State("ROW_END"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eol.eq(1), rd.addr.eq(d_addr)]
                with m.If(self.o.ready):
                    with m.If(rows_left == 1):
                        m.d.sync += b_valid.eq(0)
                        m.next = "SCATTER"
                    with m.Else():
                        m.d.sync += rows_left.eq(rows_left - 1)
                        m.next = "DRAIN"

            with m.State("EOF"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eof.eq(1)]
                with m.If(self.o.ready):
                    m.d.sync += [b_valid.eq(0), b_mark.eq(0), d_addr.eq(0), o_index.eq(0)]
                    m.next = "SCATTER"
        return m
