"""Cycles per inference of a design, from the golden model's spikes on the first test images (or the
worst case), per layer and for the whole pipeline, with the layers working on the same frame row by
row (the streams are in raster order, rtl.layouts)."""
from __future__ import annotations

import numpy as np

from runtime.errors import UserError
from runtime.spec import IntModel

from .design import inspect_network
from .memories import is_conv_engine
from .store import FIFO_DEPTH, N_COUNT


def test_images(model: IntModel, n_images: int):
    """The first ``n_images`` test images of the model's dataset (``model.meta["dataset"]``; a
    detector's: its VOC test split at the model's input size), or None when it is unknown or missing."""
    from ..frontend import datasets, voc

    ds = model.meta.get("dataset") if isinstance(model.meta, dict) else None
    if not ds or n_images <= 0:
        return None
    try:
        if model.task == "detect" and voc.is_detection_dataset(ds):
            C, H, W = model.input_shape
            images = voc.load(ds, "test", (W, H), C, classes=list(model.head.classes)).images
        else:
            images, _ = datasets.load(ds, "test")
    except UserError:
        return None
    if tuple(images.shape[1:]) != tuple(model.input_shape):
        return None
    return images[:n_images]


def golden_phases(model: IntModel, n_images: int = N_COUNT) -> tuple[list | None, str]:
    """The golden model's phases (``phases[0]`` the encoded input, ``phases[l + 1]`` layer ``l``'s
    output, None for the readout) on the first test images of the model's dataset
    (:func:`test_images`), or None (and the reason) when the dataset is unknown or missing."""
    images = test_images(model, n_images)
    if images is not None:
        from runtime import golden

        r = golden.run(model, images, keep_phases=True)
        return r.phases, f"mean over the first {len(images)} {model.meta['dataset']} test images (golden model)"
    return None, "worst case: every input neuron of every layer spikes (no dataset available)"


def _covered(e) -> np.ndarray:
    """(H, W): output positions an input spike at (y, x) feeds (its window run lengths)."""
    if is_conv_engine(e):
        ry, rx = e.runs_y, e.runs_x
    else:
        ry, rx = e.row_runs, e.col_runs
    return np.outer(ry[:, 1], rx[:, 1]).astype(np.int64)


# Measured against amaranth.sim (tests/test_fpga_emit.py): the fixed costs of the markers.
FIRE_ROW_OVERHEAD = 4       # ConvEngine, firing: per output row (marker taken, first read, row marker out)
FIRE_FRAME_OVERHEAD = 2     # ConvEngine, firing: the end-of-frame marker
READOUT_ROW_OVERHEAD = 1    # ConvEngine, readout: per output row
POOL_MARKER = 2             # MaxPoolEngine: an end-of-row marker passing its pipeline
POOL_FRAME_OVERHEAD = 3     # MaxPoolEngine: the end-of-frame marker
PIXEL_LATENCY = 3           # pixel accepted -> its event in the first engine's input register (encoder ROM, FIFO)


