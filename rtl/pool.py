"""Event-driven max-pool layer: keep the earliest spike phase of every window."""
import numpy as np
from amaranth import *
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .coords import unflatten, window_runs
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
    An output of ``(C, OH, OW)``, ``OH = (H + 2p - k) // s + 1`` (likewise ``OW``), keeps one phase
    word per neuron in a synchronous-read memory (``n_out`` words of ``T.bit_length()`` bits).

    Frame behaviour
        1. *Scatter.* An input spike ``(j, f)`` at ``(c, y, x)`` lowers every output whose window
           contains it to ``min(word, f)``: the run of ``ny`` output rows times ``nx`` output columns
           that :func:`rtl.coords.window_runs` gives for ``y`` and ``x`` (one output when
           ``k == s``; none for an input that only padded windows would reach, e.g. the last row of
           an odd ``H`` with ``k = s = 2``). Events may come in any order, back to back.
           Pipeline: input register (coordinates) -> issuer (one output address per cycle) ->
           read-modify-write (the read port is transparent, so back-to-back updates of one word
           are exact).
        2. *Drain*, once the end-of-frame marker has passed the pipeline: the words are read in
           index order, each spiking neuron (``word < T``) leaves as an event ``(o, word)``, every
           word is set back to ``T`` for the next frame, then one end-of-frame marker leaves.
           Output back-pressure stalls the drain. Meanwhile the input register may already take
           the first event of the next frame; it waits there until the drain has finished.

        After reset the engine writes ``T`` to every word (``n_out`` cycles) before ``i`` becomes
        ready: memories have no reset, and a reset in the middle of a frame leaves one half built.

    Cycles (no input gaps, no output stalls; tested exactly)
        An event that covers ``m = ny * nx`` outputs occupies the issuer ``max(1, m)`` cycles
        (``m <= ceil(k / s) ** 2``; ``k == s``, ``p == 0``, as in every shipped model, gives
        ``m = 1``: one event per cycle). With ``cost = sum over the frame's events of max(1, m)``:

        * a frame's end-of-frame marker leaves ``cost + n_out + 3`` cycles after the previous
          frame's marker left (back to back), or after the first event of the first frame was
          taken (``n_out`` drain cycles, 3 to pass the marker down the pipeline and out);
        * the marker leaves ``max(1, m_last) + n_out + 2`` cycles after it was taken (``m_last``:
          the frame's last event), as the input and issuer registers hold up to two events;
        * after reset, ``n_out`` cycles of clearing before ``i`` is ready.

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
        Input spike events ``{index, phase, eof}``.
    o : ``Out(stream.Signature(event_layout(C * OH * OW)))``
        Output spike events, in increasing ``index``, then one end-of-frame marker.
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
        super().__init__({
            "i": In(stream.Signature(event_layout(self.n_in))),
            "o": Out(stream.Signature(event_layout(self.n_out))),
        })

    def covered(self, index: int) -> int:
        """How many outputs input neuron ``index`` feeds (``m`` in the cycle count)."""
        _, H, W = self.in_shape
        y, x = (index % (H * W)) // W, index % W
        return int(self.row_runs[y, 1] * self.col_runs[x, 1])

    def elaborate(self, platform):
        m = Module()
        C, H, W = self.in_shape
        _, OH, OW = self.out_shape
        T, n_out = self.T, self.n_out
        word = unsigned(T.bit_length())
        m.submodules.mem = mem = memory.Memory(shape=word, depth=n_out, init=[T] * n_out)
        wr = mem.write_port()
        # Transparent, so that an update issued right after a write to the same word reads it.
        rd = mem.read_port(transparent_for=(wr,))

        run_max = max(int(self.row_runs[:, 1].max()), int(self.col_runs[:, 1].max()), 1)
        run_shape = range(run_max + 1)
        addr_shape = range(n_out + OW + 1)

        def table(values, shape):
            return Array(Const(int(v), shape) for v in values)

        # Per input row / column: first output address offset and run length.
        row_base = table(self.row_runs[:, 0] * OW, addr_shape)
        row_n = table(self.row_runs[:, 1], run_shape)
        col_lo = table(self.col_runs[:, 0], addr_shape)
        col_n = table(self.col_runs[:, 1], run_shape)

        init = Signal()                          # clearing the memory (after reset)
        n = Signal(range(n_out))                 # init / drain: the word being cleared or sent

        # ---- stage A: the accepted event, as coordinates
        a_valid = Signal()
        a_eof = Signal()
        a_c, a_y, a_x = Signal(range(C)), Signal(range(H)), Signal(range(W))
        a_phase = Signal(PHASE_BITS)
        # ---- stage B: the issuer, one output address per cycle
        b_valid = Signal()
        b_eof = Signal()                         # the marker: the frame's updates have all issued
        b_addr = Signal(addr_shape)
        b_phase = Signal(PHASE_BITS)
        b_rx = Signal(run_shape)                 # columns left in this row after the current one
        b_ry = Signal(run_shape)                 # rows left after the current one
        b_nx1 = Signal(run_shape)                # columns per row, minus one
        # ---- stage C: read-modify-write
        c_valid = Signal()
        c_addr = Signal(range(n_out))
        c_phase = Signal(PHASE_BITS)

        b_last = (b_rx == 0) & (b_ry == 0)
        b_free = ~b_valid | (~b_eof & b_last)    # B can take A's content this cycle
        a_free = ~a_valid | b_free

        # Stage C: word = min(word, phase).
        m.d.sync += c_valid.eq(0)
        with m.If(c_valid):
            m.d.comb += [wr.addr.eq(c_addr), wr.en.eq(1),
                         wr.data.eq(Mux(c_phase < rd.data, c_phase, rd.data))]

        # Stage B: issue the read of the current output, step to the next one.
        with m.If(b_valid & ~b_eof):
            m.d.comb += rd.addr.eq(b_addr)
            m.d.sync += [c_valid.eq(1), c_addr.eq(b_addr), c_phase.eq(b_phase)]
            with m.If(b_rx != 0):
                m.d.sync += [b_rx.eq(b_rx - 1), b_addr.eq(b_addr + 1)]
            with m.Elif(b_ry != 0):
                m.d.sync += [b_ry.eq(b_ry - 1), b_rx.eq(b_nx1), b_addr.eq(b_addr + (OW - b_nx1))]
            with m.Else():
                m.d.sync += b_valid.eq(0)

        # A -> B (an event reaching no output is dropped here).
        with m.If(a_valid & b_free):
            m.d.sync += a_valid.eq(0)
            with m.If(a_eof):
                m.d.sync += [b_valid.eq(1), b_eof.eq(1)]
            with m.Else():
                ny, nx = row_n[a_y], col_n[a_x]
                m.d.sync += [
                    b_valid.eq((ny != 0) & (nx != 0)),
                    b_eof.eq(0),
                    b_addr.eq(a_c * (OH * OW) + row_base[a_y] + col_lo[a_x]),
                    b_phase.eq(a_phase),
                    b_rx.eq(nx - 1), b_ry.eq(ny - 1), b_nx1.eq(nx - 1),
                ]

        # Input -> A.
        m.d.comb += self.i.ready.eq(~init & a_free)
        with m.If(self.i.valid & self.i.ready):
            c, y, x = unflatten(self.i.payload.index, self.in_shape)
            m.d.sync += [
                a_valid.eq(1), a_eof.eq(self.i.payload.eof),
                a_c.eq(c), a_y.eq(y), a_x.eq(x), a_phase.eq(self.i.payload.phase),
            ]

        with m.FSM(init="INIT"):
            with m.State("INIT"):
                m.d.comb += [init.eq(1), wr.addr.eq(n), wr.data.eq(T), wr.en.eq(1)]
                with m.If(n == n_out - 1):
                    m.d.sync += n.eq(0)
                    m.next = "SCATTER"
                with m.Else():
                    m.d.sync += n.eq(n + 1)

            with m.State("SCATTER"):
                # B holds the marker: every update has issued (the last one writes this cycle, and
                # the transparent port passes it on). Read word 0 for the drain.
                with m.If(b_valid & b_eof):
                    m.d.comb += rd.addr.eq(0)
                    m.next = "DRAIN"

            with m.State("DRAIN"):
                # rd.data is word n. Write T back once it is sent (or silent), then read n + 1
                # (reading and clearing different words: the transparent port plays no part).
                spike = rd.data != T
                m.d.comb += [
                    self.o.valid.eq(spike),
                    self.o.payload.index.eq(n),
                    self.o.payload.phase.eq(rd.data),
                ]
                with m.If(~spike | self.o.ready):
                    m.d.comb += [wr.addr.eq(n), wr.data.eq(T), wr.en.eq(1)]
                    with m.If(n == n_out - 1):
                        m.d.sync += n.eq(0)
                        m.next = "EOF"
                    with m.Else():
                        m.d.comb += rd.addr.eq(n + 1)
                        m.d.sync += n.eq(n + 1)
                with m.Else():
                    m.d.comb += rd.addr.eq(n)

            with m.State("EOF"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eof.eq(1)]
                with m.If(self.o.ready):
                    m.d.sync += [b_valid.eq(0), b_eof.eq(0)]
                    m.next = "SCATTER"
        return m
