"""codegen.fpga: files, determinism, manifest, the estimate, refusals (fast; no synthesis)."""
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from randmodels import random_images, random_model, valid_model

from boards.registry import FPGA_BOARDS
from boards.registry import fpga as board
from codegen import fpga
from runtime import golden, modelfile, spec
from runtime.errors import UserError
from rtl.sim import pixel_order
from conftest import one_line_error

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "models" / "mnist-mlp.pt"
CNN = ROOT / "models" / "mnist-cnn.pt"
FCNN = ROOT / "models" / "fmnist-cnn.pt"


@pytest.fixture(scope="module")
def small():
    return random_model(np.random.default_rng(7), plan=["dense", "dense"])


@pytest.fixture(scope="module")
def mlp():
    return modelfile.load(MLP)


@pytest.fixture(scope="module")
def cnn():
    return modelfile.load(CNN)


@pytest.fixture(scope="module")
def small_cnn():
    """A small random conv -> max-pool -> dense model."""
    return valid_model(5, ["conv2d", "maxpool", "dense"], 6)[0]


def mem_shapes(model, lanes, fifo_depth=fpga.FIFO_DEPTH):
    return {m.name: (m.depth, m.width) for m in fpga.memories(model, lanes, fifo_depth)}


def read_dir(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def check_manifest(d: Path, man: dict):
    on_disk = read_dir(d)
    assert set(on_disk) == {f["name"] for f in man["files"]} | {"manifest.json"}
    for f in man["files"]:
        data = on_disk[f["name"]]
        assert len(data) == f["bytes"]
        assert hashlib.sha256(data).hexdigest() == f["sha256"], f["name"]
    assert json.loads(on_disk["manifest.json"]) == man


def test_boards():
    ice, ecp = board("icebreaker"), board("ulx3s")
    assert (ice.device, ice.luts, ice.bram_count, ice.bram_bits, ice.spram_count, ice.dsp_count, ice.io) == \
        ("up5k", 5280, 30, 4096, 4, 8, 39)
    assert (ecp.device, ecp.bram_count, ecp.bram_bits, ecp.dsp_count) == ("ecp5-25k", 56, 18432, 28)
    assert ecp.luts >= 24000
    assert board("up5k") is ice and board("ecp5-25k") is ecp
    assert "--up5k" in ice.nextpnr_command("a.json", "r.json", "l.log")
    assert "--25k" in ecp.nextpnr_command("a.json", "r.json", "l.log")
    with pytest.raises(UserError, match="unknown board 'de10'; FPGA boards: icebreaker .*ulx3s"):
        board("de10")


def test_board_registry():
    """One registry: every board with its kind; a board of the other kind is named as such."""
    from boards import registry

    assert [(b.name, b.kind) for b in registry.boards()] == [
        ("mps2-an386", "mcu"), ("nucleo-f446re", "mcu"), ("rp2040-pico", "mcu"), ("icebreaker", "fpga"),
        ("ulx3s", "fpga")]
    assert registry.mcu() is registry.board("mps2-an386") and registry.mcu().qemu_machine == "mps2-an386"
    assert [b.name for b in registry.emulated()] == ["mps2-an386"]
    with pytest.raises(UserError, match=r"^unknown board 'x'; boards: mps2-an386 \(MCU, QEMU\), nucleo-f446re "
                                        r"\(MCU\), rp2040-pico \(MCU\), icebreaker \(FPGA, up5k\), ulx3s \(FPGA, ecp5-25k\)$"):
        registry.board("x")
    with pytest.raises(UserError, match="'ulx3s' is an FPGA board, but the c target needs an MCU board: mps2-an386"):
        registry.mcu("ulx3s")
    with pytest.raises(UserError, match="'rp2040-pico' is an MCU board, but the fpga target needs an FPGA "
                                        "board: icebreaker"):
        registry.fpga("rp2040-pico")


def test_boards_command(capsys):
    from codegen import cli

    assert cli.main(["boards"]) == 0
    out = capsys.readouterr().out
    for name in ("mps2-an386", "nucleo-f446re", "rp2040-pico", "icebreaker", "ulx3s"):
        assert f"\n{name} " in out
    assert "5280 LUT4, 30 SB_RAM40_4K, 8 SB_MAC16, 4 SB_SPRAM256KA" in out and "emulated (QEMU -M mps2-an386)" in out


def test_emit_small_files_deterministic(small, tmp_path):
    man = fpga.emit(small, "ab" * 32, "tiny-net", tmp_path / "a", board="icebreaker", lanes=4)
    man2 = fpga.emit(small, "ab" * 32, "tiny-net", tmp_path / "b", board="icebreaker", lanes=4)
    a, b = read_dir(tmp_path / "a"), read_dir(tmp_path / "b")
    assert a == b  # byte-identical
    assert man == man2
    check_manifest(tmp_path / "a", man)
    names = set(a)
    assert {"tiny_net.v", "tiny_net_pins.v", "estimate.json", "estimate.txt", "manifest.json", "encode.mem",
            "decode.mem", "input_decode.mem", "L0_dense_weight.mem", "L0_dense_bias.mem", "L0_dense_theta.mem",
            "L1_dense_weight.mem", "L1_dense_bias.mem"} <= names
    v = a["tiny_net.v"].decode()
    assert re.search(r"^module tiny_net\(", v, re.M)
    assert "i__payload" in v and "o__payload" in v and "src =" not in v  # no source paths in the output
    assert re.search(r"^module tiny_net_pins ?\(", a["tiny_net_pins.v"].decode(), re.M)
    # Same tables as --target lut.
    w = small.layers[0].weight.astype(np.int64).ravel()
    lines = a["L0_dense_weight.mem"].decode().split()
    assert [int(x, 16) - 256 * (int(x, 16) > 127) for x in lines] == list(w)
    assert man["target"] == "fpga" and man["board"] == "icebreaker" and man["lanes"] == 4
    assert man["top"]["module"] == "tiny_net" and man["pins_wrapper"]["pins"] == 23
    # Another lane count changes the Verilog.
    fpga.emit(small, "ab" * 32, "tiny-net", tmp_path / "c", board=None, lanes=1)
    assert (tmp_path / "c" / "tiny_net.v").read_bytes() != a["tiny_net.v"]


def test_estimate_cycles_formula(small):
    for lanes in (1, 2, 3, 8):
        est = fpga.estimate(small, None, lanes)
        c = est["cycles"]
        assert c["spikes_source"].startswith("worst case")  # random models name no dataset
        for layer, x in zip(small.layers, c["layers"]):
            n_out, n_in = layer.weight.shape[0], int(np.prod(layer.weight.shape[1:]))
            G = math.ceil(n_out / lanes)
            assert x["kind"] == "dense" and x["groups"] == G
            assert x["cycles_per_event"] == G
            assert x["input_spikes"] == n_in
            assert x["accumulate_cycles"] == n_in * G
            assert x["synaptic_ops"] == n_in * n_out
            assert x["event_driven_limit"] == pytest.approx(n_in * n_out / lanes, abs=1e-3)
            assert x["limit_ratio"] == pytest.approx(G * lanes / n_out, abs=1e-3)
            if layer.readout:
                want = n_out + 2 * G + fpga.READOUT_ROW_OVERHEAD
            else:   # worst case: every neuron spikes, a word holds min(lanes, what is left) spikes
                spikes = [min(lanes, n_out - g * lanes) for g in range(G)]
                want = (sum(max(3, small.T.bit_length() + s) for s in spikes)
                        + fpga.FIRE_ROW_OVERHEAD + fpga.FIRE_FRAME_OVERHEAD)
            assert x["drain_cycles"] == want
        acc = sum(x["accumulate_cycles"] for x in c["layers"])
        drain = sum(x["drain_cycles"] for x in c["layers"])
        assert c["formula_cycles"] == acc + drain
        H = small.input_shape[1]
        px = int(np.prod(small.input_shape)) + H + 1          # the pixels, a marker per row, the frame's
        A = [x["accumulate_cycles"] for x in c["layers"]]
        assert c["pixel_input_cycles"] == px
        assert c["cycles_sequential"] == max(px, A[0]) + sum(A[1:]) + drain
        # Dense layers wait for the whole frame; every pixel spikes, so the first one works from the
        # first pixel on: its input rows' work back to back (each row's marker 1 cycle), then its
        # drain; the second's work (the first's events) overlaps that drain.
        limit = max(px, max(x["event_driven_limit"] for x in c["layers"]))
        assert c["slowest_layer_limit"] == pytest.approx(limit)
        assert c["latency_vs_limit"] == pytest.approx(c["cycles_per_inference"] / limit, abs=1e-3)
        assert c["cycles_per_inference"] >= max(A[0] + H, px) + c["layers"][0]["drain_cycles"]
        assert c["frame_period"] == pytest.approx(max([px] + [x["occupied_cycles"] for x in c["layers"]]))
        assert all(x["occupied_cycles"] >= x["busy_cycles"] - 1e-6 for x in c["layers"])
        assert est["multipliers"]["lane_multipliers"] == lanes * len(small.layers)
        assert set(est["boards"]) == set(FPGA_BOARDS)


def test_estimate_memories(small):
    lanes = 2
    mems = {m.name: m for m in fpga.memories(small, lanes)}
    l0 = small.layers[0]
    G = math.ceil(l0.weight.shape[0] / lanes)
    assert (mems["layer0.wmem"].depth, mems["layer0.wmem"].width) == (int(np.prod(l0.weight.shape[1:])) * G, 8 * lanes)
    assert (mems["layer0.accmem"].depth, mems["layer0.accmem"].width) == (G, lanes * l0.acc_bits)
    assert mems["encoder.rom"].depth == 256
    assert sum(1 for n in mems if n.startswith("layer0.fire")) == lanes  # one threshold ROM per lane
    assert not any(n.startswith("layer1.fire") for n in mems)           # readout: no thresholds
    est = fpga.estimate(small, "icebreaker", lanes)
    m = est["boards"]["icebreaker"]
    assert "not used" in m["spram_note"] and m["spram"] == 0
    assert m["fits"]


def test_mnist_mlp_emit(mlp, tmp_path):
    man = fpga.emit(mlp, modelfile.file_sha256(MLP), "mnist-mlp", tmp_path / "a", board="ulx3s", lanes=4)
    check_manifest(tmp_path / "a", man)
    assert man["store"] == {"layers": ["rom", "rom"]} and "weights.bin" not in read_dir(tmp_path / "a")
    v = (tmp_path / "a" / "mnist_mlp.v").read_text()
    assert re.search(r"^module mnist_mlp\(", v, re.M)
    est = json.loads((tmp_path / "a" / "estimate.json").read_text())
    c = est["cycles"]
    assert [x["cycles_per_event"] for x in c["layers"]] == [32, 3]  # ceil(128/4), ceil(10/4)
    assert est["memory_bits"]["weights"] == 784 * 32 * 32 + 128 * 3 * 32
    m = est["boards"]["ulx3s"]
    assert m["fits"] and m["block_rams"] <= 56 and m["dsp"] <= 28
    txt = (tmp_path / "a" / "estimate.txt").read_text()
    assert "ESTIMATE" in txt and "cycles per inference" in txt
    if "mnist" in c["spikes_source"]:  # dataset available: golden spike counts
        from codegen.frontend import datasets

        x, _ = datasets.load("mnist", "test")
        r = golden.run(mlp, x[:10], keep_phases=False)
        assert c["layers"][0]["input_spikes"] == pytest.approx(r.spikes[:, 0].mean(), abs=1e-3)
        assert c["layers"][1]["input_spikes"] == pytest.approx(r.spikes[:, 1].mean(), abs=1e-3)


def test_mnist_mlp_icebreaker_spram(mlp, tmp_path):
    """On the UP5K the MLP fits with its first layer's weights and thresholds in SPRAM (auto), and
    emit writes the load image; the estimate equals what Yosys 0.23 reports (tests/test_synth.py
    checks that against a live run): 18 SB_RAM40_4K, 8 SB_MAC16, 4 SB_SPRAM256KA."""
    from rtl.network import Network

    assert fpga.resolve_store(mlp, "icebreaker", 4) == ["ram", "rom"]
    assert fpga.resolve_store(mlp, "ulx3s", 4) == ["rom", "rom"]      # fits in block RAM
    assert fpga.resolve_store(mlp, None, 4) == ["rom", "rom"]
    est = fpga.estimate(mlp, "icebreaker", 4, n_images=0)
    m = est["boards"]["icebreaker"]
    assert est["store"] == ["ram", "rom"] and m["fits"]
    assert (m["spram"], m["block_rams"], m["dsp"]) == (4, 18, 8)
    mems = {x["name"]: x for x in est["memories"]}
    e0 = fpga.inspect_network(mlp, 4, store=["ram", "rom"]).engines[0]
    assert (mems["layer0.spram_store"]["depth"], mems["layer0.spram_store"]["width"]) == (784 * 32 + 128 * 16, 32)
    assert e0.store_depth == 784 * 32 + 128 * 16
    assert "layer0.wmem" not in mems and "layer0.biasmem" not in mems and not any(n.startswith("layer0.fire") for n in mems)
    assert "layer1.wmem" in mems and "layer1.biasmem" in mems
    # Serial fire drain: (T.bit_length() + 1) cycles per neuron.
    assert est["cycles"]["layers"][0]["drain_cycles"] == (128 * (mlp.T.bit_length() + 1) + fpga.FIRE_ROW_OVERHEAD
                                                          + fpga.FIRE_FRAME_OVERHEAD)
    assert est["cycles"]["load_cycles"] == e0.store_depth * 5
    # rom does not fit: 234 EBR
    assert not fpga.mapping(mlp, board("icebreaker"), 4, store=["rom", "rom"])["fits"]

    sha = modelfile.file_sha256(MLP)
    man = fpga.emit(mlp, sha, "mnist-mlp", tmp_path / "a", board="icebreaker", lanes=4, n_images=0)
    check_manifest(tmp_path / "a", man)
    a = read_dir(tmp_path / "a")
    image = Network(mlp, 4, fpga.FIFO_DEPTH, ["ram", "rom"]).load_image()
    assert a["weights.bin"] == image and len(image) == e0.store_depth * 4
    st = man["store"]
    assert st["layers"] == ["ram", "rom"] and st["image"]["bytes"] == len(image)
    assert st["image"]["segments"] == [{"layer": 0, "offset": 0, "bytes": len(image), "words": e0.store_depth,
                                        "word_bits": 32, "weight_words": 784 * 32, "threshold_words": 128 * 16,
                                        "bias_folded_into_thresholds": True}]
    assert "little-endian" in st["image"]["byte_order"]
    ports = man["top"]["ports"]
    assert {"load__payload", "load__valid", "load__ready", "loaded"} <= set(ports)
    assert man["pins_wrapper"]["pins"] == 34
    v = a["mnist_mlp.v"].decode()
    assert "load__payload" in v and "reg [31:0] spram_store [27135:0];" in v
    assert "spram_store[0] =" not in v           # no initialiser: SPRAM is loaded at run time
    pins = a["mnist_mlp_pins.v"].decode()
    assert ".load__payload(ld)" in pins and re.search(r"^\s*output loaded;", pins, re.M)
    assert "4/4 SPRAM" in a["estimate.txt"].decode() and "weights.bin" in a["estimate.txt"].decode()
    # Deterministic (byte-identical) on the real model.
    man2 = fpga.emit(mlp, sha, "mnist-mlp", tmp_path / "b", board="icebreaker", lanes=4, n_images=0)
    assert read_dir(tmp_path / "b") == a and man2 == man


def test_resolve_store_errors(mlp, small_cnn):
    with pytest.raises(UserError, match="--store ram needs SPRAM, and ulx3s .* has none"):
        fpga.resolve_store(mlp, "ulx3s", 4, "ram")
    with pytest.raises(UserError, match="--store must be one of auto, rom, ram, not 'flash'"):
        fpga.resolve_store(mlp, None, 4, "flash")
    with pytest.raises(UserError, match=r"layer 0 \(dense\) cannot keep its weights in a RAM store at lanes=2: .*lanes >= 4"):
        fpga.resolve_store(mlp, "icebreaker", 2, "ram")
    with pytest.raises(UserError, match="layer 1 is a max-pool"):
        fpga.resolve_store(small_cnn, None, 4, ["rom", "ram", "rom"])
    with pytest.raises(UserError, match="one of rom/ram per layer"):
        fpga.resolve_store(small_cnn, None, 4, ["rom", "rom"])
    assert fpga.resolve_store(small_cnn, None, 4, "ram") == ["ram", "rom", "ram"]   # max-pools stay rom
    assert fpga.resolve_store(mlp, "icebreaker", 4, "rom") == ["rom", "rom"]
    # auto skips layers that cannot be in RAM at this lane count: at 2 lanes only the readout can move.
    assert fpga.resolve_store(mlp, "icebreaker", 2) == ["rom", "ram"]
    assert not fpga.fits(mlp, board("icebreaker"), 2)
    assert fpga.largest_fitting_lanes(mlp, board("icebreaker"), 8) == 4


REPRO = ROOT / "tests" / "data" / "fuzz-repro"


def test_ram_store_refuses_theta_minus_bias_overflow(tmp_path):
    """Fuzz reproducer: a 32-bit conv2d whose theta - bias does not fit 32 bits cannot have a RAM store
    (it keeps theta - bias). --store ram is refused up front, naming the layer and why; auto keeps it
    in ROM (only the readout may move) and the design builds."""
    m = modelfile.load(REPRO / "rtl-ram-store-theta-minus-bias" / "model.pt")
    l0 = m.layers[0]
    assert l0.kind == "conv2d" and l0.acc_bits == 32
    assert fpga.ram_refusal(l0, 8).startswith("its thresholds minus biases (-2147483678..2147483617)")
    for lanes in (4, 8):
        with pytest.raises(UserError, match=rf"^layer 0 \(conv2d\) cannot keep its weights in a RAM store at "
                                            rf"lanes={lanes}: its thresholds minus biases \(-2147483678..2147483617\) "
                                            r"do not fit its 32-bit accumulators"):
            fpga.emit(m, "00" * 32, "repro", tmp_path / "out", board="icebreaker", lanes=lanes, store="ram")
        assert not (tmp_path / "out").exists()
        with pytest.raises(UserError, match=r"^layer 0 \(conv2d\)"):
            fpga.resolve_store(m, None, lanes, ["ram", "rom"])
    # auto on the UP5K: at 8 lanes the ROM design needs 16 DSPs, so auto tries RAM stores; layer 0 stays.
    st = fpga.resolve_store(m, "icebreaker", 8)
    assert st[0] == "rom"
    assert fpga.fits(m, board("icebreaker"), 8, store="ram") is False
    with pytest.raises(UserError, match=r"^model does not fit icebreaker .*lanes=\d fits") as e:
        fpga.emit(m, "00" * 32, "repro", tmp_path / "out", board="icebreaker", lanes=8)
    hint = int(re.search(r"lanes=(\d) fits", str(e.value)).group(1))
    assert fpga.fits(m, board("icebreaker"), hint) and not fpga.fits(m, board("icebreaker"), hint + 1)
    man = fpga.emit(m, "00" * 32, "repro", tmp_path / "ok", board="icebreaker", lanes=4)
    assert man["store"]["layers"][0] == "rom"
    # The readout (no thresholds) may still go to RAM.
    assert fpga.resolve_store(m, None, 8, ["rom", "ram"]) == ["rom", "ram"]


@pytest.mark.parametrize("seed,plan,T", [
    (5, ["conv2d", "maxpool", "dense"], 6),
    (2, ["conv2d", "avgpool", "conv2d", "dense"], 5),
    (1, ["dense", "dense"], 3),
])
def test_ram_store_memories_match_elaborated_design(seed, plan, T):
    """memories() with RAM stores lists exactly the memories of the elaborated RTL."""
    m = valid_model(seed, plan, T)[0]
    lanes = max(-(-x.acc_bits // 8) for x in m.layers)
    store = fpga.resolve_store(m, None, lanes, "ram")
    shapes = {x.name: (x.depth, x.width) for x in fpga.memories(m, lanes, 2, store=store)}
    assert shapes == fpga.elaborated_memories(m, lanes, 2, store)
    assert any(n.endswith("spram_store") for n in shapes)


def test_ram_store_drain_cycles_match_simulation():
    """The serial fire drain of a RAM-store layer (one FireUnit) against amaranth.sim."""
    from rtl.sim import simulate_network

    m = random_model(np.random.default_rng(3), plan=["dense", "dense", "dense"])
    x = random_images(np.random.default_rng(0), m, 2)
    g = golden.run(m, x, keep_phases=True)
    store = ["ram", "ram", "rom"]
    r = simulate_network(m, x, 4, store=store)
    assert (r.classes == g.classes).all() and (r.logits == g.logits).all()
    c = fpga.cycle_estimate(m, 4, g.phases, "test", store=store)
    net = fpga.inspect_network(m, 4, store=store)
    for k in (0, 1):
        measured = np.mean([a - b for a, b in zip(r.eof_cycle[k], r.eof_in_cycle[k])])
        assert abs(c["layers"][k]["drain_cycles"] - measured) <= net.engines[k].words, k


@pytest.mark.parametrize("seed,plan,T", [
    (5, ["conv2d", "maxpool", "dense"], 6),
    (2, ["conv2d", "avgpool", "conv2d", "dense"], 5),
    (3, ["maxpool", "conv2d", "dense", "dense"], 4),
    (4, ["conv2d", "conv2d"], 9),
    (1, ["dense", "dense"], 3),
])
def test_memories_match_elaborated_design(seed, plan, T):
    """memories() lists exactly the memories (name, depth, width) of the elaborated RTL."""
    m = valid_model(seed, plan, T)[0]
    for lanes, fifo_depth in ((1, 16), (2, 2), (3, 0), (8, 1)):
        assert mem_shapes(m, lanes, fifo_depth) == fpga.elaborated_memories(m, lanes, fifo_depth), (lanes, fifo_depth)


def test_memory_contents_follow_the_engines(small_cnn):
    lanes = 2
    net = fpga.inspect_network(small_cnn, lanes)
    mems = {m.name: m for m in fpga.memories(small_cnn, lanes)}
    conv, pool = net.engines[0], net.engines[1]
    assert fpga.weight_words(conv).tolist() == conv.weight_words()   # the RTL's own weight layout
    assert mems["layer0.wmem"].varying == fpga.varying_bits(np.array(conv.weight_words()), 8)
    OW = conv.out_shape[2]
    assert (mems["layer0.accmem"].depth, mems["layer0.accmem"].width) == (conv.ring_rows * OW * conv.groups,
                                                                         lanes * conv.acc_bits)
    assert conv.ring_rows < conv.out_shape[1]                                 # only the open rows
    assert sum(1 for n in mems if n.startswith("layer0.fire")) == lanes
    assert (mems["layer1.mem"].what, mems["layer1.mem"].depth, mems["layer1.mem"].width, mems["layer1.mem"].rom) == \
        ("pool", pool.ring_rows * pool.out_shape[2] * pool.out_shape[0], small_cnn.T.bit_length(), False)
    assert not any(n.startswith("layer1.") and n != "layer1.mem" for n in mems)   # a max-pool has no other memory
    assert mems["fifo1.storage"].width == fpga.payload_bits(conv)


def test_conv_cycles_from_golden_phases(small_cnn):
    """Accumulate cycles, synaptic operations and drains from the golden model's phases and the window tables."""
    m = small_cnn
    x = random_images(np.random.default_rng(0), m, 4)
    g = golden.run(m, x, keep_phases=True)
    for lanes in (1, 2, 4):
        c = fpga.cycle_estimate(m, lanes, g.phases, "test")
        net = fpga.inspect_network(m, lanes)
        for k, (e, layer, x_) in enumerate(zip(net.engines, m.layers, c["layers"])):
            _, code = m.code_of_layer_input(k)
            spikes = g.phases[k].reshape((len(x),) + tuple(e.in_shape)) < code
            ry, rx = (e.runs_y, e.runs_x) if layer.kind != "maxpool" else (e.row_runs, e.col_runs)
            cov = ry[:, 1][:, None] * rx[:, 1][None, :]
            per_event = np.where(cov > 0, cov * e.groups, 1)             # at least one cycle per spike
            assert x_["input_spikes"] == pytest.approx(spikes.sum() / len(x), abs=1e-3)
            assert x_["accumulate_cycles"] == pytest.approx((spikes * per_event).sum() / len(x), abs=1e-3)
            assert x_["cycles_per_event"] == cov.max() * e.groups
            C_out, OH, OW = e.out_shape
            if layer.kind == "maxpool":
                assert x_["drain_cycles"] == OH * (OW * C_out + 1) + fpga.POOL_FRAME_OVERHEAD
                assert x_["event_driven_limit"] == x_["input_spikes"]
                continue
            assert x_["synaptic_ops"] == pytest.approx((spikes * cov).sum() * C_out / len(x), abs=1e-3)
            if np.all(m.code_of_layer_input(k)[0][:code] > 0):   # the golden model counts the same operations
                assert x_["synaptic_ops"] == pytest.approx(g.sops[:, k].mean(), abs=1e-3)
            assert x_["event_driven_limit"] == pytest.approx(x_["synaptic_ops"] / lanes, abs=1e-3)
            if layer.readout:
                assert x_["drain_cycles"] == e.n_out + OH * (2 * OW * e.groups + fpga.READOUT_ROW_OVERHEAD)
            else:
                out = (g.phases[k + 1].reshape(len(x), C_out, e.n_pos) < m.T)
                pad = np.zeros((len(x), e.groups * lanes, e.n_pos), dtype=np.int64)
                pad[:, :C_out] = out
                words = pad.reshape(len(x), e.groups, lanes, e.n_pos).sum(2)
                want = (np.maximum(3, m.T.bit_length() + np.maximum(1, words)).sum((1, 2))
                        + OH * fpga.FIRE_ROW_OVERHEAD + fpga.FIRE_FRAME_OVERHEAD).mean()
                assert x_["drain_cycles"] == pytest.approx(want, abs=1e-3)
    # Worst case (no dataset): every neuron spikes.
    c = fpga.estimate(m, None, 2)["cycles"]
    assert c["spikes_source"].startswith("worst case")
    assert c["layers"][0]["input_spikes"] == int(np.prod(m.input_shape))
    assert c["layers"][2]["input_spikes"] == int(np.prod(m.layers[1].out_shape))


def test_emit_small_conv(small_cnn, tmp_path):
    m = small_cnn
    man = fpga.emit(m, "cd" * 32, "small-cnn", tmp_path / "a", board="ulx3s", lanes=2)
    man2 = fpga.emit(m, "cd" * 32, "small-cnn", tmp_path / "b", board="ulx3s", lanes=2)
    a, b = read_dir(tmp_path / "a"), read_dir(tmp_path / "b")
    assert a == b and man == man2    # byte-identical
    check_manifest(tmp_path / "a", man)
    assert {"small_cnn.v", "small_cnn_pins.v", "estimate.json", "estimate.txt", "encode.mem", "decode.mem",
            "input_decode.mem", "L0_conv2d_weight.mem", "L0_conv2d_bias.mem", "L0_conv2d_theta.mem",
            "L2_dense_weight.mem", "L2_dense_bias.mem"} <= set(a)
    assert not any(n.startswith("L1_") for n in a)       # a max-pool has no tables
    assert re.search(r"^module small_cnn\(", a["small_cnn.v"].decode(), re.M)
    assert [l["kind"] for l in man["layers"]] == ["conv2d", "maxpool", "dense"]
    est = json.loads(a["estimate.json"])
    assert est["board"] == "ulx3s" and est["boards"]["ulx3s"]["fits"]
    assert {x["name"]: (x["depth"], x["width"]) for x in est["memories"]} == \
        fpga.elaborated_memories(m, 2)
    assert [x["kind"] for x in est["cycles"]["layers"]] == ["conv2d", "maxpool", "dense"]
    C, _, OW = m.layers[1].out_shape     # k = s: one output row open at a time
    assert est["memory_bits"]["pool"] == C * OW * m.T.bit_length()
    mu = est["multipliers"]
    assert mu["lane_multipliers"] == 4 and mu["operands"][1] == "none (max-pool)"
    assert est["boards"]["ulx3s"]["dsp"] == est["boards"]["ulx3s"]["dsp_lane"] + est["boards"]["ulx3s"]["dsp_constant"]
    txt = a["estimate.txt"].decode()
    assert "layer 1 maxpool" in txt and "slowest-layer limit" in txt


def test_mnist_cnn_emit(cnn, tmp_path):
    sha = modelfile.file_sha256(CNN)
    man = fpga.emit(cnn, sha, "mnist-cnn", tmp_path / "a", board=None, lanes=8)
    check_manifest(tmp_path / "a", man)
    a = read_dir(tmp_path / "a")
    assert re.search(r"^module mnist_cnn\(", a["mnist_cnn.v"].decode(), re.M)
    assert {"L0_conv2d_weight.mem", "L2_conv2d_weight.mem", "L4_dense_weight.mem", "L5_dense_weight.mem",
            "L0_conv2d_theta.mem"} <= set(a)
    est = json.loads(a["estimate.json"])
    assert {x["name"]: (x["depth"], x["width"]) for x in est["memories"]} == fpga.elaborated_memories(cnn, 8)
    c = est["cycles"]
    assert [x["kind"] for x in c["layers"]] == ["conv2d", "maxpool", "conv2d", "maxpool", "dense", "dense"]
    assert [x["cycles_per_event"] for x in c["layers"]] == [25 * 2, 1, 25 * 4, 1, 16, 2]
    assert all(x["limit_ratio"] is None or x["limit_ratio"] >= 1 for x in c["layers"])
    if "mnist" in c["spikes_source"]:  # dataset available: golden phases
        from codegen.frontend import datasets

        x, _ = datasets.load("mnist", "test")
        g = golden.run(cnn, x[:10], keep_phases=False)
        for k in (0, 2, 4, 5):
            assert c["layers"][k]["input_spikes"] == pytest.approx(g.spikes[:, k].mean(), abs=1e-3)
            assert c["layers"][k]["synaptic_ops"] == pytest.approx(g.sops[:, k].mean(), abs=1e-3)
    # Neither board holds it (Yosys 0.23: 76 DP16KD and 49 MULT18X18D at 8 lanes, equal to the estimate).
    for bn in ("ulx3s", "icebreaker"):
        m = est["boards"][bn]
        assert not m["fits"] and m["block_rams"] > m["block_rams_available"]
    assert est["boards"]["ulx3s"]["dsp"] > 28
    # Deterministic on the real model too.
    fpga.emit(cnn, sha, "mnist-cnn", tmp_path / "b", board=None, lanes=8)
    assert read_dir(tmp_path / "b") == a


def test_refuses_cnn_that_does_not_fit(cnn, tmp_path):
    """At lanes 8 the MNIST CNN needs more DSPs than either board has; the message names both numbers
    and the largest lane count that fits (the row-buffered engines keep only a few accumulator rows)."""
    for bn, dsp in (("ulx3s", "MULT18X18D"), ("icebreaker", "SB_MAC16")):
        with pytest.raises(UserError) as e:
            fpga.emit(cnn, "00" * 32, "mnist-cnn", tmp_path / "out", board=bn, lanes=8)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"model does not fit {bn} ")
        dsps = re.search(rf"needs (\d+) DSPs \(board has (\d+) {dsp}\)", msg)
        assert dsps and int(dsps.group(1)) > int(dsps.group(2))
        hint = re.search(r"; lanes=(\d+) fits", msg)
        assert hint or msg.endswith("no lane count fits this board (weights in block RAM or SPRAM)"), msg
        if hint:
            assert fpga.fits(cnn, board(bn), int(hint.group(1)))
            assert not fpga.fits(cnn, board(bn), int(hint.group(1)) + 1)
        assert not (tmp_path / "out").exists()


def test_lanes_auto_fits_the_board_per_layer(cnn, tmp_path):
    """``--lanes auto`` (the default with a board): lanes per layer that fit, the slowest layer (most
    synaptic operations per lane) first; max-pools keep 1. The MNIST CNN on the ULX3S: every layer's
    lanes are at least 1 and some differ, the design fits, and it is what emit writes."""
    b = board("ulx3s")
    lanes = fpga.fit_lanes(cnn, b, n_images=3)
    assert lanes is not None and len(lanes) == len(cnn.layers) and fpga.fits(cnn, b, lanes)
    assert [ln for ln, l in zip(lanes, cnn.layers) if l.kind == "maxpool"] == [1, 1]
    assert len(set(lanes)) > 1
    est = fpga.estimate(cnn, b, lanes, n_images=3)
    layers = est["cycles"]["layers"]
    slow = max(range(len(layers)), key=lambda i: layers[i]["event_driven_limit"])
    assert cnn.layers[slow].kind == "conv2d" and lanes[slow] == max(lanes)   # conv2: 276k of 357k SOPs
    man = fpga.emit(cnn, "00" * 32, "mnist-cnn", tmp_path / "out", board="ulx3s", lanes="auto", n_images=3)
    assert man["lanes"] == lanes
    assert json.loads((tmp_path / "out" / "estimate.json").read_text())["boards"]["ulx3s"]["fits"]
    assert fpga.fit_lanes(cnn, board("icebreaker"), n_images=0) is None
    with pytest.raises(UserError, match=r"^--lanes auto needs --board"):
        fpga.emit(cnn, "00" * 32, "mnist-cnn", tmp_path / "none", lanes="auto")
    assert fpga.parse_lanes("4,1,8") == [4, 1, 8] and fpga.parse_lanes("6") == 6 and fpga.lanes_text([4, 1]) == "4,1"
    # With the FIFO depth too (--fifo-depth auto, the default with --lanes auto on the command line): the
    # depth of the lowest estimated latency that fits, no slower than depth 16's design.
    ph = fpga.golden_phases(cnn, 3)
    lanes2, depth = fpga.fit_design(cnn, b, phases=ph)
    assert depth in fpga.FIFO_CANDIDATES and fpga.fits(cnn, b, lanes2, depth)
    lat = lambda ln, d: fpga.estimate(cnn, b, ln, d, phases=ph)["cycles"]["cycles_per_inference"]  # noqa: E731
    assert lat(lanes2, depth) <= lat(lanes, 16)


def test_refuses_too_big_for_board(mlp, tmp_path):
    # Weights in block RAM: the UP5K's 30 EBR are far too few at any lane count.
    with pytest.raises(UserError) as e:
        fpga.emit(mlp, "00" * 32, "mnist-mlp", tmp_path / "out", board="icebreaker", lanes=8, store="rom")
    msg = str(e.value)
    assert "\n" not in msg
    need = re.search(r"needs (\d+) block RAMs \(board has (\d+) SB_RAM40_4K\)", msg)
    assert need and int(need.group(1)) > 30 and int(need.group(2)) == 30
    assert re.search(r"needs 16 DSPs \(board has 8 SB_MAC16\)", msg)
    assert msg.endswith("no lane count fits this board (weights in block RAM)")
    assert not (tmp_path / "out").exists()
    # auto: the first layer goes to SPRAM, but 8 lanes still need 16 DSPs; 4 lanes fit.
    with pytest.raises(UserError) as e:
        fpga.emit(mlp, "00" * 32, "mnist-mlp", tmp_path / "out", board="icebreaker", lanes=8, n_images=0)
    msg = str(e.value)
    assert "(store ram,rom)" in msg and "needs 16 DSPs (board has 8 SB_MAC16)" in msg and "block RAMs" not in msg
    assert msg.endswith("; lanes=4 fits (weights in block RAM or SPRAM)")
    assert not (tmp_path / "out").exists()
    # ECP5-25k: 8 lanes need more than 56 DP16KD (Yosys: 58); the message names a lane count that fits.
    with pytest.raises(UserError, match=r"needs \d+ block RAMs \(board has 56 DP16KD\); lanes=\d fits"):
        fpga.emit(mlp, "00" * 32, "mnist-mlp", tmp_path / "out", board="ulx3s", lanes=8)
    with pytest.raises(UserError, match="--lanes must be a positive integer"):
        fpga.emit(mlp, "00" * 32, "mnist-mlp", tmp_path / "out", board="ulx3s", lanes=0)
    assert not (tmp_path / "out").exists()
    # Without a board nothing is refused; the estimate says where it fits.
    man = fpga.emit(mlp, "00" * 32, "mnist-mlp", tmp_path / "any", board=None, lanes=8, n_images=0)
    est = json.loads((tmp_path / "any" / "estimate.json").read_text())
    assert man["board"] is None and not est["boards"]["icebreaker"]["fits"] and not est["boards"]["ulx3s"]["fits"]
    assert est["cycles"]["spikes_source"].startswith("worst case")


@pytest.mark.skipif(shutil.which("iverilog") is None or shutil.which("vvp") is None, reason="needs Icarus Verilog")
@pytest.mark.parametrize("store", ["rom", "ram"])
def test_pins_wrapper_matches_golden(tmp_path, store):
    """The emitted Verilog plus the pins wrapper under Icarus: serialised results equal the golden
    model. With a RAM store the bench first streams weights.bin into ld (the store has no initial
    contents in the emitted Verilog)."""
    rng = np.random.default_rng(11)
    m = random_model(rng, plan=["dense", "dense"])
    x = random_images(rng, m, 4)
    spec.validate(m)   # sets acc_bits
    lanes = 2 if store == "rom" else max(-(-x_.acc_bits // 8) for x_ in m.layers)
    man = fpga.emit(m, "00" * 32, "rnd", tmp_path / "hw", lanes=lanes, store=store)
    assert ("ram" in man["store"]["layers"]) == (store == "ram")
    image = (tmp_path / "hw" / "weights.bin").read_bytes() if store == "ram" else b"\0"
    (tmp_path / "image.hex").write_text("".join(f"{v:02x}\n" for v in image))
    n_ld = len(image) if store == "ram" else 0
    ld_ports = (".ld(ld_mem[j]), .ld_valid(ld_valid), .ld_ready(ld_ready), .loaded(loaded)," if store == "ram" else "")
    n_px = int(np.prod(m.input_shape))
    (tmp_path / "pixels.hex").write_text("".join(f"{int(p):02x}\n" for p in pixel_order(x).reshape(-1)))
    nb = -(-fpga.result_bits(m) // 8)
    tb = f"""`timescale 1ns/1ps
module tb;
  reg clk = 0, rst = 1;
  reg [7:0] mem [0:{len(x) * n_px - 1}];
  reg [7:0] ld_mem [0:{len(image) - 1}];
  integer i = 0, j = 0, nres = 0, f, cyc = 0;
  wire ld_ready, loaded;
  reg ld_gap = 0;
  wire ld_valid = !rst && j < {n_ld} && !ld_gap;
  wire pix_ready, res_valid, res_last;
  wire [7:0] res;
  reg res_ready = 0;
  wire pix_valid = !rst && i < {len(x) * n_px};
  rnd_pins dut(.clk(clk), .rst(rst), {ld_ports} .pix(mem[i]), .pix_valid(pix_valid), .pix_ready(pix_ready),
               .res(res), .res_valid(res_valid), .res_ready(res_ready), .res_last(res_last));
  always #5 clk = ~clk;
  initial begin $readmemh("pixels.hex", mem); $readmemh("image.hex", ld_mem); f = $fopen("out.txt", "w"); #22 rst = 0; end
  always @(posedge clk) begin
    cyc <= cyc + 1;
    if (ld_valid && ld_ready) j <= j + 1;
    ld_gap <= ($random & 3) == 0;   // idle cycles in the load stream
    res_ready <= ($random & 3) != 0;  // back-pressure on the byte stream
    if (pix_valid && pix_ready) i <= i + 1;
    if (res_valid && res_ready) begin
      $fwrite(f, "%02x%s", res, res_last ? "\\n" : " ");
      if (res_last) nres = nres + 1;
    end
    if (nres == {len(x)} || cyc > 200000) begin $fclose(f); $finish; end
  end
endmodule
"""
    (tmp_path / "tb.v").write_text(tb)
    subprocess.run(["iverilog", "-o", "sim", "tb.v", "hw/rnd.v", "hw/rnd_pins.v"], cwd=tmp_path, check=True,
                   capture_output=True)
    subprocess.run(["vvp", "-n", "sim"], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    rows = (tmp_path / "out.txt").read_text().splitlines()
    assert len(rows) == len(x)
    ref = golden.run(m, x)
    acc_bits = m.layers[-1].acc_bits
    cls_bits = max(1, (m.num_classes - 1).bit_length())
    for k, row in enumerate(rows):
        bs = [int(t, 16) for t in row.split()]
        assert len(bs) == nb
        word = int.from_bytes(bytes(bs), "little")
        assert word & ((1 << cls_bits) - 1) == ref.classes[k]
        logits = []
        for c in range(m.num_classes):
            v = (word >> (cls_bits + c * acc_bits)) & ((1 << acc_bits) - 1)
            logits.append(v - (1 << acc_bits) if v >> (acc_bits - 1) else v)
        assert logits == list(ref.logits[k])


# ------------------------------------------------------------------ codegen verify: options and inputs (no simulation)

def _cli(capsys, *args):
    from codegen import cli

    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:          # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


_one_line_error = one_line_error



@pytest.mark.parametrize("args, needle", [
    (["--target", "fpga", "-n", "0"], "-n must be a positive integer, not 0"),
    (["--target", "fpga", "-n", "-2"], "-n must be a positive integer, not -2"),
    (["--target", "fpga", "--lanes", "0"], "--lanes must be a positive integer, not 0"),
    (["--target", "fpga", "--lanes", "65"], "--lanes must be at most 64"),
    (["--target", "fpga", "--sim", "modelsim"], "unknown simulator 'modelsim'; supported: icarus, verilator"),
    (["--target", "fpga", "--board", "mps2-an386"], "'mps2-an386' is an MCU board, but verify --target fpga needs an FPGA board"),
    (["--target", "fpga", "--board", "de10"], "unknown board 'de10'; FPGA boards: icebreaker (FPGA, up5k), ulx3s"),
    (["--target", "c", "--board", "ulx3s"], "'ulx3s' is an FPGA board, but verify --target c needs an MCU board: mps2-an386"),
    (["--target", "c", "--store", "rom"], "--store applies to the fpga target, not c"),
    (["--target", "c", "--lanes", "4"], "--lanes applies to the fpga target, not c"),
    (["--target", "c", "--sim", "icarus"], "--sim applies to the fpga target, not c"),
    (["--target", "c", "--keep"], "--keep applies to the fpga target, not c"),
    (["--target", "fpga", "--dataset", "mnist", "--input", "x.npy"], "not both"),
    (["--target", "fpga", "--input", "nosuch.npy"], "nosuch.npy: no such file"),
    (["--target", "fpga", "--store", "flash"], "invalid choice"),
])
def test_verify_options_refused_before_any_work(capsys, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(capsys, "verify", MLP, *args)
    _one_line_error(code, err, needle)
    assert list(tmp_path.iterdir()) == []             # no build/ folder either


def test_verify_input_files_refused(capsys, tmp_path, monkeypatch):
    """--input: one line for a missing file, a text file named .npy (no numpy advice about allow_pickle),
    pickled objects, a wrong dtype or shape, zero images, a named pipe; the model without a dataset
    needs --input; nothing is written, not even the work folder."""
    monkeypatch.chdir(tmp_path)
    model = REPRO / "rtl-ram-store-theta-minus-bias" / "model.pt"     # input 2x4x2, no dataset recorded
    d = tmp_path / "in"
    d.mkdir()
    (d / "text.npy").write_text("1 2 3\n")
    np.save(d / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(d / "f32.npy", np.zeros((3, 2, 4, 2), np.float32))
    np.save(d / "shape.npy", np.zeros((3, 1, 28, 28), np.uint8))
    np.save(d / "zero.npy", np.zeros((0, 2, 4, 2), np.uint8))
    os.mkfifo(d / "pipe.npy")
    cases = [("text.npy", "not a .npy file"), ("obj.npy", "Python objects"), ("f32.npy", "uint8 pixels, not float32"),
             ("shape.npy", "shape (N, 2, 4, 2), not (3, 1, 28, 28)"), ("zero.npy", "0 images"),
             ("pipe.npy", "not a regular file"), ("missing.npy", "no such file")]
    for f, needle in cases:
        code, _, err = _cli(capsys, "verify", model, "--target", "fpga", "--input", d / f)
        line = _one_line_error(code, err, f, needle)
        assert "allow_pickle" not in line
    code, _, err = _cli(capsys, "verify", model, "--target", "fpga")
    _one_line_error(code, err, "the model records no dataset: give --dataset NAME or --input FILE.npy")
    code, _, err = _cli(capsys, "verify", model, "--target", "c", "--dataset", "mnist")
    _one_line_error(code, err, "mnist test images are 1x28x28 but the model takes 2x4x2")
    # the reproducer's RAM-store refusal comes before any work too
    code, _, err = _cli(capsys, "verify", model, "--target", "fpga", "--input", model.parent / "inputs.npy",
                        "--store", "ram", "--board", "icebreaker")
    _one_line_error(code, err, "layer 0 (conv2d) cannot keep its weights in a RAM store at lanes=8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_verify_work_folder_not_writable(capsys, tmp_path, monkeypatch):
    """A working directory that cannot be written (here /proc, which even root cannot write): one line
    naming the folder, before any work; --work under a file likewise."""
    monkeypatch.chdir("/proc")
    for target in ("fpga", "c"):
        code, _, err = _cli(capsys, "verify", MLP, "--target", target, "-n", "2")
        _one_line_error(code, err, f"cannot write the work folder /proc/build/mnist-mlp/verify-{target}")
    (tmp_path / "f").write_text("x")
    code, _, err = _cli(capsys, "verify", MLP, "--target", "fpga", "--work", tmp_path / "f" / "w")
    _one_line_error(code, err, f"cannot write the work folder {tmp_path / 'f' / 'w'}", "is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_design_size_limit(tmp_path):
    """A design with more memory bits than MAX_DESIGN_BITS is refused from the engines' parameters before
    the estimate and the Verilog (a model within the spec's limits: a 1x1024x1024 input read by a
    dense readout, 4M weights), with and without a board; design_bits equals the estimate's
    memory_bits."""
    from runtime.spec import decode_table, encode_table

    rng = np.random.default_rng(0)
    T, Q, F = 4, 1.5, 6
    dec = decode_table(Q, T, F)
    s0 = (1, 1024, 1024)
    layers = [spec.Layer("dense", s0, (4,), rng.integers(-9, 9, (4, 1 << 20)).astype(np.int8),
                         np.zeros(4, np.int64), None, readout=True, name="d0")]
    big = spec.IntModel(Q=Q, T=T, F=F, input_shape=s0, decode=dec, encode=encode_table(Q, T), layers=layers)
    spec.validate(big)
    bits = fpga.design_bits(big, 8)
    assert bits["total"] > fpga.MAX_DESIGN_BITS
    assert bits["weights"] >= (1 << 20) * 8 * 8                     # every pixel's weight word, 8 lanes
    for b in ("ulx3s", None):
        with pytest.raises(UserError, match=r"^the FPGA design needs [\d,]+ memory bits \(weights "):
            fpga.emit(big, "00" * 32, "big", tmp_path / "out", board=b)
    assert not (tmp_path / "out").exists()
    fpga.check_design_size(fpga.MAX_DESIGN_BITS)        # at the limit: allowed
    with pytest.raises(UserError):
        fpga.check_design_size(fpga.MAX_DESIGN_BITS + 1)
    small = valid_model(2, ["conv2d", "avgpool", "conv2d", "dense"], 5)[0]
    for lanes, store in ((3, "rom"), (8, "ram")):
        st = fpga.resolve_store(small, None, lanes, store)
        est = fpga.estimate(small, None, lanes, store=st, n_images=0)
        assert fpga.design_bits(small, lanes, store=st) == est["memory_bits"]


def test_emit_progress(small, tmp_path, capsys):
    fpga.emit(small, "ab" * 32, "tiny-net", tmp_path / "a", lanes=4, progress=True)
    err = capsys.readouterr().err
    for stage in ("estimate", "Verilog", "tables", "write"):
        assert f"emit fpga: {stage}" in err
    fpga.emit(small, "ab" * 32, "tiny-net", tmp_path / "b", lanes=4)
    assert capsys.readouterr().err == ""


def test_fast_index_math_equals_its_definition():
    """The vectorised / compiled forms used at the spec's size limits equal their definitions:
    magic_divisor (smallest shift; exhaustively right), window_runs (the outputs whose window holds
    each input)."""
    from rtl.coords import magic_divisor, window_runs

    for d in range(1, 40):
        for n_max in (0, 1, d - 1, d, 3 * d + 1, 1000):
            mult, shift = magic_divisor(d, n_max)
            n = np.arange(n_max + 1, dtype=object)
            assert ((n * mult) >> shift == n // d).all()
            if shift:   # the smallest shift: one less fails somewhere
                m2 = -(-(1 << (shift - 1)) // d)
                assert not ((n * m2) >> (shift - 1) == n // d).all()
    assert magic_divisor(1 << 20, (1 << 20) - 1) == (1, 20)
    assert magic_divisor(1000 * 1000, 1000 * 1000 - 1) == (137439, 37)
    for size in range(1, 13):
        for k in range(1, 6):
            for s in range(1, 4):
                for p in range(k):
                    out = (size + 2 * p - k) // s + 1
                    if out < 1:
                        continue
                    runs = window_runs(size, k, s, p, out)
                    for y in range(size):
                        os_ = [o for o in range(out) if o * s - p <= y <= o * s - p + k - 1]
                        want = (os_[0], len(os_), y + p - os_[0] * s) if os_ else (0, 0, 0)
                        assert tuple(runs[y]) == want


def test_emit_synth_moves_the_run_into_the_output_and_its_manifest(tmp_path, capsys, monkeypatch):
    """``emit --synth``: the synthesis runs in a temp folder beside the output, then becomes ``synth/``
    and is listed in the manifest with its sha256 (Yosys and nextpnr replaced by a stand-in here; the
    real tools run in tests/test_synth.py)."""
    from codegen import cli
    from codegen.fpga import synth

    def fake(model, board, lanes, work, name="model", store="auto", **kw):
        assert (board, lanes, store) == ("icebreaker", 4, ["ram", "rom"])
        (Path(work) / "synth_report.txt").write_text("fake synthesis: fits\n")
        (Path(work) / "sub").mkdir()
        (Path(work) / "sub" / "netlist.json").write_text("{}\n")
        return {"fits": True}

    monkeypatch.setattr(synth, "synthesize", fake)
    out = tmp_path / "o"
    assert cli.main(["emit", str(MLP), "--target", "fpga", "--board", "icebreaker", "--lanes", "4", "--synth",
                     "-o", str(out), "-q"]) == 0
    assert "fake synthesis: fits" in capsys.readouterr().out
    man = json.loads((out / "manifest.json").read_text())
    listed = {e["name"]: e["sha256"] for e in man["files"] if e["name"].startswith("synth/")}
    assert listed == {n: hashlib.sha256((out / n).read_bytes()).hexdigest()
                      for n in ("synth/synth_report.txt", "synth/sub/netlist.json")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]      # no temp folder left
