"""Drive one event engine (dense, conv, pool) in amaranth.sim: frames of events in, events or logits out."""
import numpy as np
from amaranth import ClockDomain, Elaboratable, Module

from randmodels import random_images
from rtl.layouts import raster_to_flat
from rtl.sim import make_simulator, run_bounded, stream_get, stream_put


class WithReset(Elaboratable):
    """Give a testbench the ``sync`` domain's reset."""

    def __init__(self, dut):
        self.dut = dut
        self.cd = ClockDomain("sync")

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = self.cd
        m.submodules.dut = self.dut
        return m


def raster_frame(shape, events):
    """Events ``(j, f)`` of one frame (``j`` the flat ``(C, H, W)`` index) as the stream an engine takes
    (rtl.layouts): row by row, keeping their order within a row, raster indexes, an end-of-row
    marker ``None`` after each row."""
    C, H, W = shape
    to_raster = np.argsort(raster_to_flat(shape))
    rows = [[] for _ in range(H)]
    for j, f in events:
        rows[(j % (H * W)) // W].append((int(to_raster[j]), f))
    return [e for row in rows for e in row + [None]]


def run_engine(engine, frames, *, seed=0, gap=0.0, stall=0.0, junk=None):
    """Feed frames of (j, f) events (``j``: flat ``(C, H, W)`` index; sent in raster order, row by
    row with end-of-row markers, the order within a row kept); return the output per frame, as flat
    ``(C, H, W)`` indexes in the order they came, and the cycles of the markers.

    Checks the output markers: a firing engine sends exactly one end-of-row marker per output row,
    and its events in increasing raster index. ``junk``: events sent before a reset pulse (a frame
    cut short), which must leave no trace.
    """
    top = WithReset(engine)
    rng = np.random.default_rng(seed)
    out, cycle = [[]], [0]
    marks = {"eof_in": [], "second_in": [], "eof_out": [], "eol_in": [], "eol_out": []}
    flat_out = raster_to_flat(engine.out_shape)
    rows_out = [0]
    last = [-1]

    async def drive(ctx):
        if junk:
            for j, f in junk:
                await stream_put(ctx, engine.i, {"index": j, "phase": f, "eol": 0, "eof": 0})
            ctx.set(top.cd.rst, 1)
            for _ in range(2):
                await ctx.tick()  # (tick().repeat() would raise DomainReset)
            ctx.set(top.cd.rst, 0)
        for events in frames:
            for e in raster_frame(engine.in_shape, events):
                if e is None:
                    await stream_put(ctx, engine.i, {"eol": 1}, rng, gap)
                else:
                    await stream_put(ctx, engine.i, {"index": e[0], "phase": e[1], "eol": 0, "eof": 0}, rng, gap)
            await stream_put(ctx, engine.i, {"eof": 1}, rng, gap)

    async def collect(ctx):
        while len(out) <= len(frames):
            p = await stream_get(ctx, engine.o, rng, stall)
            if engine.readout:
                out[-1].append(int(p.value))
                end = p.last
            else:
                end = p.eof
                if p.eol:
                    rows_out[0] += 1
                    marks["eol_out"].append(cycle[0])
                elif not end:
                    assert int(p.index) > last[0], f"event {int(p.index)} after {last[0]}: not in raster order"
                    last[0] = int(p.index)
                    out[-1].append((int(flat_out[int(p.index)]), int(p.phase)))
            if end:
                if not engine.readout:
                    assert rows_out[0] == engine.out_shape[1], f"{rows_out[0]} end-of-row markers, not {engine.out_shape[1]}"
                rows_out[0], last[0] = 0, -1
                marks["eof_out"].append(cycle[0])
                out.append([])

    async def count(ctx):
        seen = 0
        async for _, _, took, eof, eol, rst in ctx.tick().sample(
                engine.i.valid & engine.i.ready, engine.i.payload.eof, engine.i.payload.eol, top.cd.rst):
            cycle[0] += 1
            if took and not rst:
                if eof:
                    marks["eof_in"].append(cycle[0])
                    seen = 0
                elif eol:
                    marks["eol_in"].append(cycle[0])
                else:
                    seen += 1
                    if seen == 2:
                        marks["second_in"].append(cycle[0])

    sim = make_simulator(top)
    sim.add_testbench(drive)
    sim.add_testbench(collect)
    sim.add_process(count)
    events = sum(len(fr) + 1 + engine.in_shape[1] for fr in frames) + len(junk or [])
    run_bounded(sim, 20 * (events * engine.groups * getattr(engine, "kernel", 1) ** 2
                           + len(frames) * engine.n_out * 20) + 1000,
                lambda: len(out) > len(frames))
    return out[:len(frames)], marks


def frames_for(rng, model, n):
    """``n`` random images, then an empty one (no input spike) and a saturated one."""
    x = random_images(rng, model, n)
    return np.concatenate([x, np.zeros_like(x[:1]), np.full_like(x[:1], 255)])


def mismatches(model, res, gold) -> list:
    """Every difference between an RTL run and the golden result (empty: bit-exact)."""
    errs = list(res.errors)
    for n in range(len(gold.logits)):
        if res.logits[n].tolist() != gold.logits[n].tolist():
            errs.append(f"frame {n}: logits {res.logits[n].tolist()} != {gold.logits[n].tolist()}")
        if int(res.classes[n]) != int(gold.classes[n]):
            errs.append(f"frame {n}: class {res.classes[n]} != {gold.classes[n]}")
        for k, layer in enumerate(model.layers):
            if not layer.readout:
                got, want = res.phases[k][n], gold.phases[k + 1][n].reshape(-1)
                if got.tolist() != want.tolist():
                    errs.append(f"frame {n} layer {k}: phases {got.tolist()} != {want.tolist()}")
    return errs
