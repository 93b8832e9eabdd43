"""The network Verilog (every shipped model, random dense and conv/pool models) under Icarus and Verilator (cocotb bench), compared exactly with the golden model.

Designs and simulator builds are cached under ``build/fpga_sim`` (keyed by a digest of the model,
the lanes and the RTL sources), so a re-run only re-simulates.
"""
import json
import shutil
import sys
from pathlib import Path

import pytest

from codegen.frontend import datasets
from codegen.fpga import sim as fpga_sim
from randmodels import random_images, valid_model
from runtime import modelfile
from runtime.errors import UserError


from conftest import ROOT

pytestmark = pytest.mark.cocotb

WORK = ROOT / "build" / "fpga_sim"
SIMS = ["icarus", "verilator"]


def _have(sim):
    tool = "iverilog" if sim == "icarus" else "verilator"
    return (Path(sys.executable).parent / tool).exists() or shutil.which(tool) is not None


def need(sim):
    if not _have(sim):
        pytest.skip(f"{sim} is not installed")


@pytest.fixture(scope="module")
def mnist():
    model = modelfile.load(ROOT / "models" / "mnist-mlp.pt")
    x, _ = datasets.load("mnist", "test")
    return model, x[:8]


# (seed, plan, T, separate input code, lanes): one hidden layer, then two, with several lane groups
# each; seeds picked for at least 8 hidden spikes per layer over the 6 images (and varied classes).
RANDOM = [(28, ["dense", "dense"], 5, (1.5, 7), 2), (35, ["dense", "dense", "dense"], 4, (1.25, 3), 3)]


@pytest.fixture(scope="module")
def small():
    seed, plan, T, code, lanes = RANDOM[0]
    model, rng = valid_model(seed, plan, T, code)
    return model, random_images(rng, model, 6), lanes


def assert_all_matched(r):
    assert r.error is None, r.error
    assert r.first_mismatch is None, str(r.first_mismatch)
    assert (r.matched, r.total) == (r.total, r.total)
    assert r.passed
    assert len(r.cycles) == r.total and min(r.cycles) > 0 and all(i > 0 for i in r.interval)


@pytest.mark.parametrize("sim", SIMS)
def test_mnist_mlp(sim, mnist):
    """8 MNIST images with input gaps, result stalls, back-to-back frames and a reset that cuts frames in flight."""
    need(sim)
    model, x = mnist
    r = fpga_sim.verify(model, x, sim, lanes=8, work=WORK)
    assert_all_matched(r)
    assert r.total == 8 and len(r.cycles) == 8
    assert sum(r.events) > 8 * 20              # hidden spikes were really compared
    st = r.stats                               # ... and the stimulus did what it should
    assert st["gap_cycles"] > 0 and st["result_wait_cycles"] >= 4000 and st["reset_partial_pixels"] > 0
    assert st["reset_aborted_frames"] >= 1     # the reset cut a whole frame inside the layers
    assert 1000 < r.cycles_min <= r.cycles_median <= r.cycles_max < 20000


# Conv/pool models: (seed, plan, T, input code, lanes), with a max-pool first (reading the image's code)
# and an avg-pool (a conv with identity weights).
RANDOM_CONV = [(0, ["conv2d", "maxpool", "dense"], 5, (1.5, 7), 2),
               (3, ["conv2d", "avgpool", "conv2d", "dense"], 6, None, 3),
               (5, ["maxpool", "conv2d", "dense", "dense"], 3, (2.0, 4), 4)]

# Shipped CNNs: (simulator, model, dataset, images). Both simulators run the MNIST CNN (64k cycles per
# frame); the Fashion-MNIST CNN (430k cycles per frame, the same engine kinds at larger sizes) runs
# under Verilator only, one image with gaps and stalls and no reset (the MNIST models take the
# resets): under Icarus its two images took 380 s of the suite's 2-core budget, and even one frame
# under Verilator about 100 s (codegen verify runs more).
SHIPPED_CNN = [("icarus", "mnist-cnn", "mnist", 2), ("verilator", "mnist-cnn", "mnist", 2),
               ("verilator", "fmnist-cnn", "fashion-mnist", 1)]


