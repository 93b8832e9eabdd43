"""ConvEngine in amaranth.sim, compared exactly with a direct evaluation of the spec's conv2d."""
import numpy as np
import pytest

from enginebench import raster_frame, run_engine
from rtl.conv import ConvEngine
from rtl.coords import ring_plan
from rtl.layouts import raster_to_flat
from runtime.spec import fire_int

pytestmark = pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")


def conv_expected(engine, w, bias, decode, theta, events):
    """The spec: acc = B + sum W * D[f] over each output's window (padding adds 0), then fire.

    Returns what the engine must send, in its drain order: ``[(index, phase)]`` for spikes, or
    every logit for a readout."""
    C, H, W = engine.in_shape
    k, s, p = engine.kernel, engine.stride, engine.padding
    C_out, OH, OW = engine.out_shape
    x = np.zeros((C, H + 2 * p, W + 2 * p), dtype=np.int64)
    for j, f in events:
        c, r = divmod(j, H * W)
        x[c, p + r // W, p + r % W] += int(decode[f])
    acc = np.zeros((C_out, OH, OW), dtype=np.int64)
    for oy in range(OH):
        for ox in range(OW):
            win = x[:, oy * s: oy * s + k, ox * s: ox * s + k]
            acc[:, oy, ox] = bias + np.einsum("ocij,cij->o", w.astype(np.int64), win)
    flat = acc.reshape(C_out, -1)
    order = raster_to_flat(engine.out_shape)               # the engine sends raster order
    if theta is None:
        return flat.reshape(-1)[order].tolist()
    ph = fire_int(flat.T, theta).T.reshape(-1)             # (C_out * n_pos,), channel-major
    return [(int(o), int(ph[o])) for o in order if ph[o] != theta.shape[1]]


def conv_params(rng, C, C_out, k, T, d_in, readout=False):
    w = rng.integers(-127, 128, size=(C_out, C, k, k))
    bias = rng.integers(-3000, 3000, size=C_out)
    decode = np.append(np.sort(rng.integers(1, 300, size=d_in))[::-1], 0)
    theta = None if readout else np.sort(rng.integers(-30000, 30000, size=(C_out, T)), axis=1)[:, ::-1].copy()
    return w, bias, decode, theta


def conv_frames(rng, n_in, d_in, count, shuffle=True):
    """Frames of distinct input neurons; some carry the no-spike code; order shuffled or increasing."""
    frames = []
    for _ in range(count):
        js = rng.choice(n_in, size=int(rng.integers(0, min(n_in, 30) + 1)), replace=False)
        if not shuffle:
            js = np.sort(js)
        frames.append([(int(j), int(rng.integers(d_in + 1))) for j in js])
    return frames


CASES = [  # (C, H, W, C_out, k, s, p, lanes)
    (1, 6, 6, 3, 3, 1, 0, 2),
    (2, 5, 7, 5, 3, 1, 1, 3),
    (3, 7, 6, 4, 3, 2, 1, 4),
    (2, 6, 6, 7, 2, 2, 0, 8),
    (1, 5, 5, 2, 5, 1, 2, 1),
    (2, 5, 5, 3, 1, 2, 0, 2),     # some inputs feed no output
    (3, 4, 4, 2, 4, 1, 0, 2),     # one output position: the kernel covers the image
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_conv_fires_with_gaps_stalls_and_reset(case):
    C, H, W, C_out, k, s, p, lanes = case
    rng = np.random.default_rng(sum(case))
    T, d_in = 6, 5
    w, bias, decode, theta = conv_params(rng, C, C_out, k, T, d_in)
    engine = ConvEngine((C, H, W), k, s, p, lanes, w, bias, theta, decode, acc_bits=28)
    frames = conv_frames(rng, C * H * W, d_in, 3) + [[]] + conv_frames(rng, C * H * W, d_in, 1, shuffle=False)
    got, _ = run_engine(engine, frames, seed=sum(case), gap=0.3, stall=0.4, junk=[(0, 0), (C * H * W - 1, 1)])
    assert got == [conv_expected(engine, w, bias, decode, theta, fr) for fr in frames]


@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: "x".join(map(str, c)))
def test_conv_readout(case):
    C, H, W, C_out, k, s, p, lanes = case
    rng = np.random.default_rng(100 + sum(case))
    w, bias, decode, _ = conv_params(rng, C, C_out, k, 1, 4, readout=True)
    engine = ConvEngine((C, H, W), k, s, p, lanes, w, bias, None, decode, acc_bits=28)
    frames = conv_frames(rng, C * H * W, 4, 3)
    got, _ = run_engine(engine, frames, seed=3, gap=0.2, stall=0.3)
    assert got == [conv_expected(engine, w, bias, decode, None, fr) for fr in frames]


def test_conv_mutation_is_caught():
    """Self-test of the comparison: one corrupted expected weight makes it fail."""
    C, H, W, C_out, k, s, p, lanes = CASES[1]
    rng = np.random.default_rng(7)
    w, bias, decode, theta = conv_params(rng, C, C_out, k, 6, 5)
    engine = ConvEngine((C, H, W), k, s, p, lanes, w, bias, theta, decode, acc_bits=28)
    frames = conv_frames(rng, C * H * W, 5, 2)
    got, _ = run_engine(engine, frames)
    assert got == [conv_expected(engine, w, bias, decode, theta, fr) for fr in frames]
    bad = w.copy()
    bad[0, 0, 1, 1] += 100 if bad[0, 0, 1, 1] < 0 else -100
    assert got != [conv_expected(engine, bad, bias, decode, theta, fr) for fr in frames]


@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_conv_cycles_per_event(lanes):
    """Back to back, an event costs exactly (output positions it feeds) * groups cycles, and an
    end-of-row marker that completes no output row one cycle."""
    C, H, W, C_out, k, s, p = 2, 2, 6, 4, 3, 1, 1      # both output rows complete after input row 1
    rng = np.random.default_rng(lanes)
    w, bias, decode, theta = conv_params(rng, C, C_out, k, 12, 3)
    engine = ConvEngine((C, H, W), k, s, p, lanes, w, bias, theta, decode, acc_bits=28)
    assert engine.close_rows.tolist() == [0, 2]
    events = [(j, int(rng.integers(3))) for j in range(C * H * W)]
    got, marks = run_engine(engine, [events])
    assert got == [conv_expected(engine, w, bias, decode, theta, events)]
    sent = [e for e in raster_frame(engine.in_shape, events) if e is not None]
    to_flat = raster_to_flat(engine.in_shape)
    fed = lambda r: int(engine.runs_y[(to_flat[r] % (H * W)) // W, 1] * engine.runs_x[to_flat[r] % W, 1])  # noqa: E731
    # From the second event on, each event is taken when the previous one's last cycle issues;
    # row 0's marker (it completes no row) costs one cycle of its own.
    assert marks["eol_in"][-1] - marks["second_in"][0] == sum(fed(r) for r, _ in sent[1:]) * engine.groups + 1


@pytest.mark.parametrize("size, k, s, p, out, rows, close", [
    (28, 5, 1, 0, 24, 5, [0] * 4 + [1] * 24),
    (24, 2, 2, 0, 12, 1, [0, 1] * 12),
    (7, 3, 1, 1, 7, 3, [0] + [1] * 5 + [2]),
    (6, 3, 2, 1, 3, 2, [0, 1, 0, 1, 0, 1]),
    (5, 1, 3, 0, 2, 1, [1, 0, 0, 1, 0]),
])
def test_ring_plan(size, k, s, p, out, rows, close):
    """The ring of open output rows and the rows each input row completes."""
    r, c = ring_plan(size, k, s, p, out)
    assert (r, c.tolist()) == (rows, close)


@pytest.mark.parametrize("args, match", [
    (((1, 4), 3, 1, 0, 1), r"^Input shape must be \(C, H, W\) of positive sizes, not \(1, 4\)$"),
    (((1, 4, 4), 0, 1, 0, 1), r"^Kernel must be an integer >= 1, not 0$"),
    (((1, 4, 4), 3, 1, -1, 1), r"^Padding must be an integer >= 0, not -1$"),
    (((1, 2, 2), 3, 1, 0, 1), r"^Kernel 3, stride 1, padding 0 leave no output of a 2x2 input$"),
])
def test_conv_refuses_bad_parameters(args, match):
    with pytest.raises(ValueError, match=match):
        ConvEngine(*args, np.zeros((2, 1, 3, 3)), np.zeros(2), None, np.array([1, 0]), acc_bits=16)
