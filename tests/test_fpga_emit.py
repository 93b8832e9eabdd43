"""codegen.emit_fpga: files, determinism, manifest, the estimate, refusals (fast; no synthesis)."""
import hashlib
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from randmodels import random_images, random_model

from boards.fpga import FPGA_BOARDS, board
from codegen import emit_fpga
from runtime import golden, modelfile
from runtime.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "models" / "mnist-mlp.pt"


@pytest.fixture(scope="module")
def small():
    return random_model(np.random.default_rng(7), plan=["dense", "dense"])


@pytest.fixture(scope="module")
def mlp():
    return modelfile.load(MLP)


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
    with pytest.raises(UserError, match="unknown FPGA board 'de10'.*icebreaker.*ulx3s"):
        board("de10")


def test_emit_small_files_deterministic(small, tmp_path):
    man = emit_fpga.emit(small, "ab" * 32, "tiny-net", tmp_path / "a", board="icebreaker", lanes=4)
    man2 = emit_fpga.emit(small, "ab" * 32, "tiny-net", tmp_path / "b", board="icebreaker", lanes=4)
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
    assert re.search(r"^module tiny_net_pins \(", a["tiny_net_pins.v"].decode(), re.M)
    # Same tables as --target lut.
    w = small.layers[0].weight.astype(np.int64).ravel()
    lines = a["L0_dense_weight.mem"].decode().split()
    assert [int(x, 16) - 256 * (int(x, 16) > 127) for x in lines] == list(w)
    assert man["target"] == "fpga" and man["board"] == "icebreaker" and man["lanes"] == 4
    assert man["top"]["module"] == "tiny_net" and man["pins_wrapper"]["pins"] == 23
    # Another lane count changes the Verilog.
    emit_fpga.emit(small, "ab" * 32, "tiny-net", tmp_path / "c", board=None, lanes=1)
    assert (tmp_path / "c" / "tiny_net.v").read_bytes() != a["tiny_net.v"]


def test_estimate_cycles_formula(small):
    for lanes in (1, 2, 3, 8):
        est = emit_fpga.estimate(small, None, lanes)
        c = est["cycles"]
        assert c["spikes_source"].startswith("worst case")  # random models name no dataset
        for layer, x in zip(small.layers, c["layers"]):
            n_out, n_in = layer.weight.shape[0], int(np.prod(layer.weight.shape[1:]))
            assert x["cycles_per_event"] == math.ceil(n_out / lanes)
            assert x["input_spikes"] == n_in
            assert x["accumulate_cycles"] == n_in * math.ceil(n_out / lanes)
            G = math.ceil(n_out / lanes)
            want = n_out + 2 * G if layer.readout else G * max(3, small.T.bit_length() + 1, lanes)
            assert x["drain_cycles"] == want
        acc = sum(x["accumulate_cycles"] for x in c["layers"])
        drain = sum(x["drain_cycles"] for x in c["layers"])
        assert c["formula_cycles"] == acc + drain
        px = int(np.prod(small.input_shape)) + 1
        assert c["cycles_per_inference"] == max(px, c["layers"][0]["accumulate_cycles"]) + acc \
            - c["layers"][0]["accumulate_cycles"] + drain
        assert est["multipliers"]["lane_multipliers"] == lanes * len(small.layers)
        assert set(est["boards"]) == set(FPGA_BOARDS)


def test_estimate_memories(small):
    lanes = 2
    mems = {m.name: m for m in emit_fpga.memories(small, lanes)}
    l0 = small.layers[0]
    G = math.ceil(l0.weight.shape[0] / lanes)
    assert (mems["layer0.wmem"].depth, mems["layer0.wmem"].width) == (int(np.prod(l0.weight.shape[1:])) * G, 8 * lanes)
    assert (mems["layer0.accmem"].depth, mems["layer0.accmem"].width) == (G, lanes * l0.acc_bits)
    assert mems["encoder.rom"].depth == 256
    assert sum(1 for n in mems if n.startswith("layer0.fire")) == lanes  # one threshold ROM per lane
    assert not any(n.startswith("layer1.fire") for n in mems)           # readout: no thresholds
    est = emit_fpga.estimate(small, "icebreaker", lanes)
    m = est["boards"]["icebreaker"]
    assert "not used" in m["spram_note"] and m["spram"] == 0
    assert m["fits"]


