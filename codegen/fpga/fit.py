"""The estimate of a design on a board (memories and multipliers mapped, cycles), whether it fits,
the largest lane count that does, and the size limit that refuses a design before any work."""
from __future__ import annotations

from boards.kinds import FpgaBoard
from boards.registry import FPGA_BOARDS
from runtime import spec
from runtime.errors import UserError
from runtime.spec import IntModel

from .cycles import cycle_estimate, golden_phases
from .design import inspect_network
from .memories import Mem, is_conv_engine, map_memory, memories, payload_bits
from .multipliers import multipliers
from .store import (FIFO_DEPTH, MAX_LANES, N_COUNT, check_fifo_depth, check_lanes, get_board, lanes_text,
                    resolve_store)

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
    lanes = check_lanes(lanes, len(model.layers))
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
        "logic_note": "LUTs and flip-flops are not estimated; codegen emit --synth measures them with Yosys and nextpnr",
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
    """The largest lane count below ``lanes`` (every engine the same) that fits ``b`` with ``store``
    (re-resolved per lane count for ``"auto"``), or None."""
    for ln in range(lanes - 1, 0, -1):
        if fits(model, b, ln, fifo_depth, store):
            return ln
    return None


def _lanes_for(c_out: int, sops: float, limit: float) -> int:
    """The fewest lanes (a count that saves a group: more that leave ``ceil(c_out / lanes)`` as it is
    buy nothing) with ``sops / lanes <= limit``, at most ``min(c_out, MAX_LANES)``."""
    top = max(1, min(c_out, MAX_LANES))
    for ln in range(1, top + 1):
        if sops / ln <= limit * (1 + 1e-9):
            g = -(-c_out // ln)
            return -(-c_out // g)         # the same groups with the fewest lanes
    return top


def fit_lanes(model: IntModel, b: FpgaBoard, fifo_depth: int = FIFO_DEPTH, store="auto", n_images: int = N_COUNT,
              phases: tuple[list | None, str] | None = None, progress: bool = False) -> list[int] | None:
    """Lanes per layer for ``b``, for the fastest slowest layer: the event-driven limit of layer
    ``i`` is its synaptic operations (from the golden model's spikes, or the worst case) over its
    lanes, so a target limit gives every engine the fewest lanes that meet it; the smallest target
    whose design fits ``b`` (``store`` re-resolved for each, ``"auto"``: SPRAM where needed) is found by
    bisection over the targets that change some lane count. Where a layer can keep its weights in
    SPRAM only from a lane count up (a threshold per store word, :func:`~.store.ram_refusal`), that
    count is tried too, and so is every engine at 2 and 4 lanes or more (block RAM packing is not
    monotonic in the word width). None when nothing fits. Max-pool layers keep 1 (they have no lanes)."""
    from tqdm import tqdm

    from .store import ram_refusal

    n = len(model.layers)
    ph, source = phases if phases is not None else golden_phases(model, n_images)
    ones = [1] * n
    cyc = cycle_estimate(model, ones, ph, source, inspect_network(model, ones, 0, "rom"), fifo_depth)
    sops = [x["synaptic_ops"] if x["lanes"] is not None else 0.0 for x in cyc["layers"]]
    c_out = [int(x.out_shape[0]) if x.kind != "maxpool" else 1 for x in model.layers]
    stream = float(cyc["pixel_input_cycles"])
    # A layer's RAM store needs lanes * 8 >= acc_bits (firing layers): its least lane count for SPRAM.
    ram_min = [next((ln for ln in range(1, MAX_LANES + 1) if ram_refusal(x, ln) is None), None)
               if x.kind != "maxpool" else None for x in model.layers]
    targets = sorted({max(stream, sops[i] / ln) for i in range(n) if sops[i]
                      for ln in range(1, min(c_out[i], MAX_LANES) + 1)} | {stream}, reverse=True)

    def configs(limit):
        base = [_lanes_for(c_out[i], sops[i], limit) if sops[i] else 1 for i in range(n)]
        yield base
        # Memory packing is not monotonic in the lanes (wider words can fill block RAMs better):
        # also try every engine with at least 2, 4 lanes.
        for v in (2, 4):
            up = [max(ln, min(v, c_out[i])) if sops[i] else 1 for i, ln in enumerate(base)]
            if up != base:
                yield up
        if b.spram_count:
            big = sorted((i for i in range(n) if ram_min[i] and ram_min[i] > base[i]),
                         key=lambda i: -model.layers[i].weight.size)
            trial = list(base)
            for i in big:
                trial[i] = ram_min[i]
                yield list(trial)

    def first_fit(limit):
        for cfg in configs(limit):
            bar.update(1)
            if fits(model, b, cfg, fifo_depth, store):
                return cfg
        return None

    with tqdm(desc=f"lanes for {b.name}", unit="try", disable=not progress, leave=False) as bar:
        lo, hi = 0, len(targets) - 1           # targets[lo] is the slowest
        best = first_fit(targets[0])
        if best is None:
            return None
        while lo < hi:                         # invariant: targets[lo] fits
            mid = (lo + hi + 1) // 2
            cfg = first_fit(targets[mid])
            if cfg is not None:
                lo, best = mid, cfg
            else:
                hi = mid - 1
    return best


#: Event FIFO depths :func:`fit_design` tries (uniform: every engine's FIFO the same).
FIFO_CANDIDATES = (16, 32, 64, 128, 256, 512)


def fit_design(model: IntModel, b: FpgaBoard, store="auto", n_images: int = N_COUNT,
               phases: tuple[list | None, str] | None = None, depths=FIFO_CANDIDATES,
               progress: bool = False) -> tuple[list[int], int] | None:
    """Lanes per layer and an event FIFO depth for ``b``: :func:`fit_lanes` at every depth of
    ``depths``, and of those that fit the one with the lowest estimated latency (deeper FIFOs let a
    layer drain a row into the next one's FIFO instead of waiting for it, for block RAM that could
    otherwise buy lanes; the BCCD detector on the ULX3S: 1.21 M cycles at depth 16, 0.95 M at 512).
    None when nothing fits."""
    ph = phases if phases is not None else golden_phases(model, n_images)
    best = None
    for d in depths:
        lanes = fit_lanes(model, b, d, store, n_images, ph, progress)
        if lanes is None:
            continue
        st = resolve_store(model, b, lanes, store, d)
        cyc = cycle_estimate(model, lanes, ph[0], ph[1], inspect_network(model, lanes, 0, st), d)
        key = (cyc["cycles_per_inference"], d)
        if best is None or key < best[0]:
            best = (key, lanes, d)
    return None if best is None else (best[1], best[2])


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
            bits["fifo"] += (net.fifo_depth - 1) * payload_bits(net.encoder if prev is None else prev, e)
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
            bits["pool"] += e.words * int(e.T).bit_length()
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
    top = lanes if isinstance(lanes, int) else max(lanes)
    hint = largest_fitting_lanes(model, b, top, est["fifo_depth"], store)
    if hint is None:
        hint = fit_lanes(model, b, est["fifo_depth"], store)
        hint = None if hint is None else lanes_text(hint)
    tail = f"; lanes={hint} fits" if hint else "; no lane count fits this board"
    if b.spram_count:
        tail += f" ({_store_words(store)})"
    used = ",".join(est["store"])
    raise UserError(f"model does not fit {b.name} ({b.part}) at lanes={lanes_text(lanes)} (store {used}): "
                    + " and ".join(parts) + tail)
