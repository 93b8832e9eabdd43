"""Cycles per inference of a design, from the golden model's spikes on the first test images (or the
worst case), per layer and for the whole pipeline."""
from __future__ import annotations

import numpy as np
from numba import njit

from runtime.errors import UserError
from runtime.spec import IntModel

from .design import inspect_network
from .memories import is_conv_engine
from .store import FIFO_DEPTH, N_COUNT


def golden_phases(model: IntModel, n_images: int = N_COUNT) -> tuple[list | None, str]:
    """The golden model's phases (``phases[0]`` the encoded input, ``phases[l + 1]`` layer ``l``'s
    output, None for the readout) on the first test images of the model's dataset, or None (and the
    reason) when the dataset is unknown or missing."""
    from ..frontend import datasets

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
