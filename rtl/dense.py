"""Event-driven dense layer: scatter each input spike into the accumulators, then fire or read out."""
import numpy as np
from amaranth import *
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .fire import FireUnit, check_fits
from .layouts import event_layout, logit_layout

__all__ = ["DenseEngine"]


class DenseEngine(wiring.Component):
    """One dense layer ``acc[o] = bias[o] + sum_j W[o, j] * D[f_j]``, fed by spike events.

    The outputs are split into ``groups = ceil(n_out / lanes)`` groups of ``lanes`` neighbouring
    neurons (``o = g * lanes + l``); all lanes of a group are updated in the same cycle.

    Memories (all synchronous-read, block-RAM friendly)
        weights ``n_in * groups`` words of ``lanes`` int8 (word ``j * groups + g`` holds
        ``W[g*lanes : (g+1)*lanes, j]``, zero-padded); accumulators and biases ``groups`` words of
        ``lanes`` signed ``acc_bits``; the decode table ``D`` (``len(decode)`` entries); for a
        firing layer one :class:`~rtl.fire.FireUnit` per lane with the threshold rows of its lane.

    Frame behaviour
        1. *Accumulate.* For every spike event ``(j, f)`` the engine spends ``groups`` cycles,
           adding ``W[o, j] * D[f]`` to the accumulators of one group per cycle (a two-stage
           read-modify-write pipeline; back-to-back events need no bubble). Input gaps are idle
           cycles; events whose phase is the no-spike code add 0.
        2. *Drain*, on the end-of-frame marker (``i`` is not ready during it). Group by group the
           accumulators are read and reset to the bias (so every frame starts from the bias).
           A firing layer (``theta`` given) hands each lane to its FireUnit and emits an event
           ``(o, phase)`` for every neuron with ``phase < T``, in increasing ``o``, then one
           end-of-frame marker. A readout (``theta=None``) emits ``{index, value, last}`` for every
           neuron in order. Output back-pressure stalls the drain.

        After reset the engine spends ``2 * groups`` cycles loading the biases before ``i`` becomes
        ready (memories have no reset).

    Cycles: ``groups`` per input event; the drain costs about ``groups * max(3, steps + 1, lanes)``
    for a firing layer (``steps = T.bit_length()``, the FireUnit's search length; ``lanes``
    because at most one event leaves per cycle) and ``n_out + 2 * groups`` for a readout.

    Parameters
    ----------
    n_in, n_out : int
        Inputs and outputs of the layer.
    lanes : int
        Output neurons updated per cycle (area/speed trade-off: ``lanes`` multipliers).
    weights : int array (n_out, n_in)
        ``W``, values in -128..127.
    bias : int array (n_out,)
        ``B``, in accumulator units.
    theta : int array (n_out, T) or None
        Threshold rows of a firing layer, or None for the readout.
    decode : int array
        The decode table of the layer's input code (its last entry, the no-spike code's, is 0).
    acc_bits : int
        Signed accumulator width (``Layer.acc_bits``): every partial sum, bias and threshold fits.

    Members
    -------
    i : ``In(stream.Signature(event_layout(n_in)))``
        Input spike events ``{index, phase, eof}``.
    o : ``Out(stream.Signature(event_layout(n_out)))`` for a firing layer, else
        ``Out(stream.Signature(logit_layout(n_out, acc_bits)))``.
    """

    def __init__(self, n_in: int, n_out: int, lanes: int, weights, bias, theta, decode, acc_bits: int):
        for name, v in (("Input count", n_in), ("Output count", n_out), ("Lane count", lanes)):
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        if not (isinstance(acc_bits, (int, np.integer)) and 2 <= acc_bits <= 64):
            raise ValueError(f"Accumulator width must be an integer in 2..64, not {acc_bits!r}")
        weights, bias, decode = np.asarray(weights), np.asarray(bias), np.asarray(decode)
        if weights.shape != (n_out, n_in):
            raise ValueError(f"Weights must have shape ({n_out}, {n_in}), not {weights.shape}")
        if weights.size and (weights.min() < -128 or weights.max() > 127):
            raise ValueError("Weights must be int8 values")
        if bias.shape != (n_out,):
            raise ValueError(f"Bias must have shape ({n_out},), not {bias.shape}")
        check_fits(bias, acc_bits, "Biases")
        if decode.ndim != 1 or len(decode) < 2 or decode.min() < 0:
            raise ValueError("Decode table must be a 1-D table of at least 2 non-negative integers")
        if theta is not None:
            theta = np.asarray(theta)
            if theta.ndim != 2 or theta.shape[0] != n_out:
                raise ValueError(f"Threshold table must have {n_out} rows, not shape {theta.shape}")
        self.n_in, self.n_out, self.lanes = int(n_in), int(n_out), int(lanes)
        self.groups = -(-self.n_out // self.lanes)
        self.weights = weights.astype(np.int64)
        self.bias = bias.astype(np.int64)
        self.theta = None if theta is None else theta.astype(np.int64)
        self.decode = decode.astype(np.int64)
        self.acc_bits = int(acc_bits)
        self.readout = theta is None
        if self.readout:
            out_layout = logit_layout(self.n_out, self.acc_bits)
        else:
            self.T = self.theta.shape[1]
            out_layout = event_layout(self.n_out)
        # The FireUnits are built here so that their parameters (and errors) show up early.
        self.fire_units = []
        if not self.readout:
            for l in range(self.lanes):
                rows = [min(g * self.lanes + l, self.n_out - 1) for g in range(self.groups)]
                self.fire_units.append(FireUnit(self.theta[rows], self.acc_bits))
        super().__init__({
            "i": In(stream.Signature(event_layout(self.n_in))),
            "o": Out(stream.Signature(out_layout)),
        })

    def _words(self, columns):
        """Pack per-neuron values (n_out, ...) into ``groups`` words of ``lanes`` (zero-padded)."""
        padded = np.zeros((self.groups * self.lanes,) + columns.shape[1:], dtype=np.int64)
        padded[:self.n_out] = columns
        return padded.reshape((self.groups, self.lanes) + columns.shape[1:])

    def elaborate(self, platform):
        m = Module()
        G, L, n_out = self.groups, self.lanes, self.n_out
        acc_word = data.ArrayLayout(signed(self.acc_bits), L)
        bias_words = [[int(x) for x in w] for w in self._words(self.bias)]

        # Weight word j*G + g = lanes of group g for input j.
        w = self._words(self.weights)                            # (G, L, n_in)
        w_init = [[int(x) for x in w[g, :, j]] for j in range(self.n_in) for g in range(G)]
        m.submodules.wmem = wmem = memory.Memory(
            shape=data.ArrayLayout(signed(8), L), depth=len(w_init), init=w_init)
        m.submodules.accmem = accmem = memory.Memory(shape=acc_word, depth=G, init=bias_words)
        m.submodules.biasmem = biasmem = memory.Memory(shape=acc_word, depth=G, init=bias_words)
        d_bits = max(1, int(self.decode.max()).bit_length())
        m.submodules.decmem = decmem = memory.Memory(
            shape=unsigned(d_bits), depth=len(self.decode), init=[int(x) for x in self.decode])
        w_rd = wmem.read_port()
        acc_wr = accmem.write_port()
        # Transparent, so that with one group the next event reads the value written this cycle.
        acc_rd = accmem.read_port(transparent_for=(acc_wr,))
        bias_rd = biasmem.read_port()
        dec_rd = decmem.read_port()
        for i, fu in enumerate(self.fire_units):
            m.submodules[f"fire{i}"] = fu

        g = Signal(range(G))                     # group being issued (accumulate) or drained
        busy = Signal()                          # an event still has groups to issue
        cur_f = Signal.like(self.i.payload.phase)
        waddr = Signal(range(max(2, self.n_in * G)))
        ex_valid = Signal()                      # execute stage: rd data belong to group ex_g
        ex_g = Signal(range(G))
        init = Signal(init=1)                    # draining only to load the biases (after reset)
        word = Signal(acc_word)                  # the group being drained
        pending = Signal(L)                      # lanes not yet handed to their FireUnit
        lane = Signal(range(L))                  # readout: lane being sent
        neuron = Signal(range(n_out))            # readout / collector: next output neuron
        frame_done = Signal()                    # collector: the end-of-frame marker left

        # ---- execute stage of the accumulate pipeline: acc[g] += W[g, j] * D[f]
        m.d.sync += ex_valid.eq(0)
        with m.If(ex_valid):
            m.d.comb += [acc_wr.addr.eq(ex_g), acc_wr.en.eq(1)]
            for l in range(L):
                # Partial sums are bounded by the range analysis, so the truncation is exact.
                m.d.comb += acc_wr.data[l].eq(acc_rd.data[l] + w_rd.data[l] * dec_rd.data)

        last_mask = (1 << (n_out - (G - 1) * L)) - 1
        with m.FSM(init="DRAIN_RD"):
            with m.State("ACCUM"):
                with m.If(busy):
                    m.d.comb += [w_rd.addr.eq(waddr), acc_rd.addr.eq(g), dec_rd.addr.eq(cur_f)]
                    m.d.sync += [waddr.eq(waddr + 1), ex_valid.eq(1), ex_g.eq(g)]
                    with m.If(g == G - 1):
                        m.d.sync += [g.eq(0), busy.eq(0)]
                    with m.Else():
                        m.d.sync += g.eq(g + 1)
                with m.Else():
                    base = self.i.payload.index * G
                    m.d.comb += [
                        self.i.ready.eq(1),
                        w_rd.addr.eq(base), acc_rd.addr.eq(0), dec_rd.addr.eq(self.i.payload.phase),
                    ]
                    with m.If(self.i.valid):
                        with m.If(self.i.payload.eof):
                            m.next = "DRAIN_RD"
                        with m.Else():
                            m.d.sync += [ex_valid.eq(1), ex_g.eq(0)]
                            if G > 1:
                                m.d.sync += [busy.eq(1), g.eq(1), waddr.eq(base + 1),
                                             cur_f.eq(self.i.payload.phase)]

            with m.State("DRAIN_RD"):
                m.d.comb += [acc_rd.addr.eq(g), bias_rd.addr.eq(g)]
                m.next = "DRAIN_LATCH"

            with m.State("DRAIN_LATCH"):
                # Read and reset in different cycles: the transparent port would return the bias.
                m.d.comb += [acc_wr.addr.eq(g), acc_wr.data.eq(bias_rd.data), acc_wr.en.eq(1)]
                m.d.sync += word.eq(acc_rd.data)
                with m.If(init):
                    with m.If(g == G - 1):
                        m.d.sync += [g.eq(0), init.eq(0)]
                        m.next = "ACCUM"
                    with m.Else():
                        m.d.sync += g.eq(g + 1)
                        m.next = "DRAIN_RD"
                with m.Else():
                    m.d.sync += [pending.eq(Mux(g == G - 1, last_mask, (1 << L) - 1)), lane.eq(0)]
                    m.next = "DISPATCH"

            with m.State("DISPATCH"):
                group_done = Signal()
                if self.readout:
                    m.d.comb += [
                        self.o.valid.eq(1),
                        self.o.payload.index.eq(neuron),
                        self.o.payload.value.eq(word[lane]),
                        self.o.payload.last.eq(neuron == n_out - 1),
                    ]
                    with m.If(self.o.ready):
                        m.d.sync += [neuron.eq(Mux(neuron == n_out - 1, 0, neuron + 1)), lane.eq(lane + 1)]
                        m.d.comb += group_done.eq((lane == L - 1) | (neuron == n_out - 1))
                else:
                    taken = Signal(L)
                    for l, fu in enumerate(self.fire_units):
                        m.d.comb += [
                            fu.i.valid.eq(pending[l]),
                            fu.i.payload.acc.eq(word[l]),
                            fu.i.payload.index.eq(g),
                            taken[l].eq(pending[l] & fu.i.ready),
                        ]
                    m.d.sync += pending.eq(pending & ~taken)
                    m.d.comb += group_done.eq((pending & ~taken) == 0)
                with m.If(group_done):
                    with m.If(g == G - 1):
                        m.d.sync += g.eq(0)
                        m.next = "ACCUM" if self.readout else "FINISH"
                    with m.Else():
                        m.d.sync += g.eq(g + 1)
                        m.next = "DRAIN_RD"

            if not self.readout:
                with m.State("FINISH"):
                    # The FireUnits are at least `steps` cycles behind the dispatch, so the collector
                    # always ends the frame while the FSM waits here.
                    with m.If(frame_done):
                        m.next = "ACCUM"

        if not self.readout:
            self._collector(m, neuron, frame_done)
        return m

    def _collector(self, m, neuron, frame_done):
        """Forward the FireUnit answers in neuron order; drop silent ones; close with a marker."""
        L, n_out = self.lanes, self.n_out
        lane = Signal(range(L))
        send_eof = Signal()
        fus = self.fire_units
        valid = Array(fu.o.valid for fu in fus)[lane]
        phase = Array(fu.o.payload.phase for fu in fus)[lane]
        with m.If(send_eof):
            m.d.comb += [self.o.valid.eq(1), self.o.payload.eof.eq(1)]
            with m.If(self.o.ready):
                m.d.sync += send_eof.eq(0)
                m.d.comb += frame_done.eq(1)
        with m.Else():
            spike = phase != self.T
            take = valid & (~spike | self.o.ready)
            m.d.comb += [
                self.o.valid.eq(valid & spike),
                self.o.payload.index.eq(neuron),
                self.o.payload.phase.eq(phase),
            ]
            for l, fu in enumerate(fus):
                m.d.comb += fu.o.ready.eq(take & (lane == l))
            with m.If(take):
                with m.If(neuron == n_out - 1):
                    m.d.sync += [neuron.eq(0), lane.eq(0), send_eof.eq(1)]
                with m.Else():
                    m.d.sync += [neuron.eq(neuron + 1), lane.eq(Mux(lane == L - 1, 0, lane + 1))]
