"""DenseEngine and all-dense Networks in amaranth.sim, compared exactly with the golden model."""
import copy

import numpy as np
import pytest
from amaranth.back import verilog

from enginebench import frames_for, mismatches, run_engine
from randmodels import valid_model
from rtl.dense import DenseEngine
from rtl.network import Network
from rtl.sim import simulate_network
from runtime import golden, modelfile
from runtime.spec import fire_int

from conftest import ROOT

DD, DDD = ["dense", "dense"], ["dense", "dense", "dense"]


# (seed, plan, T, input code, lanes, FIFO depth): every lane count with both plans, T from 1 to 16,
# the hidden code reused as input code or a separate one, and with and without FIFOs between layers.
CASES = [
    (0, DD, 1, None, 1, 16), (1, DD, 2, (2.0, 4), 3, 16), (2, DD, 5, None, 8, 0),
    (3, DD, 8, (1.1, 11), 1, 0), (4, DD, 16, None, 3, 2), (5, DD, 7, (1.25, 3), 8, 16),
    (6, DDD, 3, None, 3, 16), (7, DDD, 6, (1.5, 2), 8, 16), (8, DDD, 16, None, 1, 4),
    (9, DDD, 4, (2.0, 1), 8, 0), (10, DDD, 2, None, 1, 16), (11, DDD, 9, (1.1, 7), 3, 1),
    (12, ["dense"], 3, None, 3, 16),  # the readout alone
]


@pytest.mark.parametrize("seed,plan,T,input_code,lanes,fifo_depth", CASES)
def test_network_equals_golden(seed, plan, T, input_code, lanes, fifo_depth):
    """Logits, class and every hidden spike phase, over back-to-back frames with gaps and stalls."""
    model, rng = valid_model(seed, plan, T, input_code)
    images = frames_for(rng, model, 3)
    res = simulate_network(model, images, lanes, fifo_depth=fifo_depth, gap=0.3, stall=0.4, seed=seed)
    assert mismatches(model, res, golden.run(model, images)) == []


