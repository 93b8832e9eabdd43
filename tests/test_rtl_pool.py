"""MaxPoolEngine in amaranth.sim, compared exactly with a numpy max-pool (itself checked with runtime.golden)."""

import numpy as np
import pytest
from amaranth.back import verilog

from enginebench import WithReset, raster_frame
from rtl.layouts import raster_to_flat
from rtl.pool import MaxPoolEngine
from rtl.sim import make_simulator, run_bounded, stream_get, stream_put
from runtime import golden, modelfile
from runtime.spec import IntModel, Layer, conv_out, decode_table, encode_table

from conftest import ROOT, refused


# ------------------------------------------------------------------------------------ reference

def maxpool_ref(ph, k, s, p, T):
    """``out[c, oy, ox] = min`` over the window, padding counting as ``T`` (runtime/spec.py)."""
    C, H, W = ph.shape
    OH, OW = conv_out(H, k, s, p), conv_out(W, k, s, p)
    padded = np.full((C, H + 2 * p + k, W + 2 * p + k), T, dtype=np.int64)
    padded[:, p:p + H, p:p + W] = ph
    out = np.full((C, OH, OW), T, dtype=np.int64)
    for ky in range(k):
        for kx in range(k):
            out = np.minimum(out, padded[:, ky:ky + s * (OH - 1) + 1:s, kx:kx + s * (OW - 1) + 1:s])
    return out


def golden_maxpool(phs, k, s, p, T):
    """The golden model's max-pool on a batch (N, C, H, W), through a one-layer IntModel."""
    in_shape = tuple(phs.shape[1:])
    out_shape = (in_shape[0], conv_out(in_shape[1], k, s, p), conv_out(in_shape[2], k, s, p))
    model = IntModel(Q=2.0, T=T, F=8, input_shape=in_shape, decode=decode_table(2.0, T, 8),
                     encode=encode_table(2.0, T),
                     layers=[Layer("maxpool", in_shape, out_shape, kernel=k, stride=s, padding=p)])
    out, _, _ = golden.run_layer(model, 0, np.ascontiguousarray(phs.astype(np.uint8)))
    return out.astype(np.int64)


def expected_events(ph, k, s, p, T):
    """The output spikes (flat index, phase) in the order the engine sends them (raster order)."""
    ref = maxpool_ref(ph, k, s, p, T)
    out = ref.reshape(-1)
    return [(int(o), int(out[o])) for o in raster_to_flat(ref.shape) if out[o] < T]


def random_phases(rng, shape, T, density):
    """Phases (C, H, W): spikes with probability ``density``, early phases over-represented."""
    ph = np.where(rng.random(shape) < 0.5, rng.integers(0, T, size=shape), rng.integers(0, min(T, 3), size=shape))
    return np.where(rng.random(shape) < density, ph, T).astype(np.int64)


