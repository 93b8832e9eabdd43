"""Whole conv/pool networks (rtl.network.Network) in amaranth.sim, compared exactly with the golden model."""
import pytest

from enginebench import frames_for, mismatches
from randmodels import valid_model
from rtl.sim import simulate_network
from runtime import golden


CMD = ["conv2d", "maxpool", "dense"]
CACD = ["conv2d", "avgpool", "conv2d", "dense"]
MCDD = ["maxpool", "conv2d", "dense", "dense"]
CC = ["conv2d", "conv2d"]

# (seed, plan, T, input code, lanes, FIFO depth)
CASES = [
    (0, CMD, 4, None, 2, 16), (1, CMD, 12, (1.1, 9), 3, 0), (2, CACD, 5, None, 1, 4),
    (3, CACD, 8, (1.5, 3), 4, 16), (4, MCDD, 6, None, 2, 16), (5, MCDD, 3, (2.0, 4), 8, 1),
    (6, CC, 7, None, 3, 16), (7, CC, 2, (1.25, 5), 1, 0), (8, ["conv2d"], 4, None, 2, 16),
]


@pytest.mark.parametrize("seed,plan,T,input_code,lanes,fifo_depth", CASES)
def test_conv_network_equals_golden(seed, plan, T, input_code, lanes, fifo_depth):
    """Logits, class and every layer's spike phases (max-pool too), back to back with gaps and stalls."""
    model, rng = valid_model(seed, plan, T, input_code)
    images = frames_for(rng, model, 3)
    res = simulate_network(model, images, lanes, fifo_depth=fifo_depth, gap=0.2, stall=0.3, seed=seed)
    assert mismatches(model, res, golden.run(model, images)) == []


def test_conv_network_mutation_is_caught():
    """A conv weight pushed to the other extreme shows up as a mismatch (the comparison is not vacuous)."""
    model, rng = valid_model(0, CMD, 4)
    images = frames_for(rng, model, 2)
    res = simulate_network(model, images, 2)
    gold = golden.run(model, images)
    assert mismatches(model, res, gold) == []
    for _ in range(50):
        w = model.layers[0].weight
        idx = tuple(int(rng.integers(n)) for n in w.shape)
        w[idx] = 127 if w[idx] < 0 else -127
        if mismatches(model, res, golden.run(model, images)):
            return
    raise AssertionError("no weight change altered the golden result: the comparison may be vacuous")


# The shipped CNNs run in the cocotb benches (tests/test_rtl_cocotb.py: the MNIST CNN under Icarus and
# Verilator, the Fashion-MNIST CNN under Verilator); one MNIST CNN image in amaranth.sim took 32 s.


@pytest.mark.parametrize("seed,lanes", [(0, 2), (1, 3)])
def test_detector_map_equals_golden(seed, lanes):
    """A detector (RGB input: pixels in (H, W, C) order, 3 channels, row offsets split by a reciprocal
    multiply) streams its readout map; every logit, and every layer's spikes, equal the golden model's,
    with gaps and stalls; a corrupted expected logit is caught."""
    import numpy as np

    from randmodels import random_detector, random_images

    model = random_detector(seed, input_shape=(3, 16, 20))
    images = random_images(np.random.default_rng(seed), model, 3)
    res = simulate_network(model, images, lanes, gap=0.2, stall=0.3, seed=seed)
    gold = golden.run(model, images)
    assert mismatches(model, res, gold) == []
    gold.logits[1, 7] += 1
    assert mismatches(model, res, gold) != []
