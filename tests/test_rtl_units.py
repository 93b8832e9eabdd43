"""RTL units (FireUnit, PixelEncoder, Argmax) in amaranth.sim, compared exactly with runtime.spec."""

import numpy as np
import pytest

from rtl.encoder import PixelEncoder
from rtl.fire import FireUnit
from rtl.readout import Argmax
from rtl.sim import make_simulator, run_bounded, stream_get, stream_put
from runtime import modelfile
from runtime.spec import encode_table, fire_int

from conftest import ROOT, refused


# ------------------------------------------------------------------------------------ FireUnit

def run_fire_unit(theta, acc_bits, requests, seed=0, gap=0.0, stall=0.0):
    """Send (row, acc) requests through a FireUnit; return [(row, phase)] and the cycle count."""
    dut = FireUnit(theta, acc_bits)
    rng = np.random.default_rng(seed)
    out, cycles, finished = [], [0], [0]

    async def drive(ctx):
        for row, acc in requests:
            await stream_put(ctx, dut.i, {"index": int(row), "acc": int(acc)}, rng, gap)

    async def collect(ctx):
        for _ in requests:
            p = await stream_get(ctx, dut.o, rng, stall)
            out.append((int(p.index), int(p.phase)))
        finished[0] = cycles[0]

    async def count(ctx):
        async for _ in ctx.tick():
            cycles[0] += 1

    sim = make_simulator(dut)
    sim.add_testbench(drive)
    sim.add_testbench(collect)
    sim.add_process(count)
    run_bounded(sim, 40 * (len(requests) + 10), lambda: len(out) == len(requests))
    return out, finished[0]


def random_theta_rows(rng, rows, T, acc_bits):
    """Non-increasing rows with ties, spanning the signed range (extremes included)."""
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    th = np.sort(rng.integers(lo, hi + 1, size=(rows, T)), axis=1)[:, ::-1].copy()
    ties = rng.random(th.shape) < 0.3
    for r in range(rows):
        for f in range(1, T):
            if ties[r, f]:
                th[r, f] = th[r, f - 1]
    th[0, 0] = hi                 # extremes: a threshold no acc exceeds / every acc reaches
    th[-1, -1] = lo
    return th


def fire_requests(rng, theta, acc_bits, n):
    """Accumulators on, just above and just below thresholds, plus extremes and random values."""
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    rows = rng.integers(0, theta.shape[0], size=n)
    accs = []
    for r in rows:
        kind = rng.integers(4)
        if kind == 0:
            accs.append(int(rng.integers(lo, hi + 1)))
        elif kind == 1:
            accs.append(int(np.clip(theta[r, rng.integers(theta.shape[1])] + rng.integers(-1, 2), lo, hi)))
        else:
            accs.append([lo, hi, -1, 0][rng.integers(4)] if kind == 2 else int(theta[r, rng.integers(theta.shape[1])]))
    return list(zip(rows.tolist(), accs))


@pytest.mark.parametrize("T,rows,acc_bits", [(1, 3, 8), (2, 1, 4), (3, 5, 12), (16, 4, 32), (7, 6, 20), (255, 2, 24)])
def test_fire_unit_equals_spec(T, rows, acc_bits):
    rng = np.random.default_rng(T * 1000 + rows)
    theta = random_theta_rows(rng, rows, T, acc_bits)
    requests = fire_requests(rng, theta, acc_bits, 120)
    got, _ = run_fire_unit(theta, acc_bits, requests, seed=T, gap=0.3, stall=0.3)
    rows_ = np.array([r for r, _ in requests])
    accs = np.array([a for _, a in requests], dtype=np.int64)
    expected = [int(fire_int(np.array([a]), theta[r][None])[0, 0]) for r, a in zip(rows_, accs)]
    assert [r for r, _ in got] == rows_.tolist()
    assert [p for _, p in got] == expected
    assert len(set(expected)) >= min(T + 1, 3) - (rows == 1)  # several distinct answers occur


def test_fire_unit_throughput():
    """With no gaps or stalls one result leaves every ``steps + 1`` cycles."""
    rng = np.random.default_rng(1)
    theta = random_theta_rows(rng, 4, 16, 16)
    requests = fire_requests(rng, theta, 16, 50)
    _, cycles = run_fire_unit(theta, 16, requests)
    steps = 16 .bit_length()
    assert cycles <= len(requests) * (steps + 1) + 3


def test_fire_unit_rejects_bad_thresholds():
    refused(FireUnit, np.array([[1, 2]]), 8, match=r"^Threshold rows must be non-increasing in the phase$")
    refused(FireUnit, np.array([[300, 0]]), 8, match=r"^Thresholds must fit 8 signed bits \(-128\.\.127\), not 0\.\.300$")


# ------------------------------------------------------------------------------------ PixelEncoder