@pytest.mark.parametrize("sim,name,dataset,n", SHIPPED_CNN, ids=[f"{c[0]}-{c[1]}" for c in SHIPPED_CNN])
def test_shipped_cnn(sim, name, dataset, n):
    """The shipped CNNs on their first test images, with gaps and stalls, and with more than one image a
    mid-frame reset."""
    need(sim)
    model = modelfile.load(ROOT / "models" / f"{name}.pt")
    x, _ = datasets.load(dataset, "test")
    reset = n > 1       # one frame: gaps and stalls, no reset (which would send it twice)
    r = fpga_sim.verify(model, x[:n], sim, lanes=8, work=WORK, reset=reset)
    assert_all_matched(r)
    assert len(r.events) == len(model.layers) - 1 and min(r.events) >= n * 20
    assert r.stats["reset_aborted_frames"] >= 1 if reset else r.stats["resets"] == 0


@pytest.mark.parametrize("sim", SIMS)
def test_conv_mutation_is_caught(sim):
    """A corrupted expected spike of a conv layer (events in position-major order) is reported at its place."""
    need(sim)
    seed, plan, T, code, lanes = RANDOM_CONV[1]
    model, rng = valid_model(seed, plan, T, code)
    x = random_images(rng, model, 4)
    r = fpga_sim.verify(model, x, sim, lanes=lanes, mutate=True, work=WORK)
    assert not r.passed and r.n_mismatches == 1
    m, f = r.mutated, r.first_mismatch
    assert (f.frame, f.layer, f.neuron, f.expected, f.actual) == (m["frame"], m["layer"], m["neuron"], m["to"], m["from"])
    shutil.rmtree(r.run_dir, ignore_errors=True)


RANDOM_IDS = ["2-layer", "3-layer", "conv-maxpool-dense", "conv-avgpool-conv-dense", "maxpool-first"]
# Icarus runs every random model (about 2 s each); Verilator (a C++ build per design, about 15 s) the
# ones whose layer structure no other Verilator test has: the 2-layer model's design is the one the
# mutation and reset tests build, the dense and conv-maxpool-dense engines run in the MNIST models.
RANDOM_CASES = [("icarus", c, i) for c, i in zip(RANDOM + RANDOM_CONV, RANDOM_IDS)] + [
    ("verilator", c, i) for c, i in zip(RANDOM + RANDOM_CONV, RANDOM_IDS)
    if i in ("2-layer", "conv-avgpool-conv-dense", "maxpool-first")]


@pytest.mark.parametrize("sim,case", [(s, c) for s, c, _ in RANDOM_CASES], ids=[f"{s}-{i}" for s, _, i in RANDOM_CASES])
def test_random_model(sim, case):
    """Random small models with their own input code, 6 random images each: every layer's events in
    the engines' order, logits, class; the reset cuts frames in flight."""
    need(sim)
    seed, plan, T, code, lanes = case
    model, rng = valid_model(seed, plan, T, code)
    x = random_images(rng, model, 6)
    r = fpga_sim.verify(model, x, sim, lanes=lanes, seed=seed, work=WORK)
    assert_all_matched(r)
    assert len(r.events) == len(plan) - 1 and min(r.events) >= 8
    assert r.stats["reset_aborted_frames"] >= 1


# The RAM-store tests run under one simulator each (the store's RTL is the same in both; each design is
# a build of its own): the MNIST MLP's under Verilator (its 108 KB load is 108k cycles: 29 s under
# Icarus), the random model's under Icarus (2 s; a Verilator build is about 15 s).
@pytest.mark.parametrize("sim", ["verilator"])
def test_mnist_mlp_spram_store(sim, mnist):
    """The iCE40 UP5K configuration: layer 0's weights and thresholds in a RAM store (SPRAM), loaded
    through load_* (a reset in the middle of the load restarts it), then frames with gaps, stalls and
    a mid-frame reset that must keep the loaded weights."""
    need(sim)
    model, x = mnist
    r = fpga_sim.verify(model, x[:4], sim, lanes=4, store=["ram", "rom"], work=WORK)
    assert_all_matched(r)
    st = r.stats
    assert st["load_bytes"] == 108544 and st["load_resets"] == 1 and st["resets"] == 1
    assert st["reset_aborted_frames"] >= 1
    assert sum(r.events) > 4 * 20


