"""Top level of a whole model: pixel encoder -> one event engine per layer -> argmax."""
import numpy as np
from amaranth import *
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from runtime import spec

from .conv import ConvEngine
from .dense import DenseEngine
from .encoder import PixelEncoder
from .layouts import logit_layout, raster_to_flat, result_layout
from .loader import StoreLoader
from .readout import Argmax

__all__ = ["Network", "build_engine", "input_activation_shape"]


def input_activation_shape(model: spec.IntModel, i: int) -> tuple:
    """The shape of the activation layer ``i`` reads, before any flattening: ``(C, H, W)`` or ``(n,)``."""
    return tuple(model.input_shape) if i == 0 else tuple(model.layers[i - 1].out_shape)


def build_engine(model: spec.IntModel, i: int, lanes: int, store: str = "rom"):
    """The event engine of layer ``i`` of a validated ``model``.

    dense: :class:`~rtl.dense.DenseEngine`; conv2d: :class:`~rtl.conv.ConvEngine`; avgpool: a
    ConvEngine whose weights are the identity over channels (``acc[c] = sum D[f]`` over the window,
    no bias); maxpool: :class:`~rtl.pool.MaxPoolEngine` (``lanes`` and ``store`` do not apply).
    ``store``: ``"rom"`` (initialised block RAM) or ``"ram"`` (a loaded single-port RAM, SPRAM).
    """
    layer = model.layers[i]
    decode, t_in = model.code_of_layer_input(i)
    theta = None if layer.readout else layer.theta
    if layer.kind == "dense":
        # Its input arrives in the producer's raster order (rtl.layouts): weight column r is the
        # spec's column of the neuron with raster index r.
        w = layer.weight.reshape(layer.weight.shape[0], -1)
        w = w[:, raster_to_flat(input_activation_shape(model, i))]
        return DenseEngine(n_in=w.shape[1], n_out=w.shape[0], lanes=lanes, weights=w, bias=layer.bias,
                           theta=theta, decode=decode, acc_bits=layer.acc_bits, store=store)
    if layer.kind == "conv2d":
        return ConvEngine(layer.in_shape, layer.kernel, layer.stride, layer.padding, lanes,
                          layer.weight, layer.bias, theta, decode, layer.acc_bits, store)
    if layer.kind == "avgpool":
        C, k = layer.in_shape[0], layer.kernel
        eye = np.zeros((C, C, k, k), dtype=np.int64)
        eye[np.arange(C), np.arange(C)] = 1
        return ConvEngine(layer.in_shape, k, layer.stride, layer.padding, lanes, eye,
                          np.zeros(C, dtype=np.int64), theta, decode, layer.acc_bits, store)
    if layer.kind == "maxpool":
        from .pool import MaxPoolEngine
        # A max-pool keeps the code of its input (the image's, if it comes first).
        return MaxPoolEngine(layer.in_shape, layer.kernel, layer.stride, layer.padding, t_in)
    raise ValueError(f"Layer {i}: no engine for layer kind {layer.kind!r}")


