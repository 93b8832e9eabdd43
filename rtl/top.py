"""A flat-ported top level of a network with its debug events, for Verilog simulation (cocotb)."""
from amaranth import *

from .debug import SEQ_BITS, DebugNetwork

__all__ = ["FlatTop", "TOP_NAME"]

#: Module name of the converted top.
TOP_NAME = "onespike_top"


class FlatTop(Elaboratable):
    """:class:`~rtl.debug.DebugNetwork` with plain, stably named ports (for ``verilog.convert``).

    Ports (``clk`` and ``rst``, synchronous active-high, come from the ``sync`` domain)

    ``pixel_data[7:0]``, ``pixel_valid`` in, ``pixel_ready`` out
        The pixel stream, ``C*H*W`` pixels per frame in ``(H, W, C)`` order (camera order).
    ``result_valid`` out, ``result_ready`` in, ``result_cls``, ``result_logits``, ``result_last`` out
        One transfer per frame; logit ``c`` is the signed field
        ``result_logits[c*acc_bits +: acc_bits]`` (``result_last`` is 1). A detector sends its map:
        one transfer per logit, ``result_cls`` its flat index, ``result_logits`` its value,
        ``result_last`` on the frame's final logit.
    ``load_data[7:0]``, ``load_valid`` in, ``load_ready``, ``loaded`` out
        The store image (``Network.load_image``) of a design with ``"ram"`` layers, sent once
        before the first frame; without one ``load_ready`` is 0 and ``loaded`` 1.
    ``dbg_seq``, ``dbg_valid``, ``dbg_eof``, ``dbg_index``, ``dbg_phase`` out
        The registered debug events (see :class:`~rtl.debug.DebugNetwork`); slot ``s`` is the field
        ``[s*index_bits +: index_bits]`` of ``dbg_index``, ``[s*8 +: 8]`` of ``dbg_phase`` and bit
        ``s`` of ``dbg_valid`` / ``dbg_eof``.

    :meth:`describe` gives these widths and the slot-to-layer map as a dict.
    """

    def __init__(self, model, lanes=8, fifo_depth: int = 16, store="rom"):
        self.model = model
        self.core = core = DebugNetwork(model, lanes, fifo_depth, store)
        net = core.net
        self.acc_bits = net.engines[-1].acc_bits
        self.num_classes = model.num_classes
        self.pixel_data = Signal(8, name="pixel_data")
        self.pixel_valid = Signal(name="pixel_valid")
        self.pixel_ready = Signal(name="pixel_ready")
        self.result_valid = Signal(name="result_valid")
        self.result_ready = Signal(name="result_ready")
        self.detect = net.detect
        if self.detect:     # the map, one logit per transfer: its index and value
            self.result_cls = Signal(len(core.o.payload.index), name="result_cls")
            self.result_logits = Signal(self.acc_bits, name="result_logits")
        else:
            self.result_cls = Signal(len(core.o.payload.cls), name="result_cls")
            self.result_logits = Signal(self.acc_bits * self.num_classes, name="result_logits")
        self.result_last = Signal(name="result_last")
        self.load_data = Signal(8, name="load_data")
        self.load_valid = Signal(name="load_valid")
        self.load_ready = Signal(name="load_ready")
        self.loaded = Signal(name="loaded")
        self.dbg_seq = Signal(SEQ_BITS, name="dbg_seq")
        self.dbg_valid = Signal(core.slots, name="dbg_valid")
        self.dbg_eof = Signal(core.slots, name="dbg_eof")
        self.dbg_index = Signal(core.index_bits * core.slots, name="dbg_index")
        self.dbg_phase = Signal(8 * core.slots, name="dbg_phase")

    @property
    def ports(self):
        return [self.pixel_data, self.pixel_valid, self.pixel_ready,
                self.result_valid, self.result_ready, self.result_cls, self.result_logits, self.result_last,
                self.load_data, self.load_valid, self.load_ready, self.loaded,
                self.dbg_seq, self.dbg_valid, self.dbg_eof, self.dbg_index, self.dbg_phase]

    def describe(self) -> dict:
        """Port widths and layout of the top, as the testbench needs them."""
        core, net = self.core, self.core.net
        return {
            "top": TOP_NAME,
            "n_pixels": int(net.encoder.n_pixels),
            "num_classes": int(self.num_classes),
            "detect": bool(self.detect),
            "acc_bits": int(self.acc_bits),
            "slots": int(core.slots),
            "firing_layers": [int(k) for k in core.firing],
            "index_bits": int(core.index_bits),
            "seq_bits": SEQ_BITS,
            "lanes": [int(e.lanes) for e in net.engines],
            "fifo_depth": int(net.fifo_depth),
            "store": list(net.store),
            "load_bytes": len(net.load_image()),
            "layer_sizes": [int(e.n_out) for e in net.engines],
            "T": int(self.model.T),
            # Per slot: the no-spike code of the layer's output, and its shape as (positions,
            # channels): events carry the raster index r (rtl.layouts), the neuron's flat (C, H, W)
            # index is (r % channels) * positions + r // channels.
            "slot_T": [int(net.engines[k].T) for k in core.firing],
            "slot_order": [[int(net.engines[k].out_shape[1] * net.engines[k].out_shape[2]),
                            int(net.engines[k].out_shape[0])] for k in core.firing],
        }

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        m.d.comb += [
            core.i.payload.eq(self.pixel_data),
            core.i.valid.eq(self.pixel_valid),
            self.pixel_ready.eq(core.i.ready),
            self.result_valid.eq(core.o.valid),
            core.o.ready.eq(self.result_ready),
            *([self.result_cls.eq(core.o.payload.index), self.result_logits.eq(core.o.payload.value),
               self.result_last.eq(core.o.payload.last)] if self.detect else
              [self.result_cls.eq(core.o.payload.cls), self.result_logits.eq(core.o.payload.logits.as_value()),
               self.result_last.eq(1)]),
            self.dbg_seq.eq(core.dbg_seq),
            self.dbg_valid.eq(core.dbg_valid),
            self.dbg_eof.eq(core.dbg_eof),
            self.dbg_index.eq(core.dbg_index.as_value()),
            self.dbg_phase.eq(core.dbg_phase.as_value()),
        ]
        if core.net.loader is not None:
            m.d.comb += [core.load.payload.eq(self.load_data), core.load.valid.eq(self.load_valid),
                         self.load_ready.eq(core.load.ready), self.loaded.eq(core.loaded)]
        else:
            m.d.comb += self.loaded.eq(1)
        return m