def layer_cycles(e, in_spikes: np.ndarray, out_spikes: np.ndarray | None, rows_in: int) -> dict:
    """Cycles of one engine for a batch, per input row and per output row.

    ``in_spikes`` (N, C, H, W) bool, the layer's input spikes in the engine's input shape;
    ``out_spikes`` (N, n_out) bool in flat ``(C, OH, OW)`` order (firing layers) or None;
    ``rows_in``: the rows of the input stream (a dense layer's input is the producer's activation,
    sent row by row; ``H`` for the others).

    ConvEngine (dense, conv2d, avg-pool): an input spike costs ``covered * groups`` cycles
    (``covered``: the output positions its windows reach), at least 1; an end-of-row marker 1. Its
    synaptic operations are ``covered * C_out``, its event-driven limit ``covered * C_out / lanes``.
    Drain of an output row of a firing layer: per accumulator word ``max(3, T.bit_length() + max(1,
    s))`` (``s``: spikes in the word; a word waits for its FireUnit searches and the collector
    forwards one spike per cycle), plus :data:`FIRE_ROW_OVERHEAD`; with a RAM store (one serial
    FireUnit) per word ``max(3, n * (T.bit_length() + 1))`` (``n``: the word's channels); of a
    readout row ``2 * words + neurons`` plus :data:`READOUT_ROW_OVERHEAD`. MaxPoolEngine:
    ``max(1, covered)`` cycles per input spike, :data:`POOL_MARKER` per end-of-row marker, ``OW * C +
    1`` per output row.

    Returns per image: ``work`` (N, rows_in) cycles of each input row (its events and marker),
    ``drain_rows`` (N, OH) cycles of each output row's drain, ``frame`` the end-of-frame marker's
    cycles, and the totals ``events``, ``acc``, ``sops``, ``limit``, ``drain``."""
    cov = _covered(e)[None, None]                        # (1, 1, H, W)
    n = len(in_spikes)
    conv = is_conv_engine(e)
    per_event = np.maximum(1, cov * (e.groups if conv else 1))
    cost = in_spikes * per_event                          # (N, C, H, W)
    events = in_spikes.reshape(n, -1).sum(1)
    covered = (in_spikes * cov).reshape(n, -1).sum(1)
    zero = (in_spikes & (cov == 0)).reshape(n, -1).sum(1)     # spikes that reach no output
    C_out, OH, OW = e.out_shape
    if conv and e.frame:
        # The input is one row of the engine, but it arrives in the producer's rows (raster order).
        work = cost.reshape(n, rows_in, -1).sum(2) + 1
    else:
        work = cost.sum((1, 3)) + (1 if conv else POOL_MARKER)
    steps = int(e.T).bit_length() if not e.readout else 0
    if conv:
        G, L = e.groups, e.lanes
        acc = covered * G + zero
        sops = covered * C_out
        limit = sops / L
        if e.readout:
            drain_rows = np.full((n, OH), 2 * OW * G + OW * C_out + READOUT_ROW_OVERHEAD)
            frame = np.zeros(n)
        elif getattr(e, "fold_bias", False):
            per_group = [max(3, min(L, C_out - g * L) * (steps + 1)) for g in range(G)]
            drain_rows = np.full((n, OH), OW * sum(per_group) + FIRE_ROW_OVERHEAD)
            frame = np.full(n, FIRE_FRAME_OVERHEAD)
        else:
            s = np.zeros((n, G * L, OH, OW), dtype=np.int64)
            s[:, :C_out] = out_spikes.reshape(n, C_out, OH, OW)
            per_word = s.reshape(n, G, L, OH, OW).sum(2)          # (N, G, OH, OW): spikes per word
            drain_rows = np.maximum(3, steps + np.maximum(1, per_word)).sum((1, 3)) + FIRE_ROW_OVERHEAD
            frame = np.full(n, FIRE_FRAME_OVERHEAD)
    else:
        acc = covered + zero
        sops = covered
        limit = events.astype(float)
        drain_rows = np.full((n, OH), OW * C_out + 1)
        frame = np.full(n, POOL_FRAME_OVERHEAD)
    drain = drain_rows.sum(1) + frame
    if out_spikes is not None:
        row_events = out_spikes.reshape(n, C_out, OH, OW).sum((1, 3))
    else:
        row_events = np.full((n, OH), OW * C_out)
    return {"events": events, "acc": acc, "sops": sops, "limit": limit, "drain": drain,
            "work": work.astype(np.int64), "drain_rows": drain_rows.astype(np.int64), "frame": frame,
            "row_events": row_events}