def events_of(ph, T, order, rng=None):
    """Spike events (j, f) of phases ``ph`` in ``order``: index, shuffled or position-major (y, x, c)."""
    C, H, W = ph.shape
    flat = ph.reshape(-1)
    js = np.flatnonzero(flat < T)
    if order == "shuffled":
        js = rng.permutation(js)
    elif order == "position":
        js = sorted(js, key=lambda j: (j % (H * W), j // (H * W)))
    else:
        assert order == "index"
    return [(int(j), int(flat[j])) for j in js]


def test_reference_equals_golden():
    """The numpy reference agrees with runtime.golden on random shapes, including every edge case."""
    rng = np.random.default_rng(0)
    cases = [((16, 24, 24), 2, 2, 0), ((3, 5, 7), 2, 2, 0), ((2, 6, 5), 3, 1, 1), ((2, 7, 6), 3, 2, 1),
             ((1, 4, 4), 1, 1, 0), ((2, 5, 5), 2, 1, 1), ((1, 9, 8), 4, 3, 2), ((2, 3, 3), 3, 3, 1),
             ((1, 7, 7), 1, 2, 0), ((1, 1, 1), 1, 1, 0)]
    for in_shape, k, s, p in cases:
        for T in (1, 12, 255):
            phs = np.stack([random_phases(rng, in_shape, T, d) for d in (0.0, 0.1, 0.5, 1.0)])
            want = golden_maxpool(phs, k, s, p, T)
            got = np.stack([maxpool_ref(ph, k, s, p, T) for ph in phs])
            assert got.tolist() == want.tolist(), (in_shape, k, s, p, T)


# ------------------------------------------------------------------------------------ simulation

def run_pool(engine, frames, *, seed=0, gap=0.0, stall=0.0, junk=None, junk_eof=False):
    """Feed frames of (j, f) events; return the events out per frame and the cycle marks.

    ``junk``: events sent before a reset pulse (a frame cut short), which must leave no trace;
    with ``junk_eof`` the junk frame is closed and the reset hits its drain (the output is held
    not ready until the reset, so the drain is stuck with a half-cleared memory).
    Marks (cycle numbers of transfers): ``first_in`` / ``eof_in`` per frame, ``eof_out`` per frame.
    """
    top = WithReset(engine)
    rng = np.random.default_rng(seed)
    out, cycle = [[]], [0]
    marks = {"first_in": [], "eof_in": [], "eof_out": []}
    to_flat = raster_to_flat(engine.out_shape)
    after_reset = [junk is None]

    async def drive(ctx):
        if junk is not None:
            for j, f in junk:
                await stream_put(ctx, engine.i, {"index": j, "phase": f, "eol": 0, "eof": 0})
            if junk_eof:
                await stream_put(ctx, engine.i, {"eof": 1})
            for _ in range(5):
                await ctx.tick()
            ctx.set(top.cd.rst, 1)
            for _ in range(2):
                await ctx.tick()  # (tick().repeat() would raise DomainReset)
            ctx.set(top.cd.rst, 0)
            after_reset[0] = True
        for events in frames:
            for e in raster_frame(engine.in_shape, events):
                if e is None:
                    await stream_put(ctx, engine.i, {"eol": 1}, rng, gap)
                else:
                    await stream_put(ctx, engine.i, {"index": e[0], "phase": e[1], "eol": 0, "eof": 0}, rng, gap)
            await stream_put(ctx, engine.i, {"eof": 1}, rng, gap)

    async def collect(ctx):
        while not after_reset[0]:
            await ctx.tick()
        rows = 0
        while len(out) <= len(frames):
            p = await stream_get(ctx, engine.o, rng, stall)
            if p.eof:
                assert int(p.index) == 0 and int(p.phase) == 0 and rows == engine.out_shape[1]
                marks["eof_out"].append(cycle[0])
                out.append([])
                rows = 0
            elif p.eol:
                assert int(p.index) == 0 and int(p.phase) == 0
                rows += 1
            else:
                out[-1].append((int(to_flat[int(p.index)]), int(p.phase)))

    async def count(ctx):
        first, held = True, None
        async for _, _, took, eof, rst, o_valid, o_ready, o_payload in ctx.tick().sample(
                engine.i.valid & engine.i.ready & ~engine.i.payload.eol, engine.i.payload.eof, top.cd.rst,
                engine.o.valid, engine.o.ready, engine.o.payload.as_value()):
            cycle[0] += 1
            # An offered output stays offered, unchanged, until it is taken.
            if held is not None and not rst:
                assert o_valid and o_payload == held, f"output withdrawn or changed at cycle {cycle[0]}"
            held = o_payload if o_valid and not o_ready and not rst else None
            if took and not rst and after_reset[0]:
                if first:
                    marks["first_in"].append(cycle[0])
                first = bool(eof)
                if eof:
                    marks["eof_in"].append(cycle[0])

    sim = make_simulator(top)
    sim.add_testbench(drive)
    sim.add_testbench(collect)
    sim.add_process(count)
    events = sum(len(fr) + 1 + engine.in_shape[1] * 3 for fr in frames) + len(junk or [])
    per_event = max(1, -(-engine.kernel // engine.stride)) ** 2
    budget = (events * per_event + (len(frames) + 2) * (engine.n_out + 10)) / (1 - gap) / (1 - stall)
    run_bounded(sim, int(3 * budget) + 1000, lambda: len(out) > len(frames))
    return out[:len(frames)], marks


def check_engine(in_shape, k, s, p, T, *, seed, frames=3, gap=0.3, stall=0.3, orders=("shuffled", "position"),
                 densities=(0.3, 0.0, 1.0), junk=0, junk_eof=False):
    """Random frames through one engine (one order per frame, cycling); compare every frame exactly."""
    rng = np.random.default_rng(seed)
    engine = MaxPoolEngine(in_shape, k, s, p, T)
    phs = [random_phases(rng, in_shape, T, densities[n % len(densities)]) for n in range(frames)]
    evs = [events_of(ph, T, orders[n % len(orders)], rng) for n, ph in enumerate(phs)]
    junk_events = None
    if junk:
        junk_events = events_of(random_phases(rng, in_shape, T, 1.0), T, "shuffled", rng)[:junk]
    got, marks = run_pool(engine, evs, seed=seed, gap=gap, stall=stall, junk=junk_events, junk_eof=junk_eof)
    want = [expected_events(ph, k, s, p, T) for ph in phs]
    assert got == want
    return engine, phs, got, marks


# (in_shape, kernel, stride, padding, T): the shipped pools, odd sizes (dropped rows and columns),
# overlapping windows with padding, windows with gaps between them, single rows and columns.
CASES = [
    ((3, 6, 6), 2, 2, 0, 12),
    ((2, 5, 7), 2, 2, 0, 16),        # H, W odd: the last row and column reach no output
    ((2, 5, 6), 3, 1, 1, 64),        # overlapping, padded: up to 9 outputs per input
    ((3, 7, 6), 3, 2, 1, 255),
    ((2, 6, 5), 2, 1, 1, 12),        # padding on both sides, kernel 2
    ((1, 8, 9), 4, 3, 2, 16),
    ((2, 7, 7), 1, 2, 0, 64),        # stride > kernel: odd rows and columns are dropped
    ((4, 1, 6), 1, 1, 0, 1),         # T = 1: a single phase
    ((1, 3, 3), 3, 3, 1, 255),       # one output per channel, whose window is mostly padding
]


@pytest.mark.parametrize("in_shape,k,s,p,T", CASES)
def test_engine_equals_reference(in_shape, k, s, p, T):
    """Shuffled and position-major frames, dense, empty and full ones, with input gaps and output stalls."""
    check_engine(in_shape, k, s, p, T, seed=sum(in_shape) * 31 + k * 7 + s * 3 + p + T, frames=4,
                 densities=(0.3, 0.0, 1.0, 0.05))


@pytest.mark.parametrize("in_shape,k,s,p,T,junk,junk_eof", [
    ((2, 6, 6), 2, 2, 0, 12, 20, False),
    ((2, 5, 6), 3, 1, 1, 64, 30, False),
    ((2, 6, 6), 2, 2, 0, 255, 40, True),       # reset while draining
    ((2, 5, 5), 3, 2, 1, 16, 25, True),
])
def test_engine_reset_mid_frame(in_shape, k, s, p, T, junk, junk_eof):
    """A frame cut short by a reset (phase memory half built, or half drained) leaves no trace."""
    check_engine(in_shape, k, s, p, T, seed=junk * 10 + T, frames=3, densities=(0.0, 0.2, 0.6),
                 junk=junk, junk_eof=junk_eof)


@pytest.mark.parametrize("in_shape,T", [((16, 24, 24), 12), ((32, 8, 8), 12), ((32, 28, 28), 64), ((64, 14, 14), 64)])
def test_engine_shipped_shapes(in_shape, T):
    """The k = s = 2 pools of the shipped CNNs, position-major as the conv engine emits them."""
    check_engine(in_shape, 2, 2, 0, T, seed=in_shape[0] + in_shape[1], frames=2, gap=0.1, stall=0.1,
                 orders=("position", "shuffled"), densities=(0.15, 0.02))


@pytest.mark.parametrize("name,layer", [("mnist-cnn", 1), ("fmnist-cnn", 3)])
def test_engine_on_shipped_model(name, layer):
    """A shipped model's max-pool on a real image's activation equals the golden model's output."""
    from codegen.frontend import datasets

    model = modelfile.load(ROOT / "models" / f"{name}.pt")
    images, _ = datasets.load(name.split("-")[0], "test")
    gold = golden.run(model, images[:2])
    l = model.layers[layer]
    assert l.kind == "maxpool"
    engine = MaxPoolEngine(tuple(l.in_shape), l.kernel, l.stride, l.padding, model.T)
    frames = [events_of(gold.phases[layer][n].astype(np.int64), model.T, "position") for n in range(2)]
    got, _ = run_pool(engine, frames, seed=1, stall=0.2)
    order = raster_to_flat(engine.out_shape)
    want = [[(int(o), int(gold.phases[layer + 1][n].reshape(-1)[o])) for o in order
             if gold.phases[layer + 1][n].reshape(-1)[o] < model.T] for n in range(2)]
    assert all(len(w) > 10 for w in want)
    assert got == want


def test_corrupted_expectation_is_caught():
    """The comparison is not vacuous: one changed phase, a dropped or an added event is noticed."""
    in_shape, k, s, p, T = (2, 5, 6), 3, 2, 1, 16
    engine, phs, got, _ = check_engine(in_shape, k, s, p, T, seed=5, frames=1, densities=(0.3,))
    want = expected_events(phs[0], k, s, p, T)
    assert got[0] == want and len(want) > 3
    o, f = want[1]
    for bad in (want[:1] + [(o, (f + 1) % T)] + want[2:], want[:1] + want[2:],
                want + [(max(x for x, _ in want) + 1, 0)]):
        assert got[0] != bad
    # A reference with the padding counted as phase 0 (instead of T) disagrees too.
    wrong = maxpool_ref(np.pad(phs[0], ((0, 0), (p, p), (p, p))), k, s, 0, T).reshape(-1)
    assert got[0] != [(int(o), int(wrong[o])) for o in raster_to_flat(engine.out_shape) if wrong[o] < T]


# ------------------------------------------------------------------------------------ cycles

def frame_cycles(engine, events) -> int:
    """Cycles of one frame back to back (no gaps, no stalls): every event ``max(1, covered)``, every
    end-of-row marker 2, every output row ``OW * C + 1`` (its words and its marker), the
    end-of-frame marker 3."""
    C, H, _ = engine.in_shape
    _, OH, OW = engine.out_shape
    return sum(max(1, engine.covered(j)) for j, _ in events) + 2 * H + OH * (OW * C + 1) + 3


@pytest.mark.parametrize("in_shape,k,s,p", [((4, 6, 6), 2, 2, 0), ((2, 5, 6), 3, 1, 1), ((2, 7, 7), 3, 2, 1),
                                             ((2, 5, 5), 2, 2, 0)])
def test_engine_cycles(in_shape, k, s, p):
    """Back to back, a frame takes exactly :func:`frame_cycles` (from the previous frame's marker,
    or from the first event)."""
    T = 16
    rng = np.random.default_rng(k * 10 + s)
    engine = MaxPoolEngine(in_shape, k, s, p, T)
    frames = [events_of(random_phases(rng, in_shape, T, d), T, "shuffled", rng) for d in (0.5, 1.0, 0.0, 0.1)]
    got, marks = run_pool(engine, frames, gap=0.0, stall=0.0)
    assert len(got) == len(frames)
    cost = [[max(1, engine.covered(j)) for j, _ in fr] for fr in frames]
    assert cost[0] and cost[1] and not cost[2]
    starts = [marks["first_in"][0]] + marks["eof_out"][:-1]
    assert [e - b for b, e in zip(starts, marks["eof_out"])] == [frame_cycles(engine, fr) for fr in frames]
    if k == s and p == 0:
        assert all(set(c) == {1} for c in cost if c)
    else:
        assert max(max(c) for c in cost if c) > 1


def test_engine_one_event_per_cycle():
    """k == s, p == 0: every event costs one cycle; the shipped pools' output rows drain as they complete."""
    in_shape, T = (16, 12, 12), 12
    rng = np.random.default_rng(3)
    ph = random_phases(rng, in_shape, T, 0.4)
    events = events_of(ph, T, "position")
    engine = MaxPoolEngine(in_shape, 2, 2, 0, T)
    assert (engine.ring_rows, engine.words) == (1, 6 * 16)
    got, marks = run_pool(engine, [events, events])
    assert got == [expected_events(ph, 2, 2, 0, T)] * 2
    assert marks["eof_out"][0] - marks["first_in"][0] == frame_cycles(engine, events) == len(events) + 24 + 6 * 97 + 3
    assert marks["eof_out"][1] - marks["eof_out"][0] == frame_cycles(engine, events)


def test_engine_clears_memory_after_reset():
    """``i`` stays not ready for exactly ``words`` cycles after reset (the clearing pass of the ring)."""
    engine = MaxPoolEngine((3, 6, 5), 3, 2, 1, 16)
    ready_at = []

    async def watch(ctx):
        cycles = 0
        while not ctx.get(engine.i.ready):
            await ctx.tick()
            cycles += 1
        ready_at.append(cycles)

    sim = make_simulator(engine)
    sim.add_testbench(watch)
    run_bounded(sim, 1000)
    assert ready_at == [engine.words] and engine.words == engine.ring_rows * 3 * 3 < engine.n_out * 2


# ------------------------------------------------------------------------------------ build

def test_attributes_and_verilog():
    engine = MaxPoolEngine((3, 7, 6), 3, 2, 1, 16)
    assert (engine.n_in, engine.n_out, engine.out_shape, engine.T) == (126, 36, (3, 4, 3), 16)
    assert (engine.readout, engine.groups, engine.lanes) == (False, 1, 1)
    text = verilog.convert(engine, name="maxpool")
    assert "module maxpool(" in text
    for port in ("i__payload", "i__valid", "i__ready", "o__payload", "o__valid", "o__ready"):
        assert port in text


def test_rejects_bad_parameters():
    refused(MaxPoolEngine, (2, 4), 2, 2, 0, 16, match=r"^Input shape must be \(C, H, W\) of positive integers, not \(2, 4\)$")
    refused(MaxPoolEngine, (2, 0, 4), 2, 2, 0, 16, match=r"^Input shape must be \(C, H, W\) of positive integers")
    refused(MaxPoolEngine, None, 2, 2, 0, 16, match=r"^Input shape must be \(C, H, W\) of positive integers, not None$")
    refused(MaxPoolEngine, (2, 4, 4), 0, 2, 0, 16, match=r"^Kernel size must be a positive integer, not 0$")
    refused(MaxPoolEngine, (2, 4, 4), 2, 1.5, 0, 16, match=r"^Stride must be a positive integer, not 1\.5$")
    refused(MaxPoolEngine, (2, 4, 4), 2, 2, -1, 16, match=r"^Padding must be a non-negative integer, not -1$")
    refused(MaxPoolEngine, (2, 4, 4), 3, 1, 2, 16, match=r"^Padding must be at most half the kernel, not 2 for kernel 3$")
    refused(MaxPoolEngine, (2, 4, 4), 2, 2, 0, 0, match=r"^Phase code T must be an integer in 1\.\.255, not 0$")
    refused(MaxPoolEngine, (2, 4, 4), 2, 2, 0, 256, match=r"^Phase code T must be an integer in 1\.\.255, not 256$")
    refused(MaxPoolEngine, (2, 2, 4), 5, 1, 1, 16, match=r"^Kernel 5 with padding 1 does not fit the input 2x4$")