def test_mnist_mlp_emit(mlp, tmp_path):
    man = emit_fpga.emit(mlp, modelfile.file_sha256(MLP), "mnist-mlp", tmp_path / "a", board="ulx3s", lanes=4)
    check_manifest(tmp_path / "a", man)
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
        from codegen import datasets

        x, _ = datasets.load("mnist", "test")
        r = golden.run(mlp, x[:10], keep_phases=False)
        assert c["layers"][0]["input_spikes"] == pytest.approx(r.spikes[:, 0].mean(), abs=1e-3)
        assert c["layers"][1]["input_spikes"] == pytest.approx(r.spikes[:, 1].mean(), abs=1e-3)
    # Deterministic on the real model too.
    emit_fpga.emit(mlp, modelfile.file_sha256(MLP), "mnist-mlp", tmp_path / "b", board="ulx3s", lanes=4)
    assert read_dir(tmp_path / "a") == read_dir(tmp_path / "b")


def test_refuses_conv(tmp_path):
    m = random_model(np.random.default_rng(3), plan=["conv2d", "maxpool", "dense"])
    with pytest.raises(UserError, match=r"^the fpga target supports dense layers only in this version: layer 0 is conv2d$"):
        emit_fpga.emit(m, "00" * 32, "cnn", tmp_path / "out", board="ulx3s")
    assert not (tmp_path / "out").exists()
    cnn = modelfile.load(ROOT / "models" / "mnist-cnn.pt")
    with pytest.raises(UserError, match="layer 0 is conv2d"):
        emit_fpga.emit(cnn, "00" * 32, "mnist-cnn", tmp_path / "out")


def test_refuses_too_big_for_board(mlp, tmp_path):
    with pytest.raises(UserError) as e:
        emit_fpga.emit(mlp, "00" * 32, "mnist-mlp", tmp_path / "out", board="icebreaker", lanes=8)
    msg = str(e.value)
    assert "\n" not in msg
    need = re.search(r"needs (\d+) block RAMs \(board has (\d+) SB_RAM40_4K\)", msg)
    assert need and int(need.group(1)) > 30 and int(need.group(2)) == 30
    assert re.search(r"needs 16 DSPs \(board has 8 SB_MAC16\)", msg)
    assert "no lane count fits" in msg and "SPRAM" in msg
    assert not (tmp_path / "out").exists()
    # ECP5-25k: 8 lanes need more than 56 DP16KD (Yosys: 58); the message names a lane count that fits.
    with pytest.raises(UserError, match=r"needs \d+ block RAMs \(board has 56 DP16KD\); lanes=\d fits"):
        emit_fpga.emit(mlp, "00" * 32, "mnist-mlp", tmp_path / "out", board="ulx3s", lanes=8)
    with pytest.raises(UserError, match="--lanes must be a positive integer"):
        emit_fpga.emit(mlp, "00" * 32, "mnist-mlp", tmp_path / "out", board="ulx3s", lanes=0)
    assert not (tmp_path / "out").exists()
    # Without a board nothing is refused; the estimate says where it fits.
    man = emit_fpga.emit(mlp, "00" * 32, "mnist-mlp", tmp_path / "any", board=None, lanes=8, n_images=0)
    est = json.loads((tmp_path / "any" / "estimate.json").read_text())
    assert man["board"] is None and not est["boards"]["icebreaker"]["fits"] and not est["boards"]["ulx3s"]["fits"]
    assert est["cycles"]["spikes_source"].startswith("worst case")


@pytest.mark.skipif(shutil.which("iverilog") is None or shutil.which("vvp") is None, reason="needs Icarus Verilog")
def test_pins_wrapper_matches_golden(tmp_path):
    """The emitted Verilog plus the 23-pin wrapper under Icarus: serialised results equal the golden model."""
    rng = np.random.default_rng(11)
    m = random_model(rng, plan=["dense", "dense"])
    x = random_images(rng, m, 4)
    emit_fpga.emit(m, "00" * 32, "rnd", tmp_path / "hw", lanes=2)
    n_px = int(np.prod(m.input_shape))
    (tmp_path / "pixels.hex").write_text("".join(f"{int(p):02x}\n" for p in x.reshape(-1)))
    nb = -(-emit_fpga.result_bits(m) // 8)
    tb = f"""`timescale 1ns/1ps
module tb;
  reg clk = 0, rst = 1;
  reg [7:0] mem [0:{len(x) * n_px - 1}];
  integer i = 0, nres = 0, f, cyc = 0;
  wire pix_ready, res_valid, res_last;
  wire [7:0] res;
  reg res_ready = 0;
  wire pix_valid = !rst && i < {len(x) * n_px};
  rnd_pins dut(.clk(clk), .rst(rst), .pix(mem[i]), .pix_valid(pix_valid), .pix_ready(pix_ready),
               .res(res), .res_valid(res_valid), .res_ready(res_ready), .res_last(res_last));
  always #5 clk = ~clk;
  initial begin $readmemh("pixels.hex", mem); f = $fopen("out.txt", "w"); #22 rst = 0; end
  always @(posedge clk) begin
    cyc <= cyc + 1;
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
