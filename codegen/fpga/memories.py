"""The memory inventory of a design (every weight, bias, accumulator, threshold, table, FIFO and pool
memory with its depth and width), and a model of where Yosys's ``memory_libmap`` puts each one on a board
(block RAM, distributed RAM or soft logic)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from boards.kinds import FpgaBoard
from runtime.spec import IntModel

from .design import inspect_network, rtlil
from .store import FIFO_DEPTH


@dataclass(frozen=True)
class Mem:
    """One memory of the design, as rtl/ instantiates it."""

    name: str       # hierarchical name in the design (layer0.wmem, ...)
    what: str       # weights | bias | accumulators | thresholds | decode | encode | fifo | pool
    depth: int
    width: int
    rom: bool       # no write port (initialised, read only)
    # Bits of a word that are not the same in every word (ROM contents), or that some write can set
    # and some read uses (RAM): Yosys (opt_mem) drops the others before mapping. None: all bits used.
    varying: int | None = None
    used: bool = True   # False: nothing reads it, Yosys removes it

    @property
    def bits(self) -> int:
        return self.depth * self.width

    @property
    def mapped_width(self) -> int:
        return self.width if self.varying is None else self.varying


def varying_bits(fields: np.ndarray, bits: int) -> int:
    """Bit columns of ``fields`` (words x fields, two's complement ``bits`` wide) that are not constant."""
    u = np.asarray(fields, dtype=np.int64).reshape(len(fields), -1) & ((1 << bits) - 1)
    if not u.size:
        return 0
    # A bit of a field varies iff some word has it set (OR) and some word has it clear (AND).
    diff = np.bitwise_or.reduce(u, axis=0) ^ np.bitwise_and.reduce(u, axis=0)
    return int(sum(bin(int(v)).count("1") for v in diff))


def is_conv_engine(e) -> bool:
    """dense, conv2d and avgpool layers are :class:`rtl.conv.ConvEngine` s; max-pool is not."""
    from rtl.conv import ConvEngine

    return isinstance(e, ConvEngine)


def weight_words(e) -> np.ndarray:
    """A ConvEngine's weight memory as a (words, lanes) int array: ``e.weight_words()`` (word
    ``((ky*k + kx)*C_in + c)*G + g``), built with numpy from the engine's own lane packing."""
    w = e._lane_words(e.weights)                      # (G, L, C_in, k, k)
    return w.transpose(3, 4, 2, 0, 1).reshape(-1, e.lanes)


def payload_bits(component, consumer=None) -> int:
    """Width of a component's output stream payload: what an event FIFO behind it stores, less
    the eol bit when the ``consumer`` is a dense (frame-buffered) engine (that FIFO drops the
    end-of-row markers)."""
    drop = consumer is not None and getattr(consumer, "frame", False)
    return len(component.o.payload.as_value()) - (1 if drop else 0)


def memories(model: IntModel, lanes: int, fifo_depth: int = FIFO_DEPTH, net=None, store="rom") -> list[Mem]:
    """Every memory of ``rtl.network.Network(model, lanes, fifo_depth, store)``, read off its engines
    (constructing the network does not elaborate it), with the ROM contents' varying bits.

    * ``encoder.rom``: the 256-entry input encoder (8-bit phases).
    * ``fifo<k>.storage``: the event FIFO in front of engine ``k`` (``SyncFIFOBuffered`` keeps
      ``fifo_depth - 1`` entries in memory, the last in a register), one event per word.
    * dense / conv2d / avg-pool (:class:`rtl.conv.ConvEngine`): ``layer<k>.wmem`` (``C_in*k*k*groups``
      words of ``lanes`` int8; an avg-pool's are the 0/1 identity), ``layer<k>.accmem`` (the ring of
      ``ring_rows`` output rows, ``ring_rows*OW*groups`` words of ``lanes`` accumulators; dense: ``groups``), ``layer<k>.biasmem`` (``groups`` words), ``layer<k>.decmem``
      (the decode table of the layer's input code) and, for a firing layer, one threshold ROM per
      lane ``layer<k>.fire<l>.rom`` (``groups << ceil(log2 T)`` words, rows padded to a power of two).
    * a ``"ram"`` layer (``store``) has ``layer<k>.spram_store`` (``what="store"``: ``store_depth``
      words of ``lanes`` int8, uninitialised, single-port: the weight words, then for a firing layer
      its threshold table, biases folded in) instead of ``wmem``; a firing one has no ``biasmem``
      (accumulators restart from 0) and no threshold ROM (its one FireUnit reads the store).
    * max-pool (:class:`rtl.pool.MaxPoolEngine`): ``layer<k>.mem``, the phase words of its ring of
      ``ring_rows`` output rows (``ring_rows*OW*C`` words of ``T.bit_length()`` bits).
    """
    from rtl.layouts import PHASE_BITS

    net = net if net is not None else inspect_network(model, lanes, fifo_depth, store)
    enc = net.encoder
    mems = [Mem("encoder.rom", "encode", 256, PHASE_BITS, True,
                varying_bits(np.asarray(enc.encode)[:, None], PHASE_BITS))]
    prev = None
    for k, e in enumerate(net.engines):
        if net.fifo_depth >= 2:
            width = payload_bits(enc if prev is None else prev, e)
            # Phase bits that are constant 0 in every event written: Yosys drops them from the FIFO.
            # A ConvEngine with one live lane sends its FireUnit's T.bit_length()-bit search result directly and
            # a max-pool its T.bit_length()-bit phase word; Yosys does not see the zero upper bits
            # through a multi-lane collector's multiplexer, nor for the encoder's table output.
            live = None
            one_lane = is_conv_engine(prev) and (prev.lanes == 1 or (prev.groups == 1 and prev.out_shape[0] == 1)) \
                if prev is not None else False
            if prev is not None and not prev.readout and (not is_conv_engine(prev) or one_lane):
                live = width - PHASE_BITS + min(PHASE_BITS, int(prev.T).bit_length())
            mems.append(Mem(f"fifo{k}.storage", "fifo", net.fifo_depth - 1, width, False, live))
        if is_conv_engine(e):
            G, L, acc = e.groups, e.lanes, e.acc_bits
            # A firing layer with fewer channels than lanes (one group) never hands the extra lanes
            # to their FireUnits (constant masks): Yosys removes those units and accumulator bits.
            live = e.out_shape[0] if G == 1 and not e.readout else L
            ram = getattr(e, "store", "rom") == "ram"
            fold = getattr(e, "fold_bias", False)
            if ram:
                # Contents unknown to Yosys (loaded at run time): every lane of every word is live.
                live = L
                mems.append(Mem(f"layer{k}.spram_store", "store", e.store_depth, 8 * L, False))
            else:
                w = weight_words(e)
                mems.append(Mem(f"layer{k}.wmem", "weights", len(w), 8 * L, True, varying_bits(w, 8)))
            mems.append(Mem(f"layer{k}.accmem", "accumulators", e.words, L * acc, False,
                            None if live == L else live * acc))
            if not fold:
                mems.append(Mem(f"layer{k}.biasmem", "bias", G, L * acc, True,
                                varying_bits(e._lane_words(e.bias).reshape(G, L), acc)))
            d_bits = max(1, int(e.decode.max()).bit_length())
            mems.append(Mem(f"layer{k}.decmem", "decode", len(e.decode), d_bits, True,
                            varying_bits(e.decode[:, None], d_bits + 1)))
            for lane, fu in enumerate([] if fold else e.fire_units):
                f_bits = (fu.T - 1).bit_length()
                init = np.zeros((fu.rows, 1 << f_bits), dtype=np.int64)
                init[:, :fu.T] = fu.theta
                mems.append(Mem(f"layer{k}.fire{lane}.rom", "thresholds", init.size, fu.acc_bits, True,
                                varying_bits(init.reshape(-1, 1), fu.acc_bits), used=lane < live))
        else:
            mems.append(Mem(f"layer{k}.mem", "pool", e.words, int(e.T).bit_length(), False))
        prev = e
    return mems


def elaborated_memories(model: IntModel, lanes: int, fifo_depth: int = FIFO_DEPTH,
                        store="rom") -> dict[str, tuple[int, int]]:
    """``{name: (depth, width)}`` of every memory in the elaborated design (Amaranth's RTLIL), named
    as :func:`memories` names them: the check that the estimate lists what the RTL builds."""
    import re

    text = rtlil(model, "top", lanes, fifo_depth, store)
    out, module = {}, None
    for line in text.splitlines():
        m = re.match(r"module \\top(?:\.(\S+))?$", line)
        if m:
            module = m.group(1)
            continue
        m = re.match(r"\s+memory width (\d+) size (\d+) \\(\S+)$", line)
        if m:
            name = f"{module}.{m.group(3)}" if module else m.group(3)
            out[name] = (int(m.group(2)), int(m.group(1)))
    return out

MUX_FACTOR = 0.5    # Yosys memory_libmap FACTOR_MUX / FACTOR_DEMUX
# Soft logic Yosys adds around a block RAM to emulate what the RAM's read port needs and the block
# lacks (x FACTOR_EMU 2): transparency for the accumulators, enable/reset/init for the FIFOs. It
# decides small memories between soft logic and block RAM.
EMU_COST = {"accumulators": 8, "fifo": 16}


def _geometry(mem: Mem, depth: int, width: int, cost: float, byte: int) -> tuple[float, int]:
    """Yosys memory_libmap's geometry for one cell shape: ``mult_a`` address slices of the memory,
    their data bits packed ``width`` to a cell (bits of different slices share a cell), plus the read
    mux (and write demux) to select a slice. Returns (cost, cells)."""
    mult_a = -(-mem.depth // depth)
    eff_byte = 1 if mem.rom else min(byte, width)
    padded = -(-mem.mapped_width // eff_byte) * eff_byte
    cells = -(-(mult_a * padded) // width)
    c = cost * cells + MUX_FACTOR * (mult_a - 1) * mem.mapped_width
    if not mem.rom:
        c += MUX_FACTOR * (mult_a if mult_a != 1 else 0)
    return c, cells


def map_memory(mem: Mem, b: FpgaBoard) -> dict:
    """Where Yosys's ``memory_libmap`` is expected to put ``mem``: the cheapest of soft logic,
    distributed RAM and block RAM under its cost model (the library shapes and costs of the board,
    the default soft-logic costs, mux costs; a RAM must beat soft logic strictly, as in Yosys)."""
    if not mem.used:
        return {"style": "unused", "shape": None, "cells": 0}
    if mem.what == "store" and b.spram_count:
        # The RAM store of a "ram" layer: Yosys's $__ICE40_SPRAM_ (16K x 16, cost 2048, far below
        # the soft-logic or block-RAM cost of such a memory) once its all-zero initialiser is
        # deleted (the board's yosys_prepare, boards.registry); words wider than 16 bits and depths over 16K tile.
        d, w = b.spram_shape
        return {"style": "spram", "shape": f"{d}x{w}", "cells": -(-mem.width // w) * -(-mem.depth // d)}
    if mem.mapped_width == 0:  # every word equal: Yosys replaces the ROM by constants
        return {"style": "constant", "shape": None, "cells": 0}
    logic = int(mem.depth * mem.mapped_width * (b.logic_cost_rom if mem.rom else b.logic_cost_ram))
    best = (logic, "logic", None, 0)
    options = []
    if b.lutram is not None and not mem.rom:  # Yosys prunes ROMs from distributed RAM
        d, w, cost = b.lutram
        c, cells = _geometry(mem, d, w, cost, w)
        options.append((c, "lutram", f"{d}x{w}", cells))
    bram = None
    for d, w in b.bram_configs:
        c, cells = _geometry(mem, d, w, b.bram_cost, b.bram_byte)
        if not mem.rom:
            c += EMU_COST.get(mem.what, 0)
        if bram is None or c < bram[0]:
            bram = (c, "bram", f"{d}x{w}", cells)
    options.append(bram)
    for o in options:
        if o[0] < best[0]:
            best = o
    return {"style": best[1], "shape": best[2], "cells": best[3]}
