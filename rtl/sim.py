"""Run the RTL in amaranth.sim: stream helpers and a whole-network driver for tests and benchmarks."""
import sys
from dataclasses import dataclass, field

import numpy as np
from amaranth.sim import Simulator

from .layouts import raster_to_flat
from .network import Network

__all__ = ["PERIOD", "SimResult", "pixel_order", "SimTimeout", "make_simulator", "run_bounded", "simulate_network",
           "stream_put", "stream_get"]


async def stream_put(ctx, s, payload, rng=None, gap=0.0):
    """Send one transfer on stream ``s`` (after idle cycles with probability ``gap`` each)."""
    while rng is not None and gap and rng.random() < gap:
        await ctx.tick()
    ctx.set(s.valid, 1)
    ctx.set(s.payload, payload)
    await ctx.tick().until(s.ready)
    ctx.set(s.valid, 0)


async def stream_get(ctx, s, rng=None, stall=0.0):
    """Receive one transfer from stream ``s``; ``ready`` drops with probability ``stall`` per cycle."""
    while True:
        ready = not (rng is not None and stall and rng.random() < stall)
        ctx.set(s.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(s.valid, s.payload)
        if ready and valid:
            ctx.set(s.ready, 0)
            return payload


PERIOD = 1e-8  #: the simulated clock period (100 MHz)


class SimTimeout(RuntimeError):
    """A simulation did not finish within its cycle budget (a hang: lost transfer or deadlock)."""


def run_bounded(sim: Simulator, max_cycles: int, finished=None) -> None:
    """Run ``sim`` until its testbenches finish; raise :class:`SimTimeout` after ``max_cycles``.

    ``finished()``, if given, is checked afterwards as well (a testbench may end early).
    """
    async def watchdog(ctx):
        await ctx.delay(max_cycles * PERIOD)
        raise SimTimeout(f"simulation did not finish within {max_cycles} cycles")

    sim.add_testbench(watchdog, background=True)
    sim.run()
    if finished is not None and not finished():
        raise SimTimeout("simulation ended before every expected output arrived")


def make_simulator(dut) -> Simulator:
    """A :class:`Simulator` for ``dut`` with a 100 MHz ``sync`` clock.

    amaranth.sim compiles each memory write port into one Python expression; for words wider than
    about 2,500 bits (a wide accumulator memory, e.g. 128 lanes of 32 bits) that expression exceeds
    Python's default compiler recursion limit, so the limit is raised while the design compiles.
    """
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20000))
    try:
        sim = Simulator(dut)
    finally:
        sys.setrecursionlimit(old)
    sim.add_clock(PERIOD)
    return sim


def pixel_order(images: np.ndarray) -> np.ndarray:
    """Images (N, C, H, W) as the pixel stream a network takes: (N, H*W*C), camera order."""
    images = np.asarray(images)
    return images.transpose(0, 2, 3, 1).reshape(len(images), -1) if images.ndim == 4 else images.reshape(len(images), -1)


@dataclass
class SimResult:
    """What :func:`simulate_network` observed, per frame.

    ``phases[k]`` holds layer ``k``'s output phases (N, n_out) for every firing layer, rebuilt from
    the events on ``engines[k].o`` (silent neurons get the no-spike code of the layer's output, T). ``done_cycle[n]`` is the cycle in
    which frame n's result left ``o``; ``eof_cycle[k][n]`` the one in which layer k's end-of-frame
    marker (or last logit) left it, ``eof_in_cycle[k][n]`` the one in which layer k accepted the
    frame's input marker (so ``eof_cycle - eof_in_cycle`` is the drain time).
    """

    logits: np.ndarray
    classes: np.ndarray
    phases: list
    done_cycle: list = field(default_factory=list)
    eof_cycle: list = field(default_factory=list)
    eof_in_cycle: list = field(default_factory=list)
    errors: list = field(default_factory=list)