class Network(wiring.Component):
    """A whole one-spike model as one streaming pipeline.

    ``PixelEncoder -> engine (layer 0) -> ... -> engine (readout) -> Argmax``, linked by valid/ready
    streams of spike events (see :mod:`rtl.layouts`), with an optional event FIFO in front of every
    engine. Events flow in raster order, row by row (:mod:`rtl.layouts`): conv, avg-pool and
    max-pool engines keep only the rows still open and send each output row on as soon as it is
    complete, so all layers work on the same frame at once; a dense layer fires at the end of the
    frame, while the encoder already takes frame ``k + 1``'s pixels (stalling only when the first
    engine and its FIFO are busy).

    Parameters
    ----------
    model : runtime.spec.IntModel
        A valid model (validated here, which also sets every ``acc_bits``).
    lanes : int or list of int
        Lanes of every dense/conv/avgpool engine, or one value per layer (ignored for max-pool).
    fifo_depth : int
        Depth of an event FIFO in front of every engine (0: none). It lets the encoder skip
        silent pixels, and a layer drain, while the next engine is still busy with earlier events.
        The FIFO in front of a dense engine drops end-of-row markers (and stores no eol bit).
    store : str or list of str
        ``"rom"`` or ``"ram"`` for every layer, or one per layer (see
        :class:`~rtl.conv.ConvEngine`; max-pool layers must say ``"rom"``). With any ``"ram"``
        layer the network has a ``load`` port and a :class:`~rtl.loader.StoreLoader`.

    Members
    -------
    i : ``In(stream.Signature(unsigned(8)))``
        Pixels, ``C * H * W`` per frame in ``(H, W, C)`` order (camera order; for ``C = 1`` the
        same as ``(C, H, W)``).
    o : ``Out(stream.Signature(result_layout(num_classes, acc_bits)))``
        One transfer per frame: ``{cls, logits}``, ``acc_bits`` being the readout's width. A
        detector (``model.task == "detect"``) instead sends its readout map as it is computed:
        ``Out(stream.Signature(logit_layout(n, acc_bits)))``, every logit ``{index, value, last}``
        (``index`` the flat ``(C, H, W)`` index of the map, rows in order as they complete, ``last``
        on the frame's final logit); the host decodes the detections
        (``runtime.spec.decode_detections``).
    load : ``In(stream.Signature(unsigned(8)))``, ``loaded`` : ``Out(1)``
        Only with a ``"ram"`` layer: the store image (:meth:`load_image`), once after
        configuration; no frame gets past the first such layer before ``loaded``.

    Attributes
    ----------
    encoder : PixelEncoder
    engines : list
        In layer order (:func:`build_engine`); ``engines[k].o`` carries layer ``k``'s output
        events (logits for the last).
    argmax : Argmax or None (a detector)
    loader : StoreLoader or None
    """

    def __init__(self, model: spec.IntModel, lanes=8, fifo_depth: int = 16, store="rom"):
        spec.validate(model)
        if isinstance(lanes, (int, np.integer)):
            lanes = [int(lanes)] * len(model.layers)
        if len(lanes) != len(model.layers):
            raise ValueError(f"Lanes must be one integer or one per layer ({len(model.layers)}), not {lanes!r}")
        if isinstance(store, str):
            store = [store] * len(model.layers)
        if len(store) != len(model.layers) or any(s not in ("rom", "ram") for s in store):
            raise ValueError(f"Store must be 'rom' or 'ram', or one of them per layer ({len(model.layers)}), "
                             f"not {store!r}")
        for i, s in enumerate(store):
            if s == "ram" and model.layers[i].kind == "maxpool":
                raise ValueError(f"Layer {i} is a max-pool: it has no weights to store in RAM")
        if not (isinstance(fifo_depth, (int, np.integer)) and fifo_depth >= 0):
            raise ValueError(f"FIFO depth must be a non-negative integer, not {fifo_depth!r}")
        self.model = model
        self.fifo_depth = int(fifo_depth)
        n_pixels = int(np.prod(model.input_shape))
        row = n_pixels if len(model.input_shape) != 3 else int(model.input_shape[0] * model.input_shape[2])
        self.encoder = PixelEncoder(model.encode, model.input_T, n_pixels, row)
        self.store = list(store)
        self.engines = [build_engine(model, i, ln, st) for i, (ln, st) in enumerate(zip(lanes, store))]
        readout = model.layers[-1]
        #: A detector sends its readout map (no argmax): every logit, row by row as rows complete.
        self.detect = model.task == "detect"
        self.argmax = None if self.detect else Argmax(model.num_classes, readout.acc_bits)
        self.ram_engines = [e for e, st in zip(self.engines, store) if st == "ram"]
        self.loader = (StoreLoader([(e.lanes * 8, e.store_depth) for e in self.ram_engines])
                       if self.ram_engines else None)
        out = (logit_layout(model.num_classes, readout.acc_bits) if self.detect
               else result_layout(model.num_classes, readout.acc_bits))
        ports = {
            "i": In(stream.Signature(unsigned(8))),
            "o": Out(stream.Signature(out)),
        }
        if self.loader is not None:
            ports["load"] = In(stream.Signature(unsigned(8)))
            ports["loaded"] = Out(1)
        super().__init__(ports)

    def load_image(self) -> bytes:
        """The bytes to send on ``load`` (empty without a ``"ram"`` layer)."""
        if self.loader is None:
            return b""
        return StoreLoader.image([e.store_words() for e in self.ram_engines],
                                 [e.lanes * 8 for e in self.ram_engines])

    def elaborate(self, platform):
        m = Module()
        m.submodules.encoder = self.encoder
        for k, e in enumerate(self.engines):
            m.submodules[f"layer{k}"] = e
        if self.argmax is not None:
            m.submodules.argmax = self.argmax
        if self.loader is not None:
            m.submodules.loader = self.loader
            wiring.connect(m, wiring.flipped(self.load), self.loader.i)
            m.d.comb += self.loaded.eq(self.loader.done)
            for j, e in enumerate(self.ram_engines):
                wiring.connect(m, getattr(self.loader, f"o{j}"), e.load)
                m.d.comb += e.loaded.eq(self.loader.done)
        wiring.connect(m, wiring.flipped(self.i), self.encoder.i)
        for k, (a, b) in enumerate(zip([self.encoder] + self.engines[:-1], self.engines)):
            if self.fifo_depth:
                # Event payloads are plain bits inside the FIFO. A frame-buffered (dense) engine
                # ignores end-of-row markers: they are dropped before its FIFO, which then does
                # not store the eol bit.
                drop = getattr(b, "frame", False)
                fields = [a.o.payload.index, a.o.payload.phase, a.o.payload.eof] if drop else [a.o.payload.as_value()]
                width = sum(len(f) for f in fields)
                m.submodules[f"fifo{k}"] = q = fifo.SyncFIFOBuffered(width=width, depth=self.fifo_depth)
                m.d.comb += [q.w_data.eq(Cat(*fields)), b.i.valid.eq(q.r_rdy), q.r_en.eq(b.i.ready)]
                if drop:
                    ib, pb = len(b.i.payload.index), len(b.i.payload.phase)
                    m.d.comb += [
                        q.w_en.eq(a.o.valid & ~a.o.payload.eol), a.o.ready.eq(q.w_rdy | a.o.payload.eol),
                        b.i.payload.index.eq(q.r_data[:ib]), b.i.payload.phase.eq(q.r_data[ib:ib + pb]),
                        b.i.payload.eof.eq(q.r_data[ib + pb]),
                    ]
                else:
                    m.d.comb += [q.w_en.eq(a.o.valid), a.o.ready.eq(q.w_rdy),
                                 b.i.payload.as_value().eq(q.r_data)]
            else:
                wiring.connect(m, a.o, b.i)
        if self.argmax is None:
            wiring.connect(m, self.engines[-1].o, wiring.flipped(self.o))
        else:
            wiring.connect(m, self.engines[-1].o, self.argmax.i)
            wiring.connect(m, self.argmax.o, wiring.flipped(self.o))
        return m