def row_schedule(e, work, drain_rows, frame, row_start, row_end, min_end=None):
    """When one engine sends its output rows, for one image, from when its input rows arrive.

    ``row_start[y]`` / ``row_end[y]``: the cycles at which input row ``y``'s first event and its
    end-of-row marker can reach the engine. The engine takes row ``y`` once it is free and the row
    has begun, and is done with it no earlier than ``work[y]`` cycles later nor before the row's
    marker arrived; then it drains the output rows that row completes (``e.close_rows``; a dense
    layer its one row after the last input row), one after another, each no sooner than
    ``min_end[r]`` (back-pressure: the next engine must have taken all but a FIFO of its events).
    Returns the start and end of every output row, the start and end of the work on every input
    row, the cycle at which the engine is done with the frame, and the cycles it was busy or
    blocked by the next engine (not waiting for input)."""
    free = 0.0
    out_start, out_end, in_start, in_end = [], [], [], []
    rows_in = len(work)
    waited = 0.0                       # cycles spent waiting for input (not busy, not blocked)
    for y in range(rows_in):
        start = max(free, row_start[y])
        if y:
            waited += start - free
        free = max(start + work[y], row_end[y] + 1)
        waited += free - (start + work[y])
        in_start.append(start)
        in_end.append(free)
        closing = (1 if y == rows_in - 1 else 0) if getattr(e, "frame", False) else int(e.close_rows[y])
        for _ in range(closing):
            r = len(out_start)
            out_start.append(free + 1)
            free += drain_rows[r]
            if min_end is not None:
                free = max(free, min_end[r])
            out_end.append(free)
    occupied = free + frame - in_start[0] - waited if in_start else 0.0
    return np.array(out_start), np.array(out_end), np.array(in_start), np.array(in_end), free + frame, occupied


def frame_schedule(engines, per: list, i: int, pixel_rows: int, row_px: int, fifo_depth: int,
                   rounds: int | None = None) -> tuple[float, list]:
    """Latency of image ``i`` (first pixel to result) with every engine's :func:`row_schedule`, fed
    row by row, and back-pressure: an engine's drain of output row ``r`` ends no sooner than the next
    engine's work on that row, less the time of the last ``fifo_depth + 1`` of its events (they wait
    in the FIFO and the input register). The coupling is solved by repeating the forward pass with
    the last pass's requirements until nothing moves by half a cycle (each pass carries a delay
    one row further; at most ``rounds`` passes, default 4x the rows of all engines).
    Returns the cycle the last engine is done and, per engine, the cycles it was busy or blocked
    (back to back, a frame cannot come faster than the largest of them).
    Against Verilator (isolated frames): the BCCD detector 1,207,011 vs 1,215,470 cycles."""
    req = [None] * len(engines)
    done = 0.0
    occupied = [0.0] * len(engines)
    if rounds is None:
        rounds = 4 * (pixel_rows + sum(int(e.out_shape[1]) for e in engines)) + 8
    for _ in range(rounds):
        starts = np.arange(pixel_rows) * (row_px + 1) + PIXEL_LATENCY
        ends = starts + row_px
        passes = []
        for k, e in enumerate(engines):
            c = per[k]
            starts, ends, in_s, in_e, done, occupied[k] = row_schedule(e, c["work"][i], c["drain_rows"][i],
                                                                       c["frame"][i], starts, ends, req[k])
            passes.append((in_s, in_e))
        new = [None] * len(engines)
        for k in range(len(engines) - 1):
            nxt = per[k + 1]
            events = per[k]["row_events"][i]            # spikes in each output row of engine k
            in_s, in_e = passes[k + 1]
            if len(events) != len(in_e):                # a dense consumer: rows of the producer
                continue
            work = nxt["work"][i]
            slack = work * np.minimum(1.0, (fifo_depth + 1) / np.maximum(events, 1))
            new[k] = in_e - slack
        if all((a is None and b is None) or (a is not None and b is not None and np.abs(a - b).max() < 0.5)
               for a, b in zip(new, req)):
            break
        req = new
    return done, occupied


