"""Top level for all-dense models: encoder -> dense engines -> argmax."""
import numpy as np
from amaranth import *
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from runtime import spec

from .dense import DenseEngine
from .encoder import PixelEncoder
from .layouts import result_layout
from .readout import Argmax

__all__ = ["DenseNetwork"]


class DenseNetwork(wiring.Component):
    """A whole one-spike model whose layers are all dense, as one streaming pipeline.

    ``PixelEncoder -> DenseEngine (fires) -> ... -> DenseEngine (readout) -> Argmax``, linked by
    valid/ready streams of spike events (see :mod:`rtl.layouts`), with an optional event FIFO in
    front of every engine. Layers overlap in time: a layer drains (fires) frame ``k`` while the
    next one accumulates it, and the encoder already takes frame ``k + 1``'s pixels, stalling only
    when the first engine (and its FIFO) is busy. The engines hold one frame's accumulators, so a
    layer accepts frame ``k + 1``'s events once it has drained frame ``k``.

    Parameters
    ----------
    model : runtime.spec.IntModel
        A valid model whose layers are all dense. It is validated here (which also sets every
        ``acc_bits``); a model with another layer kind raises :class:`ValueError`.
    lanes : int or list of int
        Lanes of every dense engine, or one value per layer.
    fifo_depth : int
        Depth of an event FIFO in front of every dense engine (0: none). It lets the encoder skip
        silent pixels, and a layer drain, while the next engine is still busy with earlier events.

    Members
    -------
    i : ``In(stream.Signature(unsigned(8)))``
        Pixels, ``C * H * W`` per frame in ``(C, H, W)`` order.
    o : ``Out(stream.Signature(result_layout(num_classes, acc_bits)))``
        One transfer per frame: ``{cls, logits}``, ``acc_bits`` being the readout's width.

    Attributes
    ----------
    encoder : PixelEncoder
    engines : list of DenseEngine
        In layer order; ``engines[k].o`` carries layer ``k``'s output events (logits for the last).
    argmax : Argmax
    """

    def __init__(self, model: spec.IntModel, lanes=8, fifo_depth: int = 16):
        kinds = [l.kind for l in model.layers]
        if any(k != "dense" for k in kinds):
            raise ValueError(f"DenseNetwork supports dense layers only, not {kinds!r}")
        spec.validate(model)
        if isinstance(lanes, (int, np.integer)):
            lanes = [int(lanes)] * len(model.layers)
        if len(lanes) != len(model.layers):
            raise ValueError(f"Lanes must be one integer or one per layer ({len(model.layers)}), not {lanes!r}")
        if not (isinstance(fifo_depth, (int, np.integer)) and fifo_depth >= 0):
            raise ValueError(f"FIFO depth must be a non-negative integer, not {fifo_depth!r}")
        self.model = model
        self.fifo_depth = int(fifo_depth)
        n_pixels = int(np.prod(model.input_shape))
        self.encoder = PixelEncoder(model.encode, model.input_T, n_pixels)
        self.engines = []
        for i, (layer, ln) in enumerate(zip(model.layers, lanes)):
            decode, _ = model.code_of_layer_input(i)
            w = layer.weight.reshape(layer.weight.shape[0], -1)
            self.engines.append(DenseEngine(
                n_in=w.shape[1], n_out=w.shape[0], lanes=ln, weights=w, bias=layer.bias,
                theta=None if layer.readout else layer.theta, decode=decode, acc_bits=layer.acc_bits))
        readout = model.layers[-1]
        self.argmax = Argmax(model.num_classes, readout.acc_bits)
        super().__init__({
            "i": In(stream.Signature(unsigned(8))),
            "o": Out(stream.Signature(result_layout(model.num_classes, readout.acc_bits))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.encoder = self.encoder
        for k, e in enumerate(self.engines):
            m.submodules[f"layer{k}"] = e
        m.submodules.argmax = self.argmax
        wiring.connect(m, wiring.flipped(self.i), self.encoder.i)
        for k, (a, b) in enumerate(zip([self.encoder] + self.engines[:-1], self.engines)):
            if self.fifo_depth:
                # Event payloads are plain bits inside the FIFO.
                m.submodules[f"fifo{k}"] = q = fifo.SyncFIFOBuffered(
                    width=len(a.o.payload.as_value()), depth=self.fifo_depth)
                m.d.comb += [
                    q.w_data.eq(a.o.payload.as_value()), q.w_en.eq(a.o.valid), a.o.ready.eq(q.w_rdy),
                    b.i.payload.as_value().eq(q.r_data), b.i.valid.eq(q.r_rdy), q.r_en.eq(b.i.ready),
                ]
            else:
                wiring.connect(m, a.o, b.i)
        wiring.connect(m, self.engines[-1].o, self.argmax.i)
        wiring.connect(m, self.argmax.o, wiring.flipped(self.o))
        return m
