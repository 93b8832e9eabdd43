"""Where each layer's weights go (``--store``): initialised block RAM (``rom``) or a RAM store loaded at
run time (``ram``, iCE40 SPRAM); the lane and FIFO options; the Verilog symbol of a model."""
from __future__ import annotations

import numpy as np

from boards.kinds import FpgaBoard
from runtime import spec
from runtime.errors import UserError
from runtime.spec import IntModel


FIFO_DEPTH = 16     # Network's default event FIFO in front of every engine
N_COUNT = 10        # test images whose spikes drive the cycle estimate
STORES = ("auto", "rom", "ram")


def symbol(name: str) -> str:
    """A Verilog identifier from a model name (``mnist-mlp`` -> ``mnist_mlp``)."""
    from ..c.emit import c_symbol

    return c_symbol(name)


MAX_LANES = 64      # synapse lanes per engine: 64 int8 multipliers, more DSPs than any board here has


def _one_lane_count(v, what="--lanes") -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise UserError(f"{what} must be a positive integer, not {v!r}")
    if v > MAX_LANES:
        raise UserError(f"{what} must be at most {MAX_LANES} (emit_fpga.MAX_LANES), not {v}")
    return int(v)


def check_lanes(lanes, n_layers: int | None = None):
    """One lane count for every engine (an int), or one per layer (a list; ``n_layers`` long when
    given; max-pool layers have no lanes, any value is kept). Returns an int or a list of ints."""
    if isinstance(lanes, (list, tuple)):
        if not lanes:
            raise UserError("--lanes must be a positive integer or one per layer, not an empty list")
        if n_layers is not None and len(lanes) != n_layers:
            raise UserError(f"--lanes must be one integer or one per layer ({n_layers}), not {len(lanes)} values")
        return [_one_lane_count(v) for v in lanes]
    return _one_lane_count(lanes)


def lanes_of(lanes, n_layers: int) -> list[int]:
    """Lanes per layer from :func:`check_lanes`'s int or list."""
    return [int(lanes)] * n_layers if isinstance(lanes, int) else list(lanes)


def lanes_text(lanes) -> str:
    """``8`` or ``4,1,4,1,4,2`` (as ``--lanes`` takes it)."""
    return str(lanes) if isinstance(lanes, int) else ",".join(str(v) for v in lanes)


def parse_lanes(text: str):
    """``--lanes`` on the command line: ``N``, ``N,N,...`` (one per layer) or ``auto``."""
    t = str(text).strip()
    if t == "auto":
        return "auto"
    try:
        vals = [int(v) for v in t.split(",")]
    except ValueError:
        raise UserError(f"--lanes must be a positive integer, one per layer (comma-separated) or auto, not {text!r}") from None
    return vals[0] if len(vals) == 1 else vals


def check_fifo_depth(depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 0:
        raise UserError(f"the event FIFO depth must be a non-negative integer, not {depth!r}")
    return int(depth)


def get_board(name: str) -> FpgaBoard:
    """An FPGA board by name or device name (:func:`boards.registry.fpga`); UserError if unknown."""
    from boards.registry import fpga

    return fpga(name)


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
    lanes = check_lanes(lanes, len(model.layers))
    per = lanes_of(lanes, len(model.layers))
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
        why = ram_refusal(x, per[i]) if st == "ram" else None
        if why is not None:
            raise UserError(f"layer {i} ({x.kind}) cannot keep its weights in a RAM store at lanes={per[i]}: {why}; "
                            f"use --store rom or auto")
    if b is not None and "ram" in out and not b.spram_count:
        raise UserError(f"--store ram needs SPRAM, and {b.name} ({b.part}) has none: use --store rom or auto")
    return out


def _auto_store(model: IntModel, b: FpgaBoard | None, lanes, fifo_depth: int) -> list[str]:
    from .design import inspect_network
    from .fit import mapping

    n = len(model.layers)
    out = ["rom"] * n
    if b is None or not b.spram_count or mapping(model, b, lanes, fifo_depth, out)["fits"]:
        return out
    net = inspect_network(model, lanes, 0, out)
    per = lanes_of(lanes, n)
    cands = [i for i, x in enumerate(model.layers) if ram_refusal(x, per[i]) is None]
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
