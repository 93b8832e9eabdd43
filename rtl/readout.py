"""Readout: gather a frame's logits and pick the class (argmax, ties to the lowest index)."""
from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import logit_layout, result_layout

__all__ = ["Argmax"]


class Argmax(wiring.Component):
    """Collect ``n`` logits of a frame and emit them with their argmax.

    The class is the index of the largest logit; on a tie the lowest index wins (a later logit
    replaces the running maximum if it is greater, or equal with a lower index), as ``numpy.argmax``
    and the spec.

    Parameters
    ----------
    n : int
        Logits per frame.
    acc_bits : int
        Signed width of a logit.

    Members
    -------
    i : ``In(stream.Signature(logit_layout(n, acc_bits)))``
        Logits ``{index, value, last}``; each index ``0..n-1`` once per frame (any order), the
        frame's final one with ``last`` set.
    o : ``Out(stream.Signature(result_layout(n, acc_bits)))``
        One transfer per frame: ``{cls, logits}``.

    Cycle behaviour: one logit per cycle; the result is valid the cycle after the ``last`` logit
    was accepted. The output register is also the collection buffer, so ``i`` is not ready while a
    result waits on ``o`` (it takes the next frame's first logit in the cycle the result leaves).
    """

    def __init__(self, n: int, acc_bits: int):
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"Logit count must be a positive integer, not {n!r}")
        self.n, self.acc_bits = n, acc_bits
        super().__init__({
            "i": In(stream.Signature(logit_layout(n, acc_bits))),
            "o": Out(stream.Signature(result_layout(n, acc_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        first = Signal(init=1)                   # the next logit opens a frame
        best_value = Signal(signed(self.acc_bits))
        best_index = Signal.like(self.o.payload.cls)
        value, index = self.i.payload.value, self.i.payload.index

        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            # The tie rule keeps the result independent of the arrival order.
            better = first | (value > best_value) | ((value == best_value) & (index < best_index))
            new_index = Mux(better, index, best_index)
            m.d.sync += [
                best_value.eq(Mux(better, value, best_value)),
                best_index.eq(new_index),
                first.eq(self.i.payload.last),
            ]
            for k in range(self.n):
                with m.If(index == k):
                    m.d.sync += self.o.payload.logits[k].eq(value)
            with m.If(self.i.payload.last):
                m.d.sync += [self.o.payload.cls.eq(new_index), self.o.valid.eq(1)]
        return m