def cycle_estimate(model: IntModel, lanes: int, phases: list | None, source: str, net=None,
                   fifo_depth: int = FIFO_DEPTH, store="rom") -> dict:
    """Cycles per inference, per image of ``phases`` (:func:`golden_phases`) and then averaged, or
    for the worst case (every neuron spikes) when ``phases`` is None.

    The layers work on the same frame at once, row by row: :func:`row_schedule` of every engine,
    fed by the rows of the one before it (the first by the pixel stream, ``W * C`` pixels and one
    marker per row, one per cycle), gives ``cycles_per_inference``, the latency of a frame alone in
    the pipeline (first pixel to result). ``frame_period``: back to back, a frame every ``max``
    over engines of its occupied cycles (busy, or blocked by the next engine) and the pixel stream. The
    ``slowest_layer_limit`` is the largest of the pixel stream and every layer's event-driven limit
    (synaptic operations / lanes; a max-pool: one input spike per cycle), and
    ``latency_vs_limit`` the latency over it. ``cycles_sequential``: the layers one after another
    (``max(pixels, A_0) + sum A + sum D``); ``formula_cycles``: ``sum (A + D)``."""
    from rtl.network import input_activation_shape

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
    shape0 = tuple(model.input_shape)
    C0, H0, W0 = shape0 if len(shape0) == 3 else (shape0[0], 1, 1)
    pixels = int(np.prod(shape0))
    pixel_rows = H0 if len(shape0) == 3 else 1
    row_px = pixels // pixel_rows
    layers, per = [], []
    for k, e in enumerate(net.engines):
        x = spikes[k].reshape((n,) + tuple(e.in_shape))
        out = spikes[k + 1] if not e.readout else None
        src = input_activation_shape(model, k)
        rows_in = int(src[1]) if len(src) == 3 else 1
        c = layer_cycles(e, x, out, rows_in)
        per.append(c)
        mean = {key: float(np.mean(c[key])) for key in ("events", "acc", "sops", "limit", "drain")}
        layer = model.layers[k]
        cov = _covered(e)
        conv = is_conv_engine(e)
        layers.append({
            "layer": k, "kind": layer.kind, "n_in": int(e.n_in), "n_out": int(e.n_out),
            "lanes": int(e.lanes) if conv else None, "groups": int(e.groups) if conv else None,
            "store": getattr(e, "store", "rom") if conv else None,
            "ring_rows": int(e.ring_rows),
            "cycles_per_event": int(cov.max() * (e.groups if conv else 1)),
            "input_spikes": round(mean["events"], 3),
            "accumulate_cycles": round(mean["acc"], 3),
            "synaptic_ops": round(mean["sops"], 3),
            "event_driven_limit": round(mean["limit"], 3),
            "limit_ratio": round(mean["acc"] / mean["limit"], 3) if mean["limit"] else None,
            "drain_cycles": round(mean["drain"], 3),
            "busy_cycles": round(float(np.mean(c["work"].sum(1) + c["drain"])), 3),
        })
    latency = np.zeros(n)
    occupied = np.zeros((n, len(net.engines)))
    for i in range(n):
        done, occupied[i] = frame_schedule(net.engines, per, i, pixel_rows, row_px, fifo_depth)
        latency[i] = done + 1          # + the result register
    for k, x in enumerate(layers):
        x["occupied_cycles"] = round(float(np.mean(occupied[:, k])), 3)
    acc = sum(x["accumulate_cycles"] for x in layers)
    drain = sum(x["drain_cycles"] for x in layers)
    limit = sum(x["event_driven_limit"] for x in layers)
    stream = pixels + pixel_rows + 1
    slowest = max([float(stream)] + [x["event_driven_limit"] for x in layers])
    A = [x["accumulate_cycles"] for x in layers]
    sequential = max(stream, A[0]) + sum(A[1:]) + drain
    init = max(2 * e.words if is_conv_engine(e) else e.words for e in net.engines)
    cpi = float(np.mean(latency))
    return {"spikes_source": source, "images": n, "layers": layers, "accumulate_cycles": round(acc, 3),
            "drain_cycles": round(drain, 3), "formula_cycles": round(acc + drain, 3),
            "event_driven_limit": round(limit, 3), "pixel_input_cycles": stream,
            "cycles_per_inference": round(cpi, 3),
            "frame_period": round(max([float(stream)] + [x["occupied_cycles"] for x in layers]), 3),
            "slowest_layer_limit": round(slowest, 3),
            "latency_vs_limit": round(cpi / slowest, 3) if slowest else None,
            "cycles_sequential": round(float(sequential), 3),
            # Every engine initialises its memories after reset, in parallel (conv: 2 cycles per
            # accumulator word to load the biases; max-pool: 1 per phase word).
            "init_cycles_after_reset": init,
            # Once after configuration (RAM stores): rtl.loader.StoreLoader takes width/8 + 1 cycles
            # per word when the image bytes arrive one per cycle.
            "load_cycles": sum(e.store_depth * (e.lanes + 1) for e in net.engines
                               if getattr(e, "store", "rom") == "ram")}