def run_encoder(table, no_spike, frames, seed=0, gap=0.0, stall=0.0, row=None):
    """Encode frames (list of 1-D uint8 arrays, ``row`` pixels per row); return one list per frame of
    (index, phase) and "eol" for each end-of-row marker."""
    n = len(frames[0])
    dut = PixelEncoder(table, no_spike, n, row)
    rng = np.random.default_rng(seed)
    got = [[]]

    async def drive(ctx):
        for fr in frames:
            for p in fr:
                await stream_put(ctx, dut.i, int(p), rng, gap)

    async def collect(ctx):
        while len(got) <= len(frames):
            p = await stream_get(ctx, dut.o, rng, stall)
            if p.eof:
                got.append([])
            elif p.eol:
                got[-1].append("eol")
            else:
                got[-1].append((int(p.index), int(p.phase)))

    sim = make_simulator(dut)
    sim.add_testbench(drive)
    sim.add_testbench(collect)
    run_bounded(sim, 10 * n * (len(frames) + 10), lambda: len(got) > len(frames))
    return got[:len(frames)]


def expected_events(table, no_spike, frame, row=None):
    row = row or len(frame)
    out = []
    for j, p in enumerate(frame):
        if table[p] != no_spike:
            out.append((j, int(table[p])))
        if j % row == row - 1:
            out.append("eol")
    return out


@pytest.mark.parametrize("q,t,gap,stall,row", [(2.0, 4, 0.0, 0.0, 12), (1.25, 9, 0.3, 0.4, 1), (1.5, 1, 0.2, 0.2, 36)])
def test_encoder_equals_table(q, t, gap, stall, row):
    rng = np.random.default_rng(int(q * 100) + t)
    table = encode_table(q, t)
    frames = [rng.integers(0, 256, size=36).astype(np.uint8) for _ in range(3)]
    frames.append(np.zeros(36, dtype=np.uint8))                  # a frame without any spike
    frames.append(np.full(36, 255, dtype=np.uint8))              # every pixel spikes
    got = run_encoder(table, t, frames, seed=t, gap=gap, stall=stall, row=row)
    assert got == [expected_events(table, t, fr, row) for fr in frames]
    assert got[3] == ["eol"] * (36 // row) and len(got[4]) == 36 + 36 // row


def test_encoder_mnist_table():
    """The shipped model's table (T_in = 255, so phase 254 is a spike and 255 is not)."""
    model = modelfile.load(ROOT / "models" / "mnist-mlp.pt")
    frames = [np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8)[::-1].copy()]
    got = run_encoder(model.encode, model.input_T, frames, gap=0.1, stall=0.1, row=16)
    assert got == [expected_events(model.encode, model.input_T, fr, 16) for fr in frames]


def test_encoder_refuses_a_row_length_that_does_not_divide_the_frame():
    refused(PixelEncoder, np.zeros(256, dtype=np.int64), 4, 36, 5,
            match=r"^Row length must be a positive divisor of 36, not 5$")


# ------------------------------------------------------------------------------------ Argmax

def run_argmax(frames, acc_bits, seed=0, gap=0.0, stall=0.0, order=None):
    n = len(frames[0])
    dut = Argmax(n, acc_bits)
    rng = np.random.default_rng(seed)
    got = []

    async def drive(ctx):
        for fr in frames:
            idx = list(range(n)) if order is None else order
            for k, i in enumerate(idx):
                await stream_put(ctx, dut.i, {"index": i, "value": int(fr[i]), "last": int(k == n - 1)}, rng, gap)

    async def collect(ctx):
        for _ in frames:
            p = await stream_get(ctx, dut.o, rng, stall)
            got.append((int(p.cls), [int(p.logits[c]) for c in range(n)]))

    sim = make_simulator(dut)
    sim.add_testbench(drive)
    sim.add_testbench(collect)
    run_bounded(sim, 10 * n * (len(frames) + 10), lambda: len(got) == len(frames))
    return got


def test_argmax_ties_to_lowest_index():
    rng = np.random.default_rng(3)
    frames = [rng.integers(-4, 4, size=7) for _ in range(30)]   # small range: many ties
    frames += [np.full(7, -(1 << 19)), np.array([5, 9, 9, 1, 9, 0, -3])]
    got = run_argmax(frames, 20, gap=0.3, stall=0.3)
    assert got == [(int(np.argmax(f)), f.tolist()) for f in frames]
    # Out of order arrival gives the same answer.
    got = run_argmax(frames, 20, order=[6, 2, 4, 0, 1, 5, 3])
    assert [c for c, _ in got] == [int(np.argmax(f)) for f in frames]


def test_single_logit():
    assert run_argmax([np.array([-3]), np.array([4])], 4) == [(0, [-3]), (0, [4])]
