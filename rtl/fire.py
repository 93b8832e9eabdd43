"""The fire rule: accumulator -> spike phase, by binary search over a threshold row."""
import numpy as np
from amaranth import *
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import PHASE_BITS, index_shape

__all__ = ["FireUnit", "check_fits"]


def check_fits(values, bits: int, what: str) -> None:
    """Raise :class:`ValueError` unless every value fits a signed ``bits``-bit word."""
    values = np.asarray(values, dtype=np.int64)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if values.size and (values.min() < lo or values.max() > hi):
        raise ValueError(f"{what} must fit {bits} signed bits ({lo}..{hi}), not {values.min()}..{values.max()}")


class FireUnit(wiring.Component):
    """Compute ``phase = #{f : theta[row, f] > acc}`` for one accumulator at a time.

    This is the spec's fire rule (``runtime.spec.fire_int``): because each threshold row is
    non-increasing, the count is also the first ``f`` with ``acc >= theta[row, f]``, or ``T`` (no
    spike) if there is none. The unit finds it by binary search, one threshold read per step, most
    significant result bit first: with ``c`` the bits found so far it probes
    ``theta[row, c | (2**b - 1)]`` and sets bit ``b`` of ``c`` when that threshold is ``> acc``
    (probes at ``f >= T`` count as "not greater").

    The thresholds live in a synchronous ROM of ``rows << ceil(log2 T)`` words (rows padded to a
    power of two so that the address is ``{row, f}`` without a multiplier). With ``external=True``
    the unit has no ROM: it drives ``rd_addr`` (that same word address) and expects the threshold on
    ``rd_data`` one cycle later (a synchronous read of a memory outside, e.g. a shared weight store).

    Parameters
    ----------
    theta : int array (rows, T)
        Threshold rows, each non-increasing.
    acc_bits : int
        Signed width of accumulators and thresholds.
    external : bool
        Read the thresholds from outside (``rd_addr``/``rd_data``) instead of an own ROM.

    Members
    -------
    i : ``In(stream.Signature({index, acc}))``
        ``index``: the threshold row (``0..rows-1``), ``acc``: ``signed(acc_bits)``.
    o : ``Out(stream.Signature({index, phase}))``
        ``index`` is passed through, ``phase`` is ``0..T`` (``T``: no spike).
    rd_addr : ``Out(addr_bits)``, rd_data : ``In(signed(acc_bits))``
        Only with ``external=True``: the threshold read port (``addr_bits`` wide, see :attr:`depth`).

    Cycle behaviour: a request accepted in cycle 0 is answered from cycle ``steps + 1`` on, where
    ``steps = T.bit_length()`` (``ceil(log2(T + 1))``: 5 for T = 16, 8 for T = 255). The unit
    handles one request at a time; a new one is accepted in the cycle its answer leaves, so with
    ``o.ready`` high it sustains one result every ``steps + 1`` cycles.
    """

    def __init__(self, theta, acc_bits: int, external: bool = False):
        theta = np.asarray(theta)
        if theta.ndim != 2 or theta.shape[0] < 1 or not 1 <= theta.shape[1] < 2 ** PHASE_BITS:
            raise ValueError(f"Threshold table must have shape (rows, T) with rows >= 1 and T in 1..255, "
                             f"not {theta.shape}")
        if (np.diff(theta, axis=1) > 0).any():
            raise ValueError("Threshold rows must be non-increasing in the phase")
        check_fits(theta, acc_bits, "Thresholds")
        self.theta = theta.astype(np.int64)
        self.rows, self.T = theta.shape
        self.acc_bits = acc_bits
        self.steps = self.T.bit_length()
        self.f_bits = (self.T - 1).bit_length()   # row stride is 2**f_bits >= T
        self.external = bool(external)
        #: Words of the threshold table (rows padded to ``2**f_bits`` phases).
        self.depth = self.rows << self.f_bits
        ports = {
            "i": In(stream.Signature(data.StructLayout({"index": index_shape(self.rows), "acc": signed(acc_bits)}))),
            "o": Out(stream.Signature(data.StructLayout({"index": index_shape(self.rows),
                                                         "phase": unsigned(PHASE_BITS)}))),
        }
        if self.external:
            ports["rd_addr"] = Out(max(1, (self.depth - 1).bit_length()))
            ports["rd_data"] = In(signed(acc_bits))
        super().__init__(ports)

    def table(self) -> np.ndarray:
        """The threshold table in word order (``depth`` words, padding phases are 0)."""
        init = np.zeros((self.rows, 1 << self.f_bits), dtype=np.int64)
        init[:, :self.T] = self.theta
        return init.reshape(-1)

    def elaborate(self, platform):
        m = Module()
        T, steps, f_bits = self.T, self.steps, self.f_bits
        if self.external:
            rd_addr, rd_data = self.rd_addr, self.rd_data
        else:
            m.submodules.rom = rom = memory.Memory(shape=signed(self.acc_bits), depth=self.depth,
                                                   init=[int(x) for x in self.table()])
            rd = rom.read_port()
            rd_addr, rd_data = rd.addr, rd.data

        def addr(row, f):
            return Cat(f[:f_bits], row) if f_bits else row

        acc = Signal(signed(self.acc_bits))
        row = Signal.like(self.i.payload.index)
        busy = Signal()                         # searching: rd.data is theta[row, probe]
        probe = Signal(steps)                   # the phase being read
        bit = Signal(steps)                     # one-hot: the result bit decided this cycle
        low = Signal(steps)                     # bit - 1
        found = Signal(steps)                   # result bits decided so far
        done = Signal()

        first = (1 << (steps - 1)) - 1          # c = 0, b = steps - 1
        m.d.comb += [
            self.i.ready.eq(~busy & (~done | self.o.ready)),
            self.o.valid.eq(done),
            self.o.payload.index.eq(row),
            self.o.payload.phase.eq(found),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += done.eq(0)

        with m.If(self.i.valid & self.i.ready):
            m.d.comb += rd_addr.eq(addr(self.i.payload.index, Const(first, steps)))
            m.d.sync += [
                acc.eq(self.i.payload.acc), row.eq(self.i.payload.index), busy.eq(1),
                probe.eq(first), bit.eq(1 << (steps - 1)), low.eq(first), found.eq(0),
            ]

        with m.If(busy):
            greater = (probe < T) & (rd_data > acc)
            found_next = found | Mux(greater, bit, 0)
            probe_next = found_next | (low >> 1)
            m.d.comb += rd_addr.eq(addr(row, probe_next))
            m.d.sync += [found.eq(found_next), probe.eq(probe_next), bit.eq(bit >> 1), low.eq(low >> 1)]
            with m.If(bit[0]):
                m.d.sync += [busy.eq(0), done.eq(1)]
        return m
