"""Drive one event engine (dense, conv, pool) in amaranth.sim: frames of events in, events or logits out."""
import numpy as np
from amaranth import ClockDomain, Elaboratable, Module

from randmodels import random_images
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


def run_engine(engine, frames, *, seed=0, gap=0.0, stall=0.0, junk=None):
    """Feed frames of (j, f) events; return the output per frame and the cycle of every eof.

    ``junk``: events sent before a reset pulse (a frame cut short), which must leave no trace.
    """
    top = WithReset(engine)
    rng = np.random.default_rng(seed)
    out, marks, cycle = [[]], {"eof_in": [], "second_in": [], "eof_out": []}, [0]

    async def drive(ctx):
        if junk:
            for j, f in junk:
                await stream_put(ctx, engine.i, {"index": j, "phase": f, "eof": 0})
            ctx.set(top.cd.rst, 1)
            for _ in range(2):
                await ctx.tick()  # (tick().repeat() would raise DomainReset)
            ctx.set(top.cd.rst, 0)
        for events in frames:
            for j, f in events:
                await stream_put(ctx, engine.i, {"index": j, "phase": f, "eof": 0}, rng, gap)
            await stream_put(ctx, engine.i, {"eof": 1}, rng, gap)

    async def collect(ctx):
        while len(out) <= len(frames):
            p = await stream_get(ctx, engine.o, rng, stall)
            if engine.readout:
                out[-1].append(int(p.value))
                end = p.last
            else:
                end = p.eof
                if not end:
                    out[-1].append((int(p.index), int(p.phase)))
            if end:
                marks["eof_out"].append(cycle[0])
                out.append([])

    async def count(ctx):
        seen = 0
        async for _, _, took, eof, rst in ctx.tick().sample(
                engine.i.valid & engine.i.ready, engine.i.payload.eof, top.cd.rst):
            cycle[0] += 1
            if took and not rst:
                if eof:
                    marks["eof_in"].append(cycle[0])
                    seen = 0
                else:
                    seen += 1
                    if seen == 2:
                        marks["second_in"].append(cycle[0])

    sim = make_simulator(top)
    sim.add_testbench(drive)
    sim.add_testbench(collect)
    sim.add_process(count)
    events = sum(len(fr) + 1 for fr in frames) + len(junk or [])
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