def simulate_network(model, images, lanes=8, *, fifo_depth=16, gap=0.0, stall=0.0, seed=0,
                     dut=None, max_cycles=None, store="rom", start=0) -> SimResult:
    """Stream ``images`` (N, C, H, W) uint8 through a :class:`~rtl.network.Network`, back to back.

    ``gap``: probability of an idle input cycle before each pixel; ``stall``: probability that the
    result consumer holds ``ready`` low in a cycle. Protocol errors seen by the monitors (an event
    event out of the engine's order, a neuron reported twice, a spike with phase ``>= T``) are listed in
    ``errors`` rather than raised, so that a test can assert on them. A run that has not delivered
    every result after ``max_cycles`` (default: a generous bound from the layer sizes) raises
    :class:`SimTimeout`.

    ``store``: as :class:`~rtl.network.Network`; with a ``"ram"`` layer the store image is sent on
    ``load`` (with the same gaps) while the pixels queue, so cycle counts include the load.
    ``start``: idle cycles before the first pixel (e.g. to let the engines initialise, so that
    ``done_cycle[0] - start`` is a frame's latency).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    dut = dut if dut is not None else Network(model, lanes, fifo_depth, store)
    n = len(images)
    rng = np.random.default_rng(seed)
    firing = [k for k, e in enumerate(dut.engines) if not e.readout]
    flat = [raster_to_flat(e.out_shape).tolist() for e in dut.engines]
    phases = {k: np.full((n, dut.engines[k].n_out), dut.engines[k].T, dtype=np.uint8) for k in firing}
    res = SimResult(logits=np.zeros((n, model.num_classes), dtype=np.int64),
                    classes=np.zeros(n, dtype=np.int64), phases=[],
                    eof_cycle=[[] for _ in dut.engines], eof_in_cycle=[[] for _ in dut.engines])
    cycle = [0]

    async def driver(ctx):
        for _ in range(start):
            await ctx.tick()
        for img in pixel_order(images):
            for p in img:
                await stream_put(ctx, dut.i, int(p), rng, gap)

    async def loader(ctx):
        for b in dut.load_image():
            await stream_put(ctx, dut.load, b, rng, gap)

    async def sink(ctx):
        for k in range(n):
            if dut.detect:      # the map, one logit per transfer (each index once)
                seen = set()
                while True:
                    payload = await stream_get(ctx, dut.o, rng, stall)
                    j = int(payload.index)
                    if j in seen:
                        res.errors.append(f"frame {k}: logit {j} sent twice")
                    seen.add(j)
                    res.logits[k, j] = int(payload.value)
                    if payload.last:
                        break
                if len(seen) != model.num_classes:
                    res.errors.append(f"frame {k}: {len(seen)} logits, not {model.num_classes}")
                res.classes[k] = int(np.argmax(res.logits[k]))
            else:
                payload = await stream_get(ctx, dut.o, rng, stall)
                res.classes[k] = int(payload.cls)
                res.logits[k] = [int(payload.logits[c]) for c in range(model.num_classes)]
            res.done_cycle.append(cycle[0])

    streams = [e.o for e in dut.engines]
    sampled = []
    for s in streams:
        sampled += [s.valid, s.ready, s.payload]
    for e in dut.engines:
        sampled.append(e.i.valid & e.i.ready & e.i.payload.eof)

    async def monitor(ctx):
        frame = [0] * len(streams)
        last_index = [-1] * len(streams)
        async for _, _, *vals in ctx.tick().sample(*sampled):
            cycle[0] += 1
            for k, eof_in in enumerate(vals[3 * len(streams):]):
                if eof_in:
                    res.eof_in_cycle[k].append(cycle[0])
            for k, s in enumerate(streams):
                valid, ready, payload = vals[3 * k: 3 * k + 3]
                if not (valid and ready):
                    continue
                end = payload.last if dut.engines[k].readout else payload.eof
                if not dut.engines[k].readout and not payload.eof and not payload.eol:
                    # Raster index, increasing within a frame (rtl.layouts).
                    o, f = int(payload.index), int(payload.phase)
                    if o >= len(flat[k]) or o <= last_index[k] or f >= dut.engines[k].T:
                        res.errors.append(f"layer {k} frame {frame[k]}: bad event ({o}, {f})")
                        continue
                    last_index[k] = o
                    if frame[k] < n:
                        phases[k][frame[k], flat[k][o]] = f
                if end:
                    res.eof_cycle[k].append(cycle[0])
                    frame[k] += 1
                    last_index[k] = -1

    if max_cycles is None:
        # Worst case per frame: every pixel spikes and every neuron fires, slowly.
        per_frame = images[0].size * (1 + dut.engines[0].groups) + 100
        for e in dut.engines:
            per_frame += e.n_in * e.groups * getattr(e, "kernel", 1) ** 2 + e.n_out * (e.lanes + 12) + 4 * e.groups
        max_cycles = int(4 * n * per_frame / (1 - gap) / (1 - stall)) + 1000 + start
        max_cycles += int(4 * len(dut.load_image()) / (1 - gap))
    sim = make_simulator(dut)
    sim.add_testbench(driver)
    if dut.loader is not None:
        sim.add_testbench(loader)
    sim.add_testbench(sink)
    sim.add_process(monitor)
    run_bounded(sim, max_cycles, lambda: len(res.done_cycle) == n)
    res.phases = [phases.get(k) for k in range(len(model.layers))]
    return res
