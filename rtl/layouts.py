"""Stream payload layouts shared by the RTL components.

Every inter-layer link is a :class:`amaranth.lib.stream.Signature` (valid/ready) whose payload is one
of the layouts below. A frame is a sequence of transfers closed by a delimiter, so an empty frame
(no spike at all) is still one transfer long.

Spike events (:func:`event_layout`)
    ``index``: the neuron, as its *raster index* ``(y * W + x) * C + c`` in a ``(C, H, W)``
    activation (camera order: rows, then columns, then channels; :func:`raster_to_flat` maps it to
    the spec's flat ``(C, H, W)`` index; for ``C = 1`` and for a dense activation ``(n,)`` the two
    are the same), ``phase``: its spike phase (``0..T-1`` of the layer's code; uint8 like
    everywhere in the spec), ``eol``: end of row, ``eof``: end of frame. A frame is sent in raster
    order, row by row: the spikes of row ``y`` (any order within the row; every producer here
    sends increasing index), then one end-of-row marker (``eol = 1``), also for a row without
    spikes; after the ``H`` rows' markers one end-of-frame marker (``eof = 1``). A dense
    activation is one row. Markers are not spikes: their ``index`` and ``phase`` are 0 and carry
    no meaning. Only spiking neurons appear (a silent neuron, code ``T``, sends nothing).

Logits (:func:`logit_layout`)
    ``index``: the output neuron, ``value``: its accumulator (signed, ``acc_bits`` wide), ``last``:
    set on the frame's final logit. A readout emits every logit, in index order.
"""
from amaranth.hdl import signed, unsigned
from amaranth.lib import data

import numpy as np

__all__ = ["PHASE_BITS", "index_shape", "event_layout", "logit_layout", "result_layout", "raster_to_flat"]

#: Phase codes are uint8 (``runtime.spec.MAX_T`` is 255, and ``T`` itself codes "no spike").
PHASE_BITS = 8


def index_shape(n: int):
    """Unsigned shape holding ``0..n-1`` (at least one bit, so that no port is zero-width)."""
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"Neuron count must be a positive integer, not {n!r}")
    return unsigned(max(1, (n - 1).bit_length()))


def event_layout(n: int) -> data.StructLayout:
    """Spike event ``{index, phase, eof}`` for an activation of ``n`` neurons."""
    return data.StructLayout({"index": index_shape(n), "phase": unsigned(PHASE_BITS), "eol": 1, "eof": 1})


def raster_to_flat(shape) -> np.ndarray:
    """For an activation of ``shape`` (``(C, H, W)``, or ``(n,)``): the flat ``(C, H, W)`` index of
    every raster index, ``flat[r]`` (a permutation; the identity when ``C = 1`` or for ``(n,)``).
    ``phases.reshape(-1)[raster_to_flat(shape)]`` lists a frame's phases in raster order."""
    shape = tuple(int(v) for v in shape)
    if len(shape) == 1:
        return np.arange(shape[0], dtype=np.int64)
    C, H, W = shape
    return np.arange(C * H * W, dtype=np.int64).reshape(C, H, W).transpose(1, 2, 0).reshape(-1)


def logit_layout(n: int, acc_bits: int) -> data.StructLayout:
    """Readout value ``{index, value, last}`` for ``n`` logits of ``acc_bits`` signed bits."""
    return data.StructLayout({"index": index_shape(n), "value": signed(acc_bits), "last": 1})


def result_layout(n: int, acc_bits: int) -> data.StructLayout:
    """One inference result ``{cls, logits}``: the class and all ``n`` logits (index order)."""
    return data.StructLayout({"cls": index_shape(n), "logits": data.ArrayLayout(signed(acc_bits), n)})
