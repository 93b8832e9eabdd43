"""Event-driven synaptic layer engine (conv2d; dense is the 1x1 case): scatter spikes, then fire or read out."""
import numpy as np
from amaranth import *
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .coords import div_const, ring_plan, window_runs
from .fire import FireUnit, check_fits
from .layouts import event_layout, logit_layout

__all__ = ["ConvEngine"]


def _uint(value: int) -> unsigned:
    return unsigned(max(1, int(value).bit_length()))


class ConvEngine(wiring.Component):
    """One conv2d layer ``acc[o, y, x] = bias[o] + sum W[o, c, ky, kx] * D[f[c, y*s-p+ky, x*s-p+kx]]``.

    The layer is driven by its input spikes rather than by its outputs: an input event
    ``(c, y, x, f)`` adds ``W[:, c, ky, kx] * D[f]`` to every output position ``(oy, ox)`` whose window
    holds ``(y, x)`` (``ky = y + p - oy*s``; zero padding contributes nothing, so nothing is done
    for it). A dense layer is the case ``H = W = k = 1`` (:class:`~rtl.dense.DenseEngine`); an
    average pool is a conv whose weights are the identity over channels.

    Output channels are split into ``groups = ceil(C_out / lanes)`` groups of ``lanes`` neighbouring
    channels (``o = g * lanes + l``); all lanes of a group are updated in the same cycle.

    Memories (all synchronous-read, block-RAM friendly)
        weights: ``k * k * C_in * groups`` words of ``lanes`` int8 (word ``((ky*k + kx)*C_in + c)*G + g``);
        accumulators: a ring of ``ring_rows`` output rows, ``ring_rows * OW * groups`` words of
        ``lanes`` signed ``acc_bits`` (word ``(slot * OW + ox) * G + g``, output row ``oy`` in slot
        ``oy % ring_rows``; a dense layer has one row of ``groups`` words); biases ``groups`` words;
        the decode table ``D``; for a firing layer one :class:`~rtl.fire.FireUnit` per lane with
        the threshold rows of the channels of its lane.

    Frame behaviour (streams: :mod:`rtl.layouts`, raster order with end-of-row markers)
        1. *Accumulate.* An input event is registered, its coordinates taken from the row counter
           (end-of-row markers) and its offset in the row, ``x * C_in + c`` (a shift when ``C_in``
           is a power of two, else one constant reciprocal multiply, :mod:`rtl.coords`); then the
           engine spends one cycle per (covered output position, group), adding to the
           accumulators in a pipeline (issue the weight read; multiply and read the accumulator;
           add and write back). The next event is taken in the last cycle of the previous one, so
           back-to-back events cost no bubble. Input gaps are idle cycles; events with the
           no-spike phase add 0.
        2. *Drain*, row by row (:func:`rtl.coords.ring_plan`): the end-of-row marker of input row
           ``y`` completes ``close_rows[y]`` output rows (for a 5x5 stride-1 conv, one per input
           row from row 4 on). Each is drained word by word (position, then group): read and
           reset to the bias, so the ring slot is ready for the row that reuses it. A firing layer
           hands each lane to its FireUnit; a collector waits for a word's answers and forwards
           its spikes, one per cycle, skipping silent lanes (a silent word costs one cycle), then
           the output row's end-of-row marker; at the end-of-frame marker it sends its own. A
           readout emits ``{index, value, last}`` for every neuron of the row (``last`` on the
           frame's final one). Output back-pressure stalls the drain. A dense layer
           (``frame=True``) ignores end-of-row markers and drains its one row at the end of the
           frame. While an engine drains it takes no events (beyond the one in its input
           register), but the next layer already works on the rows sent, so all layers of a
           network work on the same frame at once.

        After reset the engine spends ``2 * words`` cycles loading the biases before it starts
        accumulating (memories have no reset); events may queue in the input register.

    Event order
        Output events leave in raster order (:mod:`rtl.layouts`): increasing index
        ``(oy * OW + ox) * C_out + o``, with an end-of-row marker after each output row.

    Cycles: ``n_pos * groups`` per input event, ``n_pos`` the number of output positions it feeds
    (``k*k`` inside the image for stride 1, 1 for a dense layer). Drain: per word about
    ``max(steps + 1, spikes in the word)`` for a firing layer (``steps = T.bit_length()``) and
    ``lanes`` for a readout, plus a few cycles per row.

    Parameters
    ----------
    in_shape : (C_in, H, W)
    kernel, stride, padding : int
    lanes : int
        Output channels updated per cycle (area/speed trade-off: ``lanes`` multipliers).
    weights : int array (C_out, C_in, k, k)
        ``W``, values in -128..127.
    bias : int array (C_out,)
    theta : int array (C_out, T) or None
        Threshold rows of a firing layer, or None for the readout.
    decode : int array
        The decode table of the layer's input code (its last entry, the no-spike code's, is 0).
    acc_bits : int
        Signed accumulator width (``Layer.acc_bits``): every partial sum, bias and threshold fits.
    frame : bool
        Frame-buffered (dense layers, :class:`~rtl.dense.DenseEngine`) instead of row-buffered.
    store : ``"rom"`` or ``"ram"``
        ``"rom"``: weights and thresholds are ROMs initialised by the bitstream (block RAM).
        ``"ram"``: they share one *uninitialised, single-port* RAM of ``lanes * 8``-bit words
        (:attr:`store_depth` words: the weight words, then for a firing layer one threshold per
        word) that Yosys maps to iCE40 SPRAM, written once through :attr:`load` (it keeps its contents
        across resets). A firing layer then folds its biases into the thresholds
        (``acc >= theta - bias`` is ``acc + bias >= theta``: the accumulators restart from 0, and
        there is no bias memory) and fires its lanes one after another through a single
        :class:`~rtl.fire.FireUnit` that reads the store, which the accumulate stage does not use
        during a drain. Needs ``lanes * 8 >= acc_bits`` for a firing layer.

    Members
    -------
    i : ``In(stream.Signature(event_layout(C_in * H * W)))``
    o : ``Out(stream.Signature(event_layout(n_out)))`` for a firing layer, else
        ``Out(stream.Signature(logit_layout(n_out, acc_bits)))``; ``n_out = C_out * OH * OW``.
    load : ``In(stream.Signature(unsigned(lanes * 8)))``, only with ``store="ram"``
        The store's contents (:meth:`store_words`), one word per transfer in address order
        (``ready`` is always high; the address restarts at 0 after the last word and on reset).
    loaded : ``In(1)``, only with ``store="ram"``
        High once the store is written (:class:`~rtl.loader.StoreLoader` drives it); until then
        the engine takes no input event.
    """

    def __init__(self, in_shape, kernel: int, stride: int, padding: int, lanes: int,
                 weights, bias, theta, decode, acc_bits: int, store: str = "rom", frame: bool = False):
        in_shape = tuple(int(v) for v in in_shape)
        if len(in_shape) != 3 or min(in_shape) < 1:
            raise ValueError(f"Input shape must be (C, H, W) of positive sizes, not {in_shape!r}")
        for name, v, lo in (("Kernel", kernel, 1), ("Stride", stride, 1), ("Padding", padding, 0),
                            ("Lane count", lanes, 1)):
            if not (isinstance(v, (int, np.integer)) and v >= lo):
                raise ValueError(f"{name} must be an integer >= {lo}, not {v!r}")
        if not (isinstance(acc_bits, (int, np.integer)) and 2 <= acc_bits <= 64):
            raise ValueError(f"Accumulator width must be an integer in 2..64, not {acc_bits!r}")
        C, H, W = in_shape
        k, s, p = int(kernel), int(stride), int(padding)
        OH, OW = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        if OH < 1 or OW < 1:
            raise ValueError(f"Kernel {k}, stride {s}, padding {p} leave no output of a {H}x{W} input")
        weights, bias, decode = np.asarray(weights), np.asarray(bias), np.asarray(decode)
        if weights.ndim != 4 or weights.shape[1:] != (C, k, k) or weights.shape[0] < 1:
            raise ValueError(f"Weights must have shape (C_out, {C}, {k}, {k}), not {weights.shape}")
        if weights.size and (weights.min() < -128 or weights.max() > 127):
            raise ValueError("Weights must be int8 values")
        C_out = weights.shape[0]
        if bias.shape != (C_out,):
            raise ValueError(f"Bias must have shape ({C_out},), not {bias.shape}")
        check_fits(bias, acc_bits, "Biases")
        if decode.ndim != 1 or len(decode) < 2 or decode.min() < 0:
            raise ValueError("Decode table must be a 1-D table of at least 2 non-negative integers")
        if theta is not None:
            theta = np.asarray(theta)
            if theta.ndim != 2 or theta.shape[0] != C_out:
                raise ValueError(f"Threshold table must have {C_out} rows, not shape {theta.shape}")
        if store not in ("rom", "ram"):
            raise ValueError(f"Store must be 'rom' or 'ram', not {store!r}")
        self.store = store
        # With a RAM store a firing layer compares acc - bias with theta - bias (see above).
        self.fold_bias = store == "ram" and theta is not None
        if self.fold_bias:
            if lanes * 8 < acc_bits:
                raise ValueError(f"A RAM store holds one {acc_bits}-bit threshold per word of lanes x 8 bits: "
                                 f"needs lanes >= {-(-acc_bits // 8)}, not {lanes}")
            theta = np.asarray(theta, dtype=np.int64) - np.asarray(bias, dtype=np.int64)[:, None]
            check_fits(theta, acc_bits, "Thresholds minus biases")
        self.in_shape, self.out_shape = in_shape, (C_out, OH, OW)
        self.kernel, self.stride, self.padding = k, s, p
        self.n_in, self.n_out, self.n_pos = C * H * W, C_out * OH * OW, OH * OW
        self.lanes = int(lanes)
        self.groups = -(-C_out // self.lanes)
        #: Frame-buffered (a dense layer): every accumulator is kept until the end-of-frame marker,
        #: and end-of-row markers are ignored. Otherwise row-buffered: a ring of ``ring_rows``
        #: output rows, output row ``o`` complete after input row ``y`` when ``close_rows[y]`` says so.
        self.frame = bool(frame)
        if self.frame:
            self.ring_rows, self.close_rows = OH, None
        else:
            self.ring_rows, self.close_rows = ring_plan(H, k, s, p, OH)
        self.words = self.ring_rows * OW * self.groups
        self.weights = weights.astype(np.int64)
        self.bias = bias.astype(np.int64)
        self.theta = None if theta is None else theta.astype(np.int64)
        self.decode = decode.astype(np.int64)
        self.acc_bits = int(acc_bits)
        self.readout = theta is None
        self.runs_y = window_runs(H, k, s, p, OH)
        self.runs_x = window_runs(W, k, s, p, OW)
        if self.readout:
            out_layout = logit_layout(self.n_out, self.acc_bits)
        else:
            self.T = self.theta.shape[1]
            out_layout = event_layout(self.n_out)
        # The FireUnits are built here so that their parameters (and errors) show up early.
        self.fire_units = []
        if self.fold_bias:
            self.fire_units.append(FireUnit(self.theta, self.acc_bits, external=True))
        elif not self.readout:
            for l in range(self.lanes):
                rows = [min(g * self.lanes + l, C_out - 1) for g in range(self.groups)]
                self.fire_units.append(FireUnit(self.theta[rows], self.acc_bits))
        ports = {
            "i": In(stream.Signature(event_layout(self.n_in))),
            "o": Out(stream.Signature(out_layout)),
        }
        self.weight_depth = C * k * k * self.groups
        self.store_depth = self.weight_depth + (self.fire_units[0].depth if self.fold_bias else 0)
        if store == "ram":
            ports["load"] = In(stream.Signature(unsigned(self.lanes * 8)))
            ports["loaded"] = In(1)
        super().__init__(ports)

    def _lane_words(self, per_channel):
        """Per-channel values (C_out, ...) as ``groups`` words of ``lanes`` (zero-padded)."""
        C_out, G, L = self.out_shape[0], self.groups, self.lanes
        padded = np.zeros((G * L,) + per_channel.shape[1:], dtype=np.int64)
        padded[:C_out] = per_channel
        return padded.reshape((G, L) + per_channel.shape[1:])

    def weight_words(self):
        """The weight memory's contents: one list of ``lanes`` int8 per word, in address order."""
        w = self._lane_words(self.weights)                      # (G, L, C_in, k, k)
        C, k = self.in_shape[0], self.kernel
        return [[int(v) for v in w[g, :, c, ky, kx]]
                for ky in range(k) for kx in range(k) for c in range(C) for g in range(self.groups)]

    def store_words(self) -> list[int]:
        """The RAM store's contents (``store="ram"``), one ``lanes * 8``-bit unsigned int per word.

        Weight word ``a`` holds lane ``l``'s int8 in bits ``[8*l, 8*l + 8)`` (two's complement); a
        threshold word holds one threshold, sign-extended to the word.
        """
        bits = self.lanes * 8
        mask = (1 << bits) - 1
        words = [sum((v & 0xFF) << (8 * l) for l, v in enumerate(w)) for w in self.weight_words()]
        if self.fold_bias:
            words += [int(v) & mask for v in self.fire_units[0].table()]
        return words

    def elaborate(self, platform):
        m = Module()
        G, L, P = self.groups, self.lanes, self.n_pos
        C_out, OH, OW = self.out_shape
        C_in, H, W = self.in_shape
        k, s = self.kernel, self.stride
        R, RW = self.ring_rows, OW * self.groups          # ring rows, words per output row
        acc_word = data.ArrayLayout(signed(self.acc_bits), L)
        reset_bias = np.zeros_like(self.bias) if self.fold_bias else self.bias
        bias_words = [[int(x) for x in w] for w in self._lane_words(reset_bias)]

        if self.store == "ram":
            # Single-port, no initial contents (the name marks it for scripts that drop the
            # all-zero initialiser Amaranth writes, so that Yosys can use SPRAM).
            m.submodules.spram_store = st = memory.Memory(
                shape=data.ArrayLayout(signed(8), L), depth=self.store_depth, init=[])
            st_wr, w_rd = st.write_port(), st.read_port()
            load_addr = Signal(range(self.store_depth))
            m.d.comb += self.load.ready.eq(1)
            # Read-no-change during a write (the SPRAM's behaviour); both ports share one address.
            m.d.comb += [w_rd.en.eq(~st_wr.en), st_wr.addr.eq(w_rd.addr)]
        else:
            w_init = self.weight_words()
            m.submodules.wmem = wmem = memory.Memory(
                shape=data.ArrayLayout(signed(8), L), depth=len(w_init), init=w_init)
            w_rd = wmem.read_port()
        m.submodules.accmem = accmem = memory.Memory(shape=acc_word, depth=self.words,
                                                     init=bias_words * (self.words // G))
        if not self.fold_bias:
            m.submodules.biasmem = biasmem = memory.Memory(shape=acc_word, depth=G, init=bias_words)
        d_bits = max(1, int(self.decode.max()).bit_length())
        m.submodules.decmem = decmem = memory.Memory(
            shape=unsigned(d_bits), depth=len(self.decode), init=[int(x) for x in self.decode])
        acc_wr = accmem.write_port()
        # Transparent, so that an access right after a write to the same word sees the new value.
        acc_rd = accmem.read_port(transparent_for=(acc_wr,))
        bias_rd = None if self.fold_bias else biasmem.read_port()
        dec_rd = decmem.read_port()
        for i, fu in enumerate(self.fire_units):
            m.submodules[f"fire{i}"] = fu

        # ---- input register: the event's (c, y, x). A frame-buffered (dense) engine reads its
        # input as one row of C_in neurons; a row-buffered one counts rows by their markers, so
        # the event's offset in its row is x * C_in + c (raster index, rtl.layouts).
        r_valid, r_eof, r_eol = Signal(), Signal(), Signal()
        r_c, r_y, r_x = Signal(range(C_in)), Signal(range(H)), Signal(range(W))
        r_f = Signal.like(self.i.payload.phase)
        row_y = Signal(range(H))                 # the input row being received
        row_base = Signal(range(C_in * H * W))   # raster index of its first neuron
        if self.frame:
            c_in, x_in = self.i.payload.index, 0
        else:
            off = (self.i.payload.index - row_base)[:max(1, (W * C_in - 1).bit_length())]
            if C_in & (C_in - 1) == 0:
                cb = C_in.bit_length() - 1
                c_in, x_in = off[:cb] if cb else 0, off[cb:]
            else:
                x_in = div_const(off, C_in, W * C_in - 1)
                c_in = (off - x_in * C_in)[:(C_in - 1).bit_length()]

        # ---- issue stage: walk the covered outputs of one event, one (position, group) per cycle
        w_span = self.weight_depth
        busy = Signal()
        g = Signal(range(G))
        ox_left, oy_left, nx = Signal(range(k + 1)), Signal(range(k + 1)), Signal(range(k + 1))
        acc_addr, acc_row = Signal(range(self.words)), Signal(range(self.words))
        w_addr, w_base, w_row = Signal(range(w_span)), Signal(range(w_span)), Signal(range(w_span))
        cur_f = Signal.like(r_f)
        ex_valid = Signal()                      # stage 1: weight and decode data for word ex_addr
        ex_addr = Signal(range(self.words))
        wr_valid = Signal()                      # stage 2: product registered, accumulator read
        wr_addr = Signal(range(self.words))
        prod_shape = signed(8 + max(1, int(self.decode.max()).bit_length()) + 1)
        prod = Signal(data.ArrayLayout(prod_shape, L))
        last_issue = busy & (g == G - 1) & (ox_left == 0) & (oy_left == 0)

        # ---- drain (one output row at a time)
        init = Signal(init=1)                    # draining only to load the biases (after reset)
        word = Signal(acc_word)                  # the word being dispatched
        d_addr, d_g, d_pos = Signal(range(self.words)), Signal(range(G)), Signal(range(P))
        d_w = Signal(range(RW))                  # word within the output row
        rows_left = Signal(range(max(OH, 1) + 1))   # output rows still to drain in this run
        eof_after = Signal()                     # the drain was started by the end-of-frame marker
        pending = Signal(L)                      # lanes not yet handed to their FireUnit / sent
        lane = Signal(range(L))                  # readout: lane being sent
        row_done = Signal()                      # collector: a row's end-of-row marker left
        frame_done = Signal()                    # collector: the end-of-frame marker left
        eof_req = Signal()                       # FSM: the collector is to send the marker
        full_mask = (1 << L) - 1
        last_mask = (1 << (C_out - (G - 1) * L)) - 1

        # ---- execute stage of the accumulate pipeline: acc[w] += W * D[f]
        # Stage 1 multiplies (the product is registered); stage 2 adds it to the accumulator read
        # in stage 1 and writes it back. The read-modify-write loop is one cycle (read in stage 1,
        # write in stage 2); the transparent read port gives an access right after a write to the
        # same word the new value, so back-to-back updates of one word need no bubble.
        m.d.sync += [ex_valid.eq(0), wr_valid.eq(ex_valid), wr_addr.eq(ex_addr)]
        for l in range(L):
            m.d.sync += prod[l].eq(w_rd.data[l] * dec_rd.data)
        with m.If(ex_valid):
            m.d.comb += acc_rd.addr.eq(ex_addr)
        with m.If(wr_valid):
            m.d.comb += [acc_wr.addr.eq(wr_addr), acc_wr.en.eq(1)]
            for l in range(L):
                # Partial sums are bounded by the range analysis, so the truncation is exact.
                m.d.comb += acc_wr.data[l].eq(acc_rd.data[l] + prod[l])

        take = Signal()                          # the issue stage takes the registered event
        m.d.comb += self.i.ready.eq(~r_valid | take)
        with m.If(self.i.valid & self.i.ready):
            p_ = self.i.payload
            m.d.sync += [r_valid.eq(1), r_eof.eq(p_.eof), r_eol.eq(p_.eol), r_f.eq(p_.phase),
                         r_c.eq(c_in), r_y.eq(row_y), r_x.eq(x_in)]
            with m.If(p_.eof):
                m.d.sync += [row_y.eq(0), row_base.eq(0)]
            with m.Elif(p_.eol & (row_y != H - 1)):
                m.d.sync += [row_y.eq(row_y + 1), row_base.eq(row_base + W * C_in)]
        with m.Elif(take):
            m.d.sync += r_valid.eq(0)

        # The run of outputs fed by (r_y, r_x), and the first word of the walk: accumulator word
        # (slot * OW + ox) * G + g, slot = oy % R; weight word ((ky * k + kx) * C_in + c) * G + g.
        def table(values):
            values = [int(v) for v in values]
            return Array(Const(v, _uint(max(values))) for v in values)

        oy_lo = self.runs_y[:, 0]
        slot_base = table((oy_lo % R) * RW)[r_y]
        ny, nx_ = table(self.runs_y[:, 1])[r_y], table(self.runs_x[:, 1])[r_x]
        col_base = table(self.runs_x[:, 0] * G)[r_x]
        tap_y = table(self.runs_y[:, 2] * k * C_in * G)[r_y]
        tap_x = table(self.runs_x[:, 2] * C_in * G)[r_x]
        first_acc = slot_base + col_base
        first_w = tap_y + tap_x + (r_c * G if G > 1 else r_c)
        next_row = acc_row + RW

        if self.fold_bias:
            # The store serves the FireUnit's threshold reads while the engine drains.
            fu = self.fire_units[0]
            m.d.comb += [w_rd.addr.eq(self.weight_depth + fu.rd_addr),
                         fu.rd_data.eq(w_rd.data.as_value()[:self.acc_bits].as_signed())]
        with m.If(busy):
            m.d.comb += [w_rd.addr.eq(w_addr), dec_rd.addr.eq(cur_f)]
            m.d.sync += [ex_valid.eq(1), ex_addr.eq(acc_addr)]
            with m.If(g != G - 1):
                m.d.sync += [g.eq(g + 1), acc_addr.eq(acc_addr + 1), w_addr.eq(w_addr + 1)]
            with m.Elif(ox_left != 0):
                m.d.sync += [g.eq(0), acc_addr.eq(acc_addr + 1), ox_left.eq(ox_left - 1),
                             w_base.eq(w_base - s * C_in * G), w_addr.eq(w_base - s * C_in * G)]
            with m.Elif(oy_left != 0):
                wrapped = Mux(next_row >= self.words, next_row - self.words, next_row)
                m.d.sync += [g.eq(0), oy_left.eq(oy_left - 1), ox_left.eq(nx - 1),
                             acc_row.eq(wrapped), acc_addr.eq(wrapped),
                             w_row.eq(w_row - s * k * C_in * G), w_base.eq(w_row - s * k * C_in * G),
                             w_addr.eq(w_row - s * k * C_in * G)]
            with m.Else():
                m.d.sync += busy.eq(0)

        if self.store == "ram":
            with m.If(self.load.valid):
                m.d.comb += [w_rd.addr.eq(load_addr), st_wr.data.eq(self.load.payload), st_wr.en.eq(1)]
                m.d.sync += load_addr.eq(Mux(load_addr == self.store_depth - 1, 0, load_addr + 1))
            may_take = self.loaded
        else:
            may_take = 1

        close = None if self.frame else table(self.close_rows)[r_y]
        reset_drain = [d_addr.eq(0), d_g.eq(0), d_pos.eq(0), d_w.eq(0)]
        with m.FSM(init="DRAIN_RD"):
            with m.State("ACCUM"):
                m.d.comb += take.eq(r_valid & (~busy | last_issue) & may_take)
                with m.If(take):
                    with m.If(r_eof):
                        if self.frame:
                            m.d.sync += [rows_left.eq(1), eof_after.eq(1)]
                            m.next = "DRAIN_WAIT"
                        elif self.readout:
                            m.d.sync += reset_drain
                        else:
                            m.next = "EOF"
                    with m.Elif(r_eol):
                        if not self.frame:
                            with m.If(close != 0):
                                m.d.sync += [rows_left.eq(close), eof_after.eq(0)]
                                m.next = "DRAIN_WAIT"
                    with m.Elif((ny != 0) & (nx_ != 0)):
                        m.d.sync += [
                            busy.eq(1), g.eq(0), cur_f.eq(r_f),
                            oy_left.eq(ny - 1), ox_left.eq(nx_ - 1), nx.eq(nx_),
                            acc_addr.eq(first_acc), acc_row.eq(first_acc),
                            w_addr.eq(first_w), w_base.eq(first_w), w_row.eq(first_w),
                        ]

            with m.State("DRAIN_WAIT"):
                # The last update is in stage 1 (its accumulator read uses the port now); it is
                # written in the next cycle, when DRAIN_RD reads (transparently).
                m.next = "DRAIN_RD"

            with m.State("DRAIN_RD"):
                m.d.comb += acc_rd.addr.eq(d_addr)
                if bias_rd is not None:
                    m.d.comb += bias_rd.addr.eq(d_g)
                m.next = "DRAIN_LATCH"

            with m.State("DRAIN_LATCH"):
                # Read and reset in different cycles: the transparent port would return the bias.
                m.d.comb += [acc_wr.addr.eq(d_addr), acc_wr.en.eq(1)]
                if bias_rd is not None:
                    m.d.comb += acc_wr.data.eq(bias_rd.data)
                m.d.sync += word.eq(acc_rd.data)
                with m.If(init):
                    with m.If(d_addr == self.words - 1):
                        m.d.sync += reset_drain + [init.eq(0)]
                        m.next = "ACCUM"
                    with m.Else():
                        self._next_word(m, d_addr, d_g, d_pos, d_w)
                        m.next = "DRAIN_RD"
                with m.Else():
                    m.d.sync += [pending.eq(Mux(d_g == G - 1, last_mask, full_mask)), lane.eq(0)]
                    m.next = "DISPATCH"

            with m.State("DISPATCH"):
                group_done = Signal()
                last_lane = Mux(d_g == G - 1, C_out - (G - 1) * L - 1, L - 1)
                if self.fold_bias:
                    # One FireUnit: hand it the word's lanes one after another.
                    fu = self.fire_units[0]
                    m.d.comb += [fu.i.valid.eq(1), fu.i.payload.acc.eq(word[lane]),
                                 fu.i.payload.index.eq(d_g * L + lane)]
                    with m.If(fu.i.ready):
                        m.d.sync += lane.eq(lane + 1)
                        m.d.comb += group_done.eq(lane == last_lane)
                elif self.readout:
                    m.d.comb += [
                        self.o.valid.eq(1),
                        self.o.payload.index.eq((d_g * L + lane) * P + d_pos),
                        self.o.payload.value.eq(word[lane]),
                        self.o.payload.last.eq((d_pos == P - 1) & (d_g == G - 1) & (lane == last_lane)),
                    ]
                    with m.If(self.o.ready):
                        m.d.sync += lane.eq(lane + 1)
                        m.d.comb += group_done.eq(lane == last_lane)
                else:
                    taken = Signal(L)
                    for l, fu in enumerate(self.fire_units):
                        m.d.comb += [
                            fu.i.valid.eq(pending[l]),
                            fu.i.payload.acc.eq(word[l]),
                            fu.i.payload.index.eq(d_g),
                            taken[l].eq(pending[l] & fu.i.ready),
                        ]
                    m.d.sync += pending.eq(pending & ~taken)
                    m.d.comb += group_done.eq((pending & ~taken) == 0)
                with m.If(group_done):
                    self._next_word(m, d_addr, d_g, d_pos, d_w)
                    with m.If(d_w == RW - 1):
                        if self.readout:
                            with m.If(rows_left == 1):
                                m.next = "ACCUM"
                                if self.frame:
                                    m.d.sync += reset_drain
                            with m.Else():
                                m.d.sync += rows_left.eq(rows_left - 1)
                                m.next = "DRAIN_RD"
                        else:
                            m.next = "ROW_WAIT"
                    with m.Else():
                        m.next = "DRAIN_RD"

            if not self.readout:
                with m.State("ROW_WAIT"):
                    # The FireUnits are at least `steps` cycles behind the dispatch: wait until the
                    # collector has sent the row's spikes and its end-of-row marker.
                    with m.If(row_done):
                        m.d.sync += rows_left.eq(rows_left - 1)
                        with m.If(rows_left != 1):
                            m.next = "DRAIN_RD"
                        with m.Elif(eof_after):
                            m.next = "EOF"
                        with m.Else():
                            m.next = "ACCUM"

                with m.State("EOF"):
                    m.d.comb += eof_req.eq(1)
                    with m.If(frame_done):
                        m.d.sync += reset_drain
                        m.next = "ACCUM"

        if self.fold_bias:
            self._serial_collector(m, row_done, frame_done, eof_req)
        elif not self.readout:
            self._collector(m, row_done, frame_done, eof_req, full_mask, last_mask)
        return m

    def _send_markers(self, m, send_eol, row_done, frame_done, eof_req):
        """The end-of-row marker (when ``send_eol``), else the end-of-frame marker (``eof_req``).
        Returns the condition under which neither is pending (the collector may forward spikes)."""
        with m.If(send_eol):
            m.d.comb += [self.o.valid.eq(1), self.o.payload.eol.eq(1)]
            with m.If(self.o.ready):
                m.d.sync += send_eol.eq(0)
                m.d.comb += row_done.eq(1)
        with m.Elif(eof_req):
            m.d.comb += [self.o.valid.eq(1), self.o.payload.eof.eq(1)]
            with m.If(self.o.ready):
                m.d.comb += frame_done.eq(1)
        return ~send_eol & ~eof_req

    def _serial_collector(self, m, row_done, frame_done, eof_req):
        """Forward the single FireUnit's spikes (channel order within a position), an end-of-row
        marker after each output row, and the end-of-frame marker when the FSM asks for it."""
        fu, C_out, OW = self.fire_units[0], self.out_shape[0], self.out_shape[2]
        c_base = Signal(range(self.n_out + 1))   # raster index of the position's channel 0
        c_ox = Signal(range(OW))
        send_eol = Signal()
        idle = self._send_markers(m, send_eol, row_done, frame_done, eof_req)
        with m.If(frame_done):
            m.d.sync += [c_base.eq(0), c_ox.eq(0)]
        with m.If(idle):
            spike = fu.o.payload.phase != self.T
            m.d.comb += [
                self.o.valid.eq(fu.o.valid & spike),
                self.o.payload.index.eq(c_base + fu.o.payload.index),
                self.o.payload.phase.eq(fu.o.payload.phase),
                fu.o.ready.eq(~spike | self.o.ready),
            ]
            with m.If(fu.o.valid & fu.o.ready & (fu.o.payload.index == C_out - 1)):
                m.d.sync += c_base.eq(c_base + C_out)
                with m.If(c_ox == OW - 1):
                    m.d.sync += [c_ox.eq(0), send_eol.eq(1)]
                with m.Else():
                    m.d.sync += c_ox.eq(c_ox + 1)

    def _next_word(self, m, addr, g, pos, w):
        m.d.sync += [addr.eq(Mux(addr == self.words - 1, 0, addr + 1)),
                     w.eq(Mux(w == self.out_shape[2] * self.groups - 1, 0, w + 1))]
        with m.If(g == self.groups - 1):
            m.d.sync += [g.eq(0), pos.eq(Mux(pos == self.n_pos - 1, 0, pos + 1))]
        with m.Else():
            m.d.sync += g.eq(g + 1)

    def _collector(self, m, row_done, frame_done, eof_req, full_mask, last_mask):
        """Forward a word's spikes in lane order once all its lanes are answered, an end-of-row
        marker after each output row's words, and the end-of-frame marker when the FSM asks."""
        G, L = self.groups, self.lanes
        C_out, RW = self.out_shape[0], self.out_shape[2] * self.groups
        fus = self.fire_units
        c_g, c_w = Signal(range(G)), Signal(range(RW))
        c_base = Signal(range(self.n_out + 1))   # raster index of the word's lane 0
        sent = Signal(L)                          # lanes of the current word already forwarded
        send_eol = Signal()
        active = Mux(c_g == G - 1, last_mask, full_mask)
        answered = Cat(fu.o.valid for fu in fus)
        spikes = Cat(fu.o.payload.phase != self.T for fu in fus)
        ready_all = (answered & active) == active
        todo = Signal(L)
        m.d.comb += todo.eq(spikes & active & ~sent)
        first = Signal(range(L))
        for l in reversed(range(L)):
            with m.If(todo[l]):
                m.d.comb += first.eq(l)
        phase = Array(fu.o.payload.phase for fu in fus)[first]

        idle = self._send_markers(m, send_eol, row_done, frame_done, eof_req)
        with m.If(frame_done):
            m.d.sync += c_base.eq(0)
        with m.If(idle & ready_all):
            finish = Signal()
            with m.If(todo == 0):
                m.d.comb += finish.eq(1)
            with m.Else():
                m.d.comb += [
                    self.o.valid.eq(1),
                    self.o.payload.index.eq(c_base + first),
                    self.o.payload.phase.eq(phase),
                ]
                with m.If(self.o.ready):
                    m.d.sync += sent.eq(sent | (Const(1, L) << first))
                    m.d.comb += finish.eq((todo & ~(Const(1, L) << first)) == 0)
            with m.If(finish):
                # Release every lane of the word at once; they take the next word in this cycle.
                m.d.comb += [fu.o.ready.eq(active[l]) for l, fu in enumerate(fus)]
                m.d.sync += [sent.eq(0), c_g.eq(Mux(c_g == G - 1, 0, c_g + 1)),
                             c_base.eq(c_base + Mux(c_g == G - 1, C_out - (G - 1) * L, L))]
                with m.If(c_w == RW - 1):
                    m.d.sync += [c_w.eq(0), send_eol.eq(1)]
                with m.Else():
                    m.d.sync += c_w.eq(c_w + 1)