@pytest.mark.parametrize("sim", ["icarus"])
def test_random_model_ram_store(sim):
    """A random conv/pool model with every weight layer in a RAM store (lanes hold a threshold)."""
    need(sim)
    seed, plan, T, code, _ = RANDOM_CONV[0]
    model, rng = valid_model(seed, plan, T, code)
    from runtime import spec

    spec.validate(model)
    lanes = [1 if l.kind == "maxpool" else -(-l.acc_bits // 8) for l in model.layers]
    store = ["rom" if l.kind == "maxpool" else "ram" for l in model.layers]
    x = random_images(rng, model, 6)
    r = fpga_sim.verify(model, x, sim, lanes=lanes, store=store, seed=seed, work=WORK)
    assert_all_matched(r)
    assert r.stats["load_resets"] == 1 and r.stats["reset_aborted_frames"] >= 1


def test_corrupted_store_image_is_caught(tmp_path):
    """The bench sends the image it is given: one flipped weight byte in load.bin makes a mismatch.

    The byte is found through the model: flip one layer-0 weight (sign bit), keep it if the golden
    model's logits change, and locate it in the image as the one byte ``load_image`` changes."""
    need("verilator")
    import copy
    import warnings

    import numpy as np

    from rtl.network import Network
    from runtime import golden

    model, rng = valid_model(*RANDOM[0][:2], RANDOM[0][2], RANDOM[0][3])
    x = random_images(rng, model, 6)
    lanes, store = [4, 4], ["ram", "ram"]
    r = fpga_sim.verify(model, x, "verilator", lanes=lanes, store=store, work=tmp_path)
    assert_all_matched(r)
    load = r.design_dir / fpga_sim.LOAD_FILE
    image = load.read_bytes()
    want = golden.run(model, x).logits

    def load_image(m):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # the network is built only for its load image
            return Network(m, lanes, store=store).load_image()

    assert load_image(model) == image
    w = model.layers[0].weight
    for o, i in zip(*np.nonzero(w)):
        bad = copy.deepcopy(model)
        bad.layers[0].weight[o, i] = np.int8(np.uint8(w[o, i]) ^ 0x80)
        if (golden.run(bad, x).logits == want).all():
            continue                             # a weight no spike of these images multiplies
        diff = [k for k, (p, q) in enumerate(zip(image, load_image(bad))) if p != q]
        assert len(diff) == 1 and image[diff[0]] ^ load_image(bad)[diff[0]] == 0x80
        load.write_bytes(load_image(bad))
        r2 = fpga_sim.verify(model, x, "verilator", lanes=lanes, store=store, work=tmp_path, reset=False)
        assert not r2.passed and r2.first_mismatch is not None, r2.summary()
        return
    raise AssertionError("no layer-0 weight changes the golden logits of these images")


def test_memory_files_are_the_tables(tmp_path, mnist):
    """The simulators read long memory initialisers from memN.hex files written beside the top: they
    hold the tables (all 2 images match), and a changed file changes the results."""
    need("icarus")
    model, x = mnist
    r = fpga_sim.verify(model, x[:2], "icarus", lanes=8, work=tmp_path, reset=False)
    assert_all_matched(r)
    text = (r.design_dir / fpga_sim.TOP_FILE).read_text()
    hexes = sorted(r.design_dir.glob("mem*.hex"), key=lambda f: f.stat().st_size)
    assert hexes and text.count("$readmemh(") == len(hexes)
    words = hexes[-1].read_text().split()                 # the largest table: layer 0's weights
    hexes[-1].write_text("\n".join("0" * len(w) for w in words) + "\n")
    r2 = fpga_sim.verify(model, x[:2], "icarus", lanes=8, work=tmp_path, reset=False)
    assert not r2.passed and r2.first_mismatch is not None


@pytest.mark.parametrize("sim", SIMS)
def test_mutation_is_caught(sim, small):
    """One corrupted expected value must show up as the first mismatch, at its place."""
    need(sim)
    model, x, lanes = small
    r = fpga_sim.verify(model, x, sim, lanes=lanes, mutate=True, work=WORK)
    assert not r.passed
    assert r.n_mismatches == 1 and r.matched == r.total - 1
    m, f = r.mutated, r.first_mismatch
    assert (f.frame, f.layer, f.neuron, f.expected) == (m["frame"], m["layer"], m["neuron"], m["to"])
    assert f.actual == m["from"]
    assert f"frame {m['frame']}" in str(f)
    shutil.rmtree(r.run_dir, ignore_errors=True)


@pytest.mark.parametrize("sim", SIMS)
def test_reset_while_result_held(sim, small):
    """The mid-frame reset comes while the second result is held back (its 4000-cycle stall): that
    result is gone, its frame is sent again, and the new result's latency is measured from its own
    valid cycle (it used to keep the held result's, so latencies came out negative). The bench
    itself fails a run with a latency that is not positive."""
    need(sim)
    model, x, lanes = small
    r = fpga_sim.verify(model, x[:4], sim, lanes=lanes, seed=0, work=WORK)
    assert_all_matched(r)
    assert r.stats["reset_held_results"] == 1 and r.stats["reset_aborted_frames"] >= 1
    frames = json.loads((r.run_dir / "results.json").read_text())["frames"]
    for f in frames:
        assert f["start"] < f["last_pixel"] < f["result_valid"] < f["result_accept"]
        assert f["latency"] == f["result_valid"] - f["start"] > 0


@pytest.mark.parametrize("sim", SIMS)
def test_waves(sim, small):
    need(sim)
    model, x, lanes = small
    r = fpga_sim.verify(model, x[:2], sim, lanes=lanes, waves=True, work=WORK)
    assert_all_matched(r)
    assert r.waves is not None and r.waves.is_file() and r.waves.stat().st_size > 1000
    assert r.waves.suffix == (".fst" if sim == "icarus" else ".vcd")
    shutil.rmtree(r.run_dir, ignore_errors=True)


def test_unknown_simulator(small):
    model, x, lanes = small
    with pytest.raises(UserError, match=r"^unknown simulator 'xyz'; supported: icarus, verilator$"):
        fpga_sim.verify(model, x, "xyz", work=WORK)


def test_write_top_ports(tmp_path, small):
    """The converted top has the documented flat ports and a description of its debug slots."""
    model, _, lanes = small
    v = fpga_sim.write_top(model, lanes, tmp_path)
    text = v.read_text()
    header = text[text.index("module onespike_top("):].split(";", 1)[0]
    for port in ["clk", "rst", "pixel_data", "pixel_valid", "pixel_ready", "result_valid", "result_ready",
                 "result_cls", "result_logits", "dbg_seq", "dbg_valid", "dbg_eof", "dbg_index", "dbg_phase"]:
        assert port in header
    desc = json.loads((tmp_path / "onespike_top.json").read_text())
    assert desc["firing_layers"] == [0] and desc["slots"] == 1 and desc["lanes"] == [lanes, lanes]
    mtime = v.stat().st_mtime_ns
    fpga_sim.write_top(model, lanes, tmp_path)
    assert v.stat().st_mtime_ns == mtime       # unchanged text is not rewritten


REPRO = ROOT / "tests" / "data" / "fuzz-repro" / "rtl-ram-store-theta-minus-bias"


def test_cli_verify_input_work_keep(capsys, tmp_path, monkeypatch):
    """codegen verify --target fpga --input FILE.npy on the fuzz reproducer (a 2x4x2 input, no dataset):
    N/N matched, the work folder named, progress on stderr (build, then frames); without --keep the
    simulator build and the run's data.npz are removed after the pass, with --keep they stay."""
    need("icarus")
    from codegen import cli
    import numpy as np

    monkeypatch.setenv("ONESPIKE_PROGRESS", "1")      # progress bars although stderr is not a terminal
    work = tmp_path / "w"
    x = np.load(REPRO / "inputs.npy")
    args = ["verify", str(REPRO / "model.pt"), "--target", "fpga", "--input", str(REPRO / "inputs.npy"), "--work", str(work)]
    assert cli.main(args) == 0
    cap = capsys.readouterr()
    assert f"icarus: {len(x)}/{len(x)} matched" in cap.out and f"work folder: {work}" in cap.out
    for stage in ("icarus: golden model", "icarus: Verilog", "icarus: build", "icarus: frames"):
        assert stage in cap.err
    assert "Traceback" not in cap.err
    (design,) = work.glob("design-*")
    assert (design / "onespike_top.v").is_file() and not (design / "icarus").exists()
    (run,) = (work / "runs").iterdir()
    assert (run / "results.json").is_file() and not (run / "data.npz").exists()
    assert cli.main(args + ["--keep", "-q", "-n", "2"]) == 0
    cap = capsys.readouterr()
    assert "icarus: 2/2 matched" in cap.out and cap.err == ""
    assert (design / "icarus").is_dir() and any((design / "icarus").iterdir())
    assert len([r for r in (work / "runs").iterdir() if (r / "data.npz").is_file()]) == 1


def test_verify_build_failure_is_a_tool_error(tmp_path, small, monkeypatch):
    """A simulator that fails to build our Verilog: one-line ToolError naming the log, not a traceback."""
    need("icarus")
    from runtime.errors import ToolError

    model, x, lanes = small
    real = fpga_sim.write_top

    def broken(*a, **k):
        v = real(*a, **k)
        v.write_text(v.read_text() + "\nthis is not verilog;\n")
        return v

    monkeypatch.setattr(fpga_sim, "write_top", broken)
    with pytest.raises(ToolError) as e:
        fpga_sim.verify(model, x[:2], "icarus", lanes=lanes, work=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("icarus failed to build the design (") and "build.log" in msg
    log = Path(msg.rsplit("log: ", 1)[1])
    assert log.is_file()


def test_fuzz_repro_zero_range_readout(tmp_path):
    """Fuzz finding: a readout whose weights and biases are all zero has the range 0..0; the RTL
    refused its 1-bit accumulator with a traceback. The spec now makes every accumulator at least
    2 bits wide, and the design matches the golden model."""
    need("icarus")
    import numpy as np

    repro = ROOT / "tests" / "data" / "fuzz-repro" / "rtl-acc-bits-1"
    model = modelfile.load(repro / "model.pt")
    assert model.layers[-1].acc_bits == 2 and not model.layers[-1].weight.any()
    x = np.load(repro / "inputs.npy")
    r = fpga_sim.verify(model, x, "icarus", lanes=2, work=tmp_path / "w")
    assert r.passed and r.matched == len(x), r.summary()


@pytest.mark.parametrize("sim", SIMS)
def test_random_detector_map(sim):
    """A random RGB detector: its readout map streamed logit by logit equals the golden model's, and
    the detections the host decodes from it equal those decoded from the golden map; gaps, stalls,
    back-to-back frames and a reset that cuts frames in flight (some rows of the map already sent)."""
    import numpy as np

    from randmodels import random_detector

    need(sim)
    model = random_detector(0, input_shape=(3, 16, 20))
    x = random_images(np.random.default_rng(0), model, 6)
    r = fpga_sim.verify(model, x, sim, lanes=2, work=WORK)
    assert_all_matched(r)
    assert r.detections_matched == r.total and sum(len(d) for d in r.detections) > 0
    assert r.stats["reset_aborted_frames"] >= 1
