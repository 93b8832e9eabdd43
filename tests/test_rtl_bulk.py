"""The compiled Verilator harness (codegen/fpga/bulk.py): whole test sets against the golden model,
in agreement with the cocotb bench on the same frames."""
import os

import numpy as np

import pytest

from codegen.fpga import bulk
from codegen.fpga import sim as fpga_sim
from randmodels import random_images, valid_model
from runtime import modelfile

from conftest import ROOT

pytestmark = pytest.mark.cocotb

WORK = ROOT / "build" / "fpga_sim"


@pytest.fixture(scope="module")
def conv_model():
    model, rng = valid_model(0, ["conv2d", "maxpool", "dense"], 5, (1.5, 7))
    return model, random_images(rng, model, 12)


def test_bulk_equals_golden_and_the_cocotb_bench(conv_model):
    """Clean stimulus: every frame matches, and every frame's cycles (first pixel taken to result)
    equal the cocotb bench's on the same design and frames."""
    model, x = conv_model
    r = bulk.bulk_verify(model, x, 2, work=WORK)
    assert r.passed and r.matched == r.total == len(x) and r.n_mismatches == 0, r.mismatches
    c = fpga_sim.verify(model, x, "verilator", lanes=2, gap=0.0, stall=0.0, reset=False, work=WORK)
    assert c.passed
    assert r.cycles == c.cycles


@pytest.mark.skipif(not os.environ.get("ONESPIKE_EXTENDED"),
                    reason="three harness builds (about 40 s) beyond the suite's 10-minute budget on 2 cores; "
                           "runs with ONESPIKE_EXTENDED=1")
def test_bulk_profile_guided_build_gives_the_same_results(conv_model):
    """The harness built with GCC's profile (the default from 1000 frames): the same frames, cycles
    and verdict; a corrupted expectation still fails."""
    model, x = conv_model
    plain = bulk.bulk_verify(model, x, 2, gap=0.2, stall=0.2, seed=2, work=WORK, pgo=False)
    fast = bulk.bulk_verify(model, x, 2, gap=0.2, stall=0.2, seed=2, work=WORK, pgo=True)
    assert plain.passed and fast.passed and fast.cycles == plain.cycles and fast.stats == plain.stats
    assert not bulk.bulk_verify(model, x, 2, gap=0.2, stall=0.2, seed=2, work=WORK, pgo=True, mutate=True).passed


def test_bulk_with_gaps_and_stalls_and_a_corrupted_expectation(conv_model):
    model, x = conv_model
    r = bulk.bulk_verify(model, x, 2, gap=0.3, stall=0.4, seed=5, work=WORK)
    assert r.passed, r.mismatches
    bad = bulk.bulk_verify(model, x, 2, gap=0.3, stall=0.4, seed=5, work=WORK, mutate=True)
    assert not bad.passed and bad.matched == len(x) - 1 and bad.n_mismatches == 1
    assert bad.mismatches[0][:3] == (len(x) // 2, "logit", 0)


def test_bulk_mnist_mlp_ram_store():
    """The MNIST MLP with its first layer in a RAM store: the harness sends the load image first."""
    model = modelfile.load(ROOT / "models" / "mnist-mlp.pt")
    from codegen.frontend import datasets

    x, _ = datasets.load("mnist", "test")
    r = bulk.bulk_verify(model, x[:40], 4, store=["ram", "rom"], work=WORK)
    assert r.passed and r.matched == 40, r.mismatches
    assert np.median(r.cycles) > 0


def test_bulk_with_a_reset_that_cuts_frames_in_flight(conv_model):
    """A reset in the middle of a frame while earlier ones are still in the layers: every frame
    without a result is sent again and checked from scratch, as in the cocotb bench."""
    model, x = conv_model
    r = bulk.bulk_verify(model, x, 2, gap=0.2, stall=0.3, seed=3, reset=True, work=WORK)
    assert r.passed and r.matched == len(x), r.mismatches
    assert r.stats["resets"] == 1 and r.stats["frames_sent_again"] >= 2, r.stats    # one still in flight
    bad = bulk.bulk_verify(model, x, 2, gap=0.2, stall=0.3, seed=3, reset=True, work=WORK, mutate=True)
    assert not bad.passed and bad.matched == len(x) - 1


def test_bulk_mnist_mlp_ram_store_with_a_reset_in_the_load():
    """The RAM store's load cut by a reset a third of the way in and sent again, then a reset in a frame."""
    model = modelfile.load(ROOT / "models" / "mnist-mlp.pt")
    from codegen.frontend import datasets

    x, _ = datasets.load("mnist", "test")
    r = bulk.bulk_verify(model, x[:12], 4, store=["ram", "rom"], reset=True, stall=0.2, work=WORK)
    assert r.passed and r.matched == 12, r.mismatches
    assert r.stats["load_resets"] == 1 and r.stats["resets"] == 1, r.stats


@pytest.fixture(scope="module")
def detector():
    from randmodels import random_detector

    m = random_detector(0)
    return m, random_images(np.random.default_rng(0), m, 4)


def test_bulk_detector_map_equals_golden_and_the_cocotb_bench(detector):
    """A detector's map, one logit per transfer: every logit compared, the detections decoded from
    it equal the golden model's, and the cycles equal the cocotb bench's."""
    m, x = detector
    r = bulk.bulk_verify(m, x, 2, work=WORK)
    assert r.passed and r.matched == len(x) and r.detections_matched == len(x), r.mismatches
    c = fpga_sim.verify(m, x, "verilator", lanes=2, gap=0.0, stall=0.0, reset=False, work=WORK)
    assert c.passed and r.cycles == c.cycles
    s = bulk.bulk_verify(m, x, 2, gap=0.2, stall=0.3, reset=True, seed=1, work=WORK)
    assert s.passed and s.detections_matched == len(x), s.mismatches
    bad = bulk.bulk_verify(m, x, 2, work=WORK, mutate=True)
    assert not bad.passed and bad.matched == len(x) - 1 and bad.mismatches[0][:3] == (len(x) // 2, "logit", 0)


def test_bulk_on_two_workers_and_a_lost_chunk(conv_model):
    """Dask distributed (an embedded local cluster of 2 worker processes): the same verdict frame by
    frame; a chunk whose worker fails on every try is reported and its frames counted as not checked,
    never as matched."""
    model, x = conv_model
    r = bulk.bulk_verify(model, x, 2, workers=2, work=WORK)
    assert r.passed and r.matched == r.checked == len(x) and r.workers == 2, r.error
    bad = bulk.bulk_verify(model, x, 2, workers=2, work=WORK, fail_chunk=1)
    assert not bad.passed and bad.checked < len(x) and bad.matched == bad.checked
    assert "frames not checked" in bad.error and "chunk 1" in bad.error
    assert "not checked" in bad.summary()
    one = bulk.bulk_verify(model, x, 2, workers=1, work=WORK, fail_chunk=0)    # in this process
    assert not one.passed and one.checked == 0 and "chunk 0" in one.error
