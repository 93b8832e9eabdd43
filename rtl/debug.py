"""Verification view of a :class:`~rtl.network.Network`: a registered copy of every firing layer's spike events.

The tap only observes: it reads ``valid``, ``ready`` and the payload of each firing engine's output
stream and registers them, so the network's behaviour and timing are those of ``Network``.
"""
from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import PHASE_BITS
from .network import Network

__all__ = ["DebugNetwork", "SEQ_BITS"]

#: Width of the ``dbg_seq`` counter (it wraps around).
SEQ_BITS = 16


class DebugNetwork(wiring.Component):
    """A :class:`~rtl.network.Network` plus a debug event port with one slot per firing layer.

    Slot ``s`` observes the output stream of layer ``firing[s]`` (``firing``: the indices of the
    layers that fire, i.e. all but the readout). In the cycle after a transfer ``(index, phase,
    eof)`` on that stream, ``dbg_valid[s]`` is 1 and ``dbg_index[s]``, ``dbg_phase[s]``,
    ``dbg_eof[s]`` hold the transfer (``eof = 1``: the layer's end-of-frame marker, not a spike).
    Several layers can transfer in the same cycle, so the slots are parallel rather than one
    merged stream (a merged stream would need a buffer or back-pressure, which would change the
    network's timing). ``dbg_seq`` counts the cycles in which any slot is valid, so a monitor can
    wake on a change of ``dbg_seq`` instead of sampling every cycle. A model without firing layers
    (readout only) has one slot that is never valid.

    Everything is reset by the domain reset, like the network.

    Members
    -------
    i, o, load, loaded :
        As :class:`~rtl.network.Network` (``load``/``loaded`` only with a ``"ram"`` layer).
    dbg_seq : ``Out(unsigned(SEQ_BITS))``
    dbg_valid, dbg_eof : ``Out(unsigned(slots))``, bit ``s`` for slot ``s``
    dbg_index : ``Out(ArrayLayout(unsigned(index_bits), slots))``
    dbg_phase : ``Out(ArrayLayout(unsigned(8), slots))``

    Attributes
    ----------
    net : Network
    firing : list of int
        The layer observed by each slot.
    slots, index_bits : int
    """

    def __init__(self, model, lanes=8, fifo_depth: int = 16, store="rom"):
        self.net = Network(model, lanes, fifo_depth, store)
        self.firing = [k for k, e in enumerate(self.net.engines) if not e.readout]
        self.slots = max(1, len(self.firing))
        self.index_bits = max([len(self.net.engines[k].o.payload.index) for k in self.firing] or [1])
        ports = {} if self.net.loader is None else {"load": In(stream.Signature(unsigned(8))), "loaded": Out(1)}
        super().__init__({
            **ports,
            "i": In(stream.Signature(unsigned(8))),
            "o": Out(stream.Signature(self.net.o.payload.shape())),
            "dbg_seq": Out(unsigned(SEQ_BITS)),
            "dbg_valid": Out(unsigned(self.slots)),
            "dbg_eof": Out(unsigned(self.slots)),
            "dbg_index": Out(data.ArrayLayout(unsigned(self.index_bits), self.slots)),
            "dbg_phase": Out(data.ArrayLayout(unsigned(PHASE_BITS), self.slots)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.net = net = self.net
        wiring.connect(m, wiring.flipped(self.i), net.i)
        wiring.connect(m, net.o, wiring.flipped(self.o))
        if net.loader is not None:
            wiring.connect(m, wiring.flipped(self.load), net.load)
            m.d.comb += self.loaded.eq(net.loaded)
        fires = []
        for s, k in enumerate(self.firing):
            o = net.engines[k].o
            fire = Signal(name=f"tap{k}_fire")
            # End-of-row markers are not shown (they carry no neuron).
            m.d.comb += fire.eq(o.valid & o.ready & ~o.payload.eol)
            fires.append(fire)
            m.d.sync += [
                self.dbg_valid[s].eq(fire),
                self.dbg_eof[s].eq(o.payload.eof),
                self.dbg_index[s].eq(o.payload.index),
                self.dbg_phase[s].eq(o.payload.phase),
            ]
        if fires:
            with m.If(Cat(*fires).any()):
                m.d.sync += self.dbg_seq.eq(self.dbg_seq + 1)
        return m
