"""Stream payload layouts shared by the RTL components.

Every inter-layer link is a :class:`amaranth.lib.stream.Signature` (valid/ready) whose payload is one
of the layouts below. A frame is a sequence of transfers closed by a delimiter, so an empty frame
(no spike at all) is still one transfer long.

Spike events (:func:`event_layout`)
    ``index``: the neuron (flat ``(C, H, W)`` index of the activation), ``phase``: its spike phase
    (``0..T-1`` of the layer's code; uint8 like everywhere in the spec), ``eof``: end of frame. A
    transfer with ``eof = 1`` is a marker, not a spike: its ``index`` and ``phase`` are 0 and carry
    no meaning. Events of a frame come before its marker; only spiking neurons appear (a silent
    neuron, code ``T``, sends nothing).

Logits (:func:`logit_layout`)
    ``index``: the output neuron, ``value``: its accumulator (signed, ``acc_bits`` wide), ``last``:
    set on the frame's final logit. A readout emits every logit, in index order.
"""
from amaranth.hdl import signed, unsigned
from amaranth.lib import data

__all__ = ["PHASE_BITS", "index_shape", "event_layout", "logit_layout", "result_layout"]

#: Phase codes are uint8 (``runtime.spec.MAX_T`` is 255, and ``T`` itself codes "no spike").
PHASE_BITS = 8


def index_shape(n: int):
    """Unsigned shape holding ``0..n-1`` (at least one bit, so that no port is zero-width)."""
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"Neuron count must be a positive integer, not {n!r}")
    return unsigned(max(1, (n - 1).bit_length()))


def event_layout(n: int) -> data.StructLayout:
    """Spike event ``{index, phase, eof}`` for an activation of ``n`` neurons."""
    return data.StructLayout({"index": index_shape(n), "phase": unsigned(PHASE_BITS), "eof": 1})


def logit_layout(n: int, acc_bits: int) -> data.StructLayout:
    """Readout value ``{index, value, last}`` for ``n`` logits of ``acc_bits`` signed bits."""
    return data.StructLayout({"index": index_shape(n), "value": signed(acc_bits), "last": 1})


def result_layout(n: int, acc_bits: int) -> data.StructLayout:
    """One inference result ``{cls, logits}``: the class and all ``n`` logits (index order)."""
    return data.StructLayout({"cls": index_shape(n), "logits": data.ArrayLayout(signed(acc_bits), n)})