def test_cases_are_not_vacuous():
    """The cases exercise firing and silence, one group and several, and both input codes."""
    fired = silent = 0
    groups = set()
    for seed, plan, T, input_code, lanes, _ in CASES:
        model, rng = valid_model(seed, plan, T, input_code)
        gold = golden.run(model, frames_for(rng, model, 3))
        for k, l in enumerate(model.layers):
            groups.add(-(-l.weight.shape[0] // lanes) > 1)
            if l.fires:
                fired += int((gold.phases[k + 1] != T).sum())
                silent += int((gold.phases[k + 1] == T).sum())
    assert fired > 100 and silent > 100
    assert groups == {True, False}


def test_network_without_stalls_is_the_same():
    model, rng = valid_model(21, DDD, 5)
    images = frames_for(rng, model, 2)
    res = simulate_network(model, images, 3)
    assert mismatches(model, res, golden.run(model, images)) == []


def mnist(first, count):
    from codegen.frontend import datasets

    model = modelfile.load(ROOT / "models" / "mnist-mlp.pt")
    images, _ = datasets.load("mnist", "test")
    return model, images[first:first + count]


@pytest.mark.parametrize("lanes,fifo_depth,first", [(8, 16, 0), (32, 0, 3)])
def test_mnist_mlp(lanes, fifo_depth, first):
    """The shipped MNIST MLP (784 -> 128 -> 10) on three test images each (about 2 s)."""
    model, images = mnist(first, 3)
    res = simulate_network(model, images, lanes, fifo_depth=fifo_depth)
    gold = golden.run(model, images)
    assert mismatches(model, res, gold) == []
    # Accumulating costs ceil(128 / lanes) cycles per input spike while the pixels stream in, then
    # the hidden layer drains (about 140 cycles) while the readout accumulates.
    groups = -(-128 // lanes)
    assert res.done_cycle[0] < 784 + groups * int(gold.spikes[0, 0]) + 300


@pytest.mark.slow
def test_mnist_mlp_more_images_with_stalls():
    model, images = mnist(6, 8)
    res = simulate_network(model, images, 16, gap=0.2, stall=0.3, seed=6)
    assert mismatches(model, res, golden.run(model, images)) == []


# ------------------------------------------------------------------------------------ mutations

def test_corrupted_expectation_is_caught():
    """The comparison is not vacuous: one changed logit, class or phase is reported."""
    model, rng = valid_model(2, DD, 5)
    images = frames_for(rng, model, 1)
    res = simulate_network(model, images, 3)
    gold = golden.run(model, images)
    assert mismatches(model, res, gold) == []
    for corrupt in ("logit", "class", "phase"):
        bad = copy.deepcopy(gold)
        if corrupt == "logit":
            bad.logits[0, 0] += 1
        elif corrupt == "class":
            bad.classes[0] = (bad.classes[0] + 1) % model.num_classes
        else:
            bad.phases[1][0, 0] = (bad.phases[1][0, 0] + 1) % (model.T + 1)
        assert len(mismatches(model, res, bad)) == 1, corrupt


def test_corrupted_hardware_is_caught():
    """An RTL built with one changed readout weight (on an input that spikes) disagrees."""
    model, rng = valid_model(5, DD, 7, (1.25, 3))
    images = frames_for(rng, model, 1)[:1]
    gold = golden.run(model, images)
    j = int(np.flatnonzero(gold.phases[1][0].reshape(-1) != model.T)[0])
    mutant = copy.deepcopy(model)
    w = mutant.layers[-1].weight
    w[0, j] = w[0, j] - 1 if w[0, j] > -127 else 1
    res = simulate_network(mutant, images, 3)
    errs = mismatches(model, res, gold)
    assert errs and errs[0].startswith("frame 0: logits")


# ------------------------------------------------------------------------------------ one engine

def engine_params(rng, n_in, n_out, T, d_in):
    w = rng.integers(-127, 128, size=(n_out, n_in))
    bias = rng.integers(-2000, 2000, size=n_out)
    decode = np.append(np.sort(rng.integers(1, 400, size=d_in))[::-1], 0)
    theta = np.sort(rng.integers(-20000, 20000, size=(n_out, T)), axis=1)[:, ::-1].copy()
    return w, bias, decode, theta


def engine_expected(w, bias, decode, theta, events):
    acc = bias.astype(np.int64).copy()
    for j, f in events:
        acc += w[:, j].astype(np.int64) * int(decode[f])
    if theta is None:
        return acc.tolist()
    ph = fire_int(acc[None], theta)[0]
    return [(o, int(p)) for o, p in enumerate(ph) if p != theta.shape[1]]


def random_frames(rng, n_in, d_in, count):
    """Frames of events; inputs may repeat and may carry the no-spike code (adding 0)."""
    return [[(int(rng.integers(n_in)), int(rng.integers(d_in + 1))) for _ in range(rng.integers(0, 25))]
            for _ in range(count)]


@pytest.mark.parametrize("lanes", [1, 3, 8, 13])
def test_engine_fires_with_stalls_and_reset(lanes):
    rng = np.random.default_rng(lanes)
    n_in, n_out, T, d_in = 11, 13, 6, 5
    w, bias, decode, theta = engine_params(rng, n_in, n_out, T, d_in)
    engine = DenseEngine(n_in, n_out, lanes, w, bias, theta, decode, acc_bits=24)
    frames = random_frames(rng, n_in, d_in, 4) + [[]]
    got, _ = run_engine(engine, frames, seed=lanes, gap=0.3, stall=0.5, junk=[(0, 0), (1, 0), (2, 1)])
    assert got == [engine_expected(w, bias, decode, theta, fr) for fr in frames]


@pytest.mark.parametrize("lanes", [1, 3, 8])
def test_engine_readout_with_stalls(lanes):
    rng = np.random.default_rng(10 + lanes)
    n_in, n_out, d_in = 9, 7, 4
    w, bias, decode, _ = engine_params(rng, n_in, n_out, 1, d_in)
    engine = DenseEngine(n_in, n_out, lanes, w, bias, None, decode, acc_bits=24)
    frames = random_frames(rng, n_in, d_in, 4)
    got, _ = run_engine(engine, frames, seed=lanes, gap=0.3, stall=0.5)
    assert got == [engine_expected(w, bias, decode, None, fr) for fr in frames]


@pytest.mark.parametrize("lanes", [1, 3, 8, 13])
def test_engine_cycles_per_event(lanes):
    """Back to back, an event costs exactly ceil(n_out / lanes) cycles; report the drain too.

    The engine registers an event before working on it, so the first one may be taken early (while
    the biases load or the previous frame drains); from the second on they are spaced exactly."""
    rng = np.random.default_rng(20 + lanes)
    n_in, n_out, T, d_in = 16, 13, 16, 3
    w, bias, decode, theta = engine_params(rng, n_in, n_out, T, d_in)
    engine = DenseEngine(n_in, n_out, lanes, w, bias, theta, decode, acc_bits=24)
    events = [(j, int(rng.integers(d_in))) for j in range(n_in)]
    got, marks = run_engine(engine, [events, events])
    assert got == [engine_expected(w, bias, decode, theta, events)] * 2
    groups = -(-n_out // lanes)
    # The frame's one end-of-row marker is taken as the last event's last cycle issues.
    assert [e - f for f, e in zip(marks["second_in"], marks["eol_in"])] == [(n_in - 1) * groups] * 2
    steps = T.bit_length()
    drain = [o - i for i, o in zip(marks["eof_in"], marks["eof_out"])]
    assert all(d <= groups * (max(3, steps + 1, lanes) + 3) + n_out for d in drain), drain


# ------------------------------------------------------------------------------------ build

def test_verilog_generation():
    model, _ = valid_model(1, DD, 4, (2.0, 4))
    text = verilog.convert(Network(model, lanes=3), name="dense_network")
    assert "module dense_network(" in text
    for port in ("i__payload", "i__valid", "i__ready", "o__payload", "o__valid", "o__ready"):
        assert port in text
