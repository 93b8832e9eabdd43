"""Cortex-M: firmware for the boards builds, runs under QEMU and Unicorn, and equals the golden model."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from codegen import cli
from codegen.frontend import datasets
from boards import registry
from codegen.c import emulators
from codegen.c import firmware
from runtime import golden, modelfile

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {"mnist-mlp": "mnist", "mnist-cnn": "mnist", "fmnist-cnn": "fashion-mnist"}
pytestmark = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                                reason="needs gcc-arm-none-eabi and qemu-system-arm (scripts/setup.sh installs them)")


def _load(name):
    m = modelfile.load(ROOT / "models" / f"{name}.pt")
    x, _ = datasets.load(SHIPPED[name], "test")
    return m, x


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_qemu_mps2_an386_parity_200_images(name, tmp_path):
    m, x = _load(name)
    fw = firmware.build_firmware(m, name, registry.mcu("mps2-an386"), tmp_path, opt="-O2")
    logits, classes = emulators.run_qemu(fw, x[:200], m.num_classes)
    gold = golden.run(m, x[:200], keep_phases=False)
    assert np.array_equal(logits, gold.logits) and np.array_equal(classes, gold.classes)


def test_qemu_parity_at_os_and_a_corrupted_model_is_caught(tmp_path):
    m, x = _load("mnist-mlp")
    gold = golden.run(m, x[:100], keep_phases=False)
    fw = firmware.build_firmware(m, "mnist-mlp", registry.mcu("mps2-an386"), tmp_path, opt="-Os")
    logits, classes = emulators.run_qemu(fw, x[:100], m.num_classes)
    assert np.array_equal(logits, gold.logits) and np.array_equal(classes, gold.classes)
    m.layers[-1].bias[3] += 1  # firmware built from a different model must not match
    fw2 = firmware.build_firmware(m, "mnist-mlp", registry.mcu("mps2-an386"), tmp_path / "bad", opt="-O2")
    logits2, _ = emulators.run_qemu(fw2, x[:100], m.num_classes)
    assert not np.array_equal(logits2, gold.logits)


@pytest.mark.parametrize("board", ["mps2-an386", "nucleo-f446re", "rp2040-pico"])
def test_boards_build_and_count_instructions(board, tmp_path):
    m, x = _load("mnist-cnn")
    b = registry.mcu(board)
    fw = firmware.build_firmware(m, "mnist-cnn", b, tmp_path)
    s = fw.sizes
    assert 0 < s["flash_bytes"] <= b.flash_bytes and 0 < s["ram_bytes"] <= b.ram_bytes
    assert s["sections"][".rodata"] > sum(l.weight.size for l in m.layers if l.weight is not None)
    run = emulators.run_unicorn(fw, x[:3], m.num_classes)
    gold = golden.run(m, x[:3], keep_phases=False)
    assert np.array_equal(run.logits, gold.logits)
    assert all(i > 100_000 for i in run.instructions)
    assert 0 < run.stack_peak_bytes <= s["stack_bytes_static"]


def test_emit_c_report_is_deterministic(tmp_path, capsys):
    args = ["emit", str(ROOT / "models" / "mnist-mlp.pt"), "--target", "c", "--board", "mps2-an386", "--count-images", "3", "-q"]
    assert cli.main(args + ["-o", str(tmp_path / "a")]) == 0
    assert cli.main(args + ["-o", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert {"mnist_mlp_model.c", "mnist_mlp_model.h", "onespike.c", "onespike.h", "report.json", "report.txt",
            "manifest.json", "Makefile", "memory.ld", "sections.ld", "startup.c"} <= set(names)
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
    text = (tmp_path / "a" / "report.txt").read_text()
    assert "instructions per inference" in text and "outputs equal golden: True" in text
    # the emitted folder builds on its own with its Makefile
    import subprocess
    r = subprocess.run(["make", "-s", "-C", str(tmp_path / "a")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the generated C holds no floating point and no allocation
    src = (tmp_path / "a" / "mnist_mlp_model.c").read_text() + (tmp_path / "a" / "onespike.c").read_text()
    for bad in ("float", "double", "malloc", "free("):
        assert bad not in src


def test_verify_command(capsys):
    code = cli.main(["verify", str(ROOT / "models" / "mnist-mlp.pt"), "--target", "c", "--board", "mps2-an386", "-n", "40"])
    out = capsys.readouterr().out
    assert code == 0
    assert "host (gcc, every layer's phases compared): 40/40 matched" in out
    assert "mps2-an386 under QEMU (logits and class): 40/40 matched" in out


def _one_line_error(capsys, args, *needles):
    code = cli.main(args)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_unknown_board_lists_the_known_ones(capsys, tmp_path):
    _one_line_error(capsys, ["emit", str(ROOT / "models" / "mnist-mlp.pt"), "--target", "c", "--board", "arduino-uno",
                             "-o", str(tmp_path / "o")], "unknown board 'arduino-uno'", "mps2-an386", "nucleo-f446re", "rp2040-pico")
    assert not (tmp_path / "o").exists()


def test_model_that_does_not_fit_is_refused_before_compiling(capsys, tmp_path, monkeypatch):
    def no_compiler(*a, **k):
        raise AssertionError("must refuse before compiling")

    monkeypatch.setattr(emulators.subprocess, "run", no_compiler)
    _one_line_error(capsys, ["emit", str(ROOT / "models" / "fmnist-cnn.pt"), "--target", "c", "--board", "nucleo-f446re",
                             "-o", str(tmp_path / "o")], "does not fit nucleo-f446re", "KiB flash (board has 512 KiB)",
                    "KiB RAM (board has 128 KiB)")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("tool, package", [("arm-none-eabi-gcc", "gcc-arm-none-eabi"), ("qemu-system-arm", "qemu-system-arm")])
def test_missing_tools_name_the_package(capsys, tmp_path, monkeypatch, tool, package):
    real = shutil.which
    monkeypatch.setattr(firmware.shutil, "which", lambda t, *a, **k: None if t == tool else real(t, *a, **k))
    if tool == "qemu-system-arm":
        args = ["verify", str(ROOT / "models" / "mnist-mlp.pt"), "--target", "c", "--board", "mps2-an386", "-n", "5"]
    else:
        args = ["emit", str(ROOT / "models" / "mnist-mlp.pt"), "--target", "c", "-o", str(tmp_path / "o")]
    _one_line_error(capsys, args, f"{tool} not found", package)
    assert not (tmp_path / "o").exists()


REPRO = ROOT / "tests" / "data" / "fuzz-repro"


@pytest.mark.parametrize("repro", ["c-werror-unused-decode", "c-ubsan-product-overflow"])
def test_fuzz_repros_on_the_board_equal_golden(repro, tmp_path):
    """The reproducers build for the Cortex-M4 with -Werror and equal golden under QEMU."""
    m = modelfile.load(REPRO / repro / "model.pt")
    x = np.load(REPRO / repro / "inputs.npy") if (REPRO / repro / "inputs.npy").exists() else datasets.load("mnist", "test")[0][:20]
    fw = firmware.build_firmware(m, repro, registry.mcu("mps2-an386"), tmp_path, opt="-O2")
    logits, classes = emulators.run_qemu(fw, x, m.num_classes)
    gold = golden.run(m, x, keep_phases=False)
    assert np.array_equal(logits, gold.logits) and np.array_equal(classes, gold.classes)


def test_emit_c_count_images_0_says_skipped_and_shows_progress(tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.setenv("ONESPIKE_PROGRESS", "1")     # bars on, although stderr is not a terminal here
    model = str(ROOT / "models" / "mnist-mlp.pt")
    assert cli.main(["emit", model, "--target", "c", "--count-images", "0", "-o", str(tmp_path / "a")]) == 0
    cap = capsys.readouterr()
    assert "emit c (mps2-an386)" in cap.err  # the tqdm bar (stderr)
    text = (tmp_path / "a" / "report.txt").read_text()
    assert "instruction count skipped (--count-images 0)" in text and "instructions per inference" not in text
    assert "instruction count skipped (--count-images 0)" in cap.out
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["instruction_count_skipped"] == "--count-images 0"
    assert all("instructions_per_inference" not in e for e in rep["builds"].values()) and set(rep["builds"]) == {"-O2", "-Os"}
    assert cli.main(["emit", model, "--target", "c", "--count-images", "0", "-q", "-o", str(tmp_path / "b")]) == 0
    assert "emit c" not in capsys.readouterr().err  # -q: no bar


def test_a_cross_compile_failure_is_one_line_with_its_log(tmp_path, monkeypatch, capsys):
    from codegen.c import emit as emit_c

    real = emit_c.generate

    def broken(model, name):
        files = real(model, name)
        files[f"{emit_c.c_symbol(name)}_model.c"] += b"\nstatic int unused_by_anyone;\n"
        return files

    monkeypatch.setattr(emit_c, "generate", broken)
    code = cli.main(["emit", str(ROOT / "models" / "mnist-mlp.pt"), "--target", "c", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip() and "emit c" not in l]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("codegen: error: arm-none-eabi-gcc on the generated C") and "unused_by_anyone" in lines[0]
    log = Path(lines[0].rsplit("log: ", 1)[1])
    assert log.is_file() and "unused_by_anyone" in log.read_text()
    assert not (tmp_path / "o").exists()
    kept = log.parent.parent  # the build folder kept for the log
    assert kept.name.startswith("onespike-c-")
    shutil.rmtree(kept)


def _lane_models():
    """Random models of every layer plan (strides, paddings, odd channel counts), and a dense layer whose
    one phase holds 1024 spikes of weight +-127: the Cortex-M4's phase-bucket kernel (Thumb-2 loop)
    must split it at the lane bound."""
    from randmodels import random_images, random_model
    from runtime.spec import IntModel, Layer, decode_table, encode_table, validate

    rng = np.random.default_rng(77)
    plans = [["conv2d", "maxpool", "dense"], ["conv2d", "avgpool", "conv2d", "dense"], ["dense", "dense"],
             ["conv2d", "conv2d"], ["maxpool", "conv2d", "dense", "dense"], ["conv2d", "conv2d", "conv2d"]]
    out = []
    for i, plan in enumerate(plans):
        shape = (int(rng.integers(1, 4)), int(rng.integers(5, 12)), int(rng.integers(5, 12)))
        m = random_model(rng, input_shape=shape, plan=plan, F=15 if i % 2 else None)  # F = 15: D[0] beyond int16
        out.append((f"rand{i}", m, random_images(rng, m, 12)))
    w = rng.integers(-3, 4, size=(5, 1024)).astype(np.int8)
    w[0], w[1] = 127, -127
    full = IntModel(Q=2.0, T=4, F=4, input_shape=(1, 32, 32), decode=decode_table(2.0, 4, 4), encode=encode_table(2.0, 4),
                    layers=[Layer("dense", (1, 32, 32), (5,), w, rng.integers(-8, 8, size=5).astype(np.int64), None,
                                  readout=True)])
    validate(full)
    xf = np.concatenate([np.full((2, 1, 32, 32), 255, np.uint8), random_images(rng, full, 4)])
    out.append(("lanefull", full, xf))
    return out


@pytest.mark.parametrize("opt", ["-O2", "-Os"])
def test_phase_bucket_kernel_on_the_cortex_m4_equals_golden(opt, tmp_path):
    from codegen.c import emit as emit_c

    for name, m, x in _lane_models():
        if name == "lanefull":
            assert emit_c.lane_max(m.layers[0]) == 258 < 1024
        fw = firmware.build_firmware(m, name, registry.mcu("mps2-an386"), tmp_path / name, opt=opt)
        logits, classes = emulators.run_qemu(fw, x, m.num_classes)
        gold = golden.run(m, x, keep_phases=False)
        assert np.array_equal(logits, gold.logits) and np.array_equal(classes, gold.classes), name


def test_phase_bucket_kernel_without_the_lane_bound_wraps_on_the_cortex_m4(tmp_path, monkeypatch):
    """The same one-phase model with the bound switched off (lane_max = the fan-in): the M4's 16-bit
    lanes wrap and the firmware differs from golden, so the test above can fail."""
    from codegen.c import emit as emit_c

    name, m, x = _lane_models()[-1]
    monkeypatch.setattr(emit_c, "lane_max", lambda layer: 1024)
    fw = firmware.build_firmware(m, name, registry.mcu("mps2-an386"), tmp_path, opt="-O2")
    logits, _ = emulators.run_qemu(fw, x, m.num_classes)
    gold = golden.run(m, x, keep_phases=False)
    assert not np.array_equal(logits[:2], gold.logits[:2])
