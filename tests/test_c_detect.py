"""Detectors on the C target: the generated decode (os_detect) equals the golden model's detections exactly,
on the host (with sanitizers), under QEMU and under Unicorn; a wrong expectation is caught and named."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from codegen.c import emit as emit_c
from codegen.c import host as c_host
from randmodels import random_detector, random_images
from runtime import golden
from runtime.spec import DetectHead, decode_detections, validate
from spec_reference import decode_reference

ROOT = Path(__file__).resolve().parent.parent
N_IMAGES = 50
needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                               reason="needs gcc-arm-none-eabi and qemu-system-arm (scripts/setup.sh installs them)")


def _detector(seed=3, input_shape=(2, 32, 40), nms=50, max_detections=256, classes=("car", "person", "dog")):
    """A random detector (8x10 grid for the default input) whose images produce many detections:
    a very low score threshold, so nearly every same-class 3x3 peak is a candidate."""
    m = random_detector(seed, n_classes=len(classes), input_shape=input_shape)
    h = m.head
    m.head = DetectHead(list(classes), h.stride, -(1 << 20), h.box_mult, h.box_shift, nms, max_detections)
    validate(m)
    return m


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("c_detect")


@pytest.fixture(scope="module")
def det():
    """One detector, its images, the golden result and ONE sanitizer build of the host runner (shared)."""
    m = _detector()
    x = random_images(np.random.default_rng(7), m, N_IMAGES)
    return m, x, golden.run(m, x)


@pytest.fixture(scope="module")
def host_run(det, work):
    m, x, _ = det
    exe = c_host.build_host(m, "det", work, sanitize=True)
    return exe, c_host.run_host(m, exe, x, trace=True)


def test_generated_api_of_a_detector():
    m = _detector(classes=("car", 'a"b*/??=', "caf\u00e9"))
    files = emit_c.generate(m, "det")
    h, c = files["det_model.h"].decode(), files["det_model.c"].decode()
    for s in ("#define DET_MAX_DETECTIONS 256", "#define DET_N_CLASSES 3", "#define DET_GRID_H 8", "#define DET_GRID_W 10",
              "int det_detect(const uint8_t *pixels, os_detection_t *dets, int max);",
              "int det_detect_logits(const int32_t *logits, os_detection_t *dets, int max);",
              "extern const char *const det_class_names[DET_N_CLASSES];"):
        assert s in h, s
    # class names are escaped: no quote, comment end, trigraph or non-ASCII byte reaches the C
    assert '"car",' in c and '"a\\042b\\052\\057\\077\\077=",' in c and '"caf\\303\\251"' in c
    assert "static os_cand_t det_cand[80];" in c and "static const os_head_t det_head" in c
    mem = emit_c.plan_memory(m)
    assert mem.candidates == 80 and mem.detect_ram == 16 * 80 + 4 * m.num_classes and mem.max_detections == 256
    # a classifier's generated model carries none of it
    m.task, m.head = "classify", None
    plain = emit_c.generate(m, "det")
    assert b"detect" not in plain["det_model.c"] + plain["det_model.h"]
    assert emit_c.plan_memory(m).ram_buffers == mem.ram_buffers - mem.detect_ram


def test_host_parity_with_sanitizers_many_detections(det, host_run):
    m, x, gold = det
    _, got = host_run
    matched, first = c_host.compare(m, gold, got)
    assert first is None, str(first)
    assert matched == N_IMAGES
    total = sum(len(d) for d in gold.detections)
    assert total > 500 and min(len(d) for d in gold.detections) > 0  # the decode really produces detections
    assert all(np.array_equal(a, b) for a, b in zip(got.detections, gold.detections))
    assert len({int(r[0]) for d in gold.detections for r in d}) == 3
    # NMS had work: without suppression the same maps give more detections
    shape = m.layers[-1].out_shape
    no_nms = DetectHead(m.head.classes, m.head.stride, m.head.score_threshold, m.head.box_mult, m.head.box_shift, 100, 256)
    assert sum(len(decode_detections(l.reshape(shape), no_nms, m.input_shape[1:])) for l in gold.logits) > total


def test_verify_host_reuses_the_build_and_matches(det, host_run, work):
    m, x, _ = det
    matched, n, first = c_host.verify_host(m, "det", x[:10], work, trace=True, sanitize=True)
    assert first is None and matched == n == 10


def _gold_copy(gold):
    import copy

    g = copy.copy(gold)
    g.detections = [d.copy() for d in gold.detections]
    return g


def test_a_corrupted_expectation_is_caught_and_named(det, host_run):
    m, x, gold = det
    _, got = host_run
    i = next(k for k, d in enumerate(gold.detections) if len(d) >= 3 and k >= 3)
    # +1 on a box coordinate (x1) of detection 2 of image i
    bad = _gold_copy(gold)
    bad.detections[i][2, 3] += 1
    matched, first = c_host.compare(m, bad, got)
    exp, act = tuple(int(v) for v in bad.detections[i][2]), tuple(int(v) for v in got.detections[i][2])
    assert matched == N_IMAGES - 1
    assert str(first) == f"first mismatch: image {i}: detection 2 differs: expected {exp}, got {act}"
    # one row dropped: a count mismatch naming the extra detection
    bad = _gold_copy(gold)
    n = len(bad.detections[i])
    bad.detections[i] = bad.detections[i][:-1]
    matched, first = c_host.compare(m, bad, got)
    assert matched == N_IMAGES - 1
    assert str(first).startswith(f"first mismatch: image {i}: expected {n - 1} detections, got {n}: extra detection {n - 1}")
    # a score off by one (int64 field) and a missing row on the C side
    bad = _gold_copy(gold)
    bad.detections[i][0, 5] -= 1
    assert "detection 0 differs" in str(c_host.compare(m, bad, got)[1])
    short = c_host.HostRun(got.logits, got.classes, got.traces, [d[:-1] if k == i else d for k, d in enumerate(got.detections)])
    first = c_host.compare(m, gold, short)[1]
    assert f"image {i}: expected {n} detections, got {n - 1}: detection {n - 1} missing" in str(first)


DECODE_HARNESS = r"""
#include <stdio.h>
#include "onespike.h"
static int32_t logits[1 << 14];
static os_cand_t cand[1 << 10];
static os_detection_t dets[256];
int main(void)
{
    int64_t p[13];
    while (fread(p, sizeof p, 1, stdin) == 1) {
        os_head_t h;
        h.n_classes = (uint16_t)p[0], h.max_detections = (uint16_t)p[1], h.box_shift = (uint8_t)p[2];
        h.nms_iou_percent = (uint8_t)p[3], h.grid_h = (uint32_t)p[4], h.grid_w = (uint32_t)p[5];
        h.stride = (uint32_t)p[6], h.in_h = (uint32_t)p[7], h.in_w = (uint32_t)p[8];
        h.box_mult = (int32_t)p[9], h.score_threshold = p[10], h.peak = (uint8_t)p[12];
        const size_t n = (size_t)(1 + h.n_classes + 4) * h.grid_h * h.grid_w;
        if (fread(logits, sizeof(int32_t), n, stdin) != n)
            return 2;
        const int k = os_detect(&h, logits, cand, dets, (int)p[11]);
        fwrite(&k, sizeof k, 1, stdout);
        for (int i = 0; i < k; i++) {
            const int64_t row[6] = {dets[i].cls, dets[i].x0, dets[i].y0, dets[i].x1, dets[i].y1, dets[i].score};
            fwrite(row, sizeof row, 1, stdout);
        }
    }
    return 0;
}
"""


def test_decode_kernel_at_the_extremes_under_sanitizers(work):
    """os_detect alone on random maps the network rarely produces: int32 extremes, box products near 2^62,
    shifts 1..62, thresholds +-2^32, many ties, inputs up to 1024 pixels, a caller max below the head's:
    equal to runtime.spec.decode_detections and to the plain-Python reading, with ASan + UBSan."""
    src = work / "decode_harness"
    src.mkdir(exist_ok=True)
    for k in emit_c.KERNEL_FILES:
        shutil.copy(emit_c.C_DIR / k, src / k)
    (src / "harness.c").write_text(DECODE_HARNESS)
    exe = src / "harness"
    cmd = ["gcc"] + c_host.WARN_FLAGS + ["-O1"] + c_host.SANITIZE_FLAGS + ["-I", str(src), str(src / "harness.c"),
                                                                             str(src / "onespike.c"), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rng = np.random.default_rng(11)
    cases, buf = [], bytearray()
    for c in range(240):
        K, GH, GW = int(rng.integers(1, 5)), int(rng.integers(1, 8)), int(rng.integers(1, 8))
        shape = (1 + K + 4, GH, GW)
        mode = c % 4
        if mode == 0:
            L = rng.integers(-2**31, 2**31, size=shape)
        elif mode == 1:
            L = rng.integers(-3, 4, size=shape)  # ties everywhere
        elif mode == 2:
            L = rng.choice([-2**31, 2**31 - 1, 0, -1, 1], size=shape)
        else:
            L = rng.integers(-2000, 2000, size=shape)
            L[1 + K:] = rng.integers(-2**31, 2**31, size=(4, GH, GW))
        hd = DetectHead([f"c{j}" for j in range(K)], int(rng.integers(1, 40)),
                        int(rng.choice([-(2**32), 2**32, 0, int(rng.integers(-1000, 1000))])),
                        int(rng.choice([1, 2**31 - 1, int(rng.integers(1, 2**31))])), int(rng.integers(1, 63)),
                        int(rng.integers(0, 101)), int(rng.integers(1, 257)), peak=int(c % 5 != 4))
        H, W = int(rng.integers(1, 1025)), int(rng.integers(1, 1025))
        cap = int(rng.integers(0, hd.max_detections + 2)) if c % 3 == 0 else 256
        buf += np.array([K, hd.max_detections, hd.box_shift, hd.nms_iou_percent, GH, GW, hd.stride, H, W, hd.box_mult,
                         hd.score_threshold, cap, hd.peak], dtype="<i8").tobytes() + L.astype("<i4").tobytes()
        cases.append((L, hd, H, W, cap))
    r = subprocess.run([str(exe)], input=bytes(buf), capture_output=True)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    out, off, total = r.stdout, 0, 0
    for i, (L, hd, H, W, cap) in enumerate(cases):
        k = int(np.frombuffer(out, "<i4", 1, off)[0])
        got = np.frombuffer(out, "<i8", 6 * k, off + 4).reshape(k, 6)
        off += 4 + 48 * k
        exp = decode_detections(L, hd, (H, W))
        assert np.array_equal(exp, np.array(decode_reference(L, hd, H, W), dtype=np.int64).reshape(-1, 6))
        assert np.array_equal(got, exp[:cap]), (i, hd, got, exp[:cap])
        total += k
    assert off == len(out) and total > 500


# --- the board: QEMU, Unicorn, the fit check, the report ---


@pytest.fixture(scope="module")
def firmware_det(det, work):
    from boards import registry
    from codegen.c import firmware

    m, _, _ = det
    return firmware.build_firmware(m, "det", registry.mcu("mps2-an386"), work / "fw", opt="-O2")


@needs_arm
def test_qemu_mps2_an386_parity_and_a_corrupted_expectation(det, firmware_det):
    from codegen.c import emulators

    m, x, gold = det
    g = golden.run(m, x[:6], keep_phases=False)
    logits, classes, dets = emulators.run_qemu_detections(firmware_det, x[:6], m.num_classes)
    assert emulators.compare_outputs(g, logits, classes, dets) == (6, None)
    assert sum(len(d) for d in dets) > 50
    bad = _gold_copy(g)
    bad.detections[4][1, 1] += 1
    matched, line = emulators.compare_outputs(bad, logits, classes, dets)
    assert matched == 5 and line.startswith("first mismatch: image 4: detection 1 differs: expected (")
    assert emulators.compare_qemu(m, firmware_det, x[:2]) == (2, None)


@needs_arm
def test_unicorn_counts_inference_and_decode(det, firmware_det, work):
    from boards import registry
    from codegen.c import emulators, firmware

    m, x, _ = det
    run = emulators.run_unicorn(firmware_det, x[:2], m.num_classes)
    g = golden.run(m, x[:2], keep_phases=False)
    assert emulators.compare_outputs(g, run.logits, run.classes, run.detections) == (2, None)
    # the same model built as a classifier (inference only) counts fewer instructions on the same images
    b = registry.mcu("mps2-an386")
    plain = firmware.build_elf(emit_c.generate(m, "det"), ["det_model.c", "onespike.c"], "det_infer",
                               int(np.prod(m.input_shape)), m.num_classes, b, work / "fw-plain", "-O2", "det")
    inf = emulators.run_unicorn(plain, x[:2], m.num_classes)
    decode = [a - b for a, b in zip(run.instructions, inf.instructions)]
    assert all(d > 1000 for d in decode), (run.instructions, inf.instructions)
    assert firmware_det.sizes["ram_bytes"] > plain.sizes["ram_bytes"] + 16 * 80


def test_a_detector_that_does_not_fit_is_refused_before_compiling(tmp_path, monkeypatch, capsys):
    """Its network fits nucleo-f446re's 128 KiB; with the decode's buffers (a 40x48 grid) it does not."""
    from boards import registry
    from codegen import cli
    from codegen.c import firmware
    from conftest import one_line_error
    from runtime import modelfile

    m = _detector(seed=0, input_shape=(1, 160, 192), max_detections=16)
    mem = emit_c.plan_memory(m)
    b = registry.mcu("nucleo-f446re")
    ram = firmware.firmware_ram(m, mem)
    assert ram > b.ram_bytes > ram - mem.detect_ram - 16 * 60
    path = tmp_path / "big-det.pt"
    modelfile.save(m, path)

    def no_compiler(*a, **k):
        raise AssertionError("must refuse before compiling")

    monkeypatch.setattr(subprocess, "run", no_compiler)
    code = cli.main(["emit", str(path), "--target", "c", "--board", "nucleo-f446re", "-o", str(tmp_path / "o")])
    one_line_error(code, capsys.readouterr().err, "does not fit nucleo-f446re", "KiB RAM (board has 128 KiB)")
    assert not (tmp_path / "o").exists()


BCCD = Path(__import__("codegen.frontend.datasets", fromlist=["data_root"]).data_root()) / "bccd"


@needs_arm
@pytest.mark.skipif(not BCCD.is_dir(), reason="needs the bccd dataset")
def test_emit_report_counts_inference_and_decode(tmp_path):
    """codegen emit --target c for a detector: flash, RAM, stack and instructions per frame
    (inference + decode) on bccd test images whose detections equal golden."""
    from codegen.c import report

    m = _detector(seed=5, input_shape=(3, 32, 40), classes=("RBC", "WBC", "Platelets"))
    m.meta = {"dataset": "bccd"}
    rep = report.emit_with_report(m, "0" * 64, "det", tmp_path / "o", "nucleo-f446re", n_count=2)
    for e in rep["builds"].values():
        ins = e["instructions_per_inference"]
        assert ins["outputs_equal_golden"] and ins["includes_decode"] and ins["images"] == 2
        assert e["sizes"]["ram_bytes"] > 0 and e["stack_peak_bytes_measured"] <= e["sizes"]["stack_bytes_static"]
    text = (tmp_path / "o" / "report.txt").read_text()
    assert "instructions per frame (inference + decode)" in text and "outputs equal golden: True" in text
    assert rep["estimate_before_build"]["detect_ram_bytes"] == emit_c.plan_memory(m).detect_ram
    assert "-DOS_DETECT=det_detect" in (tmp_path / "o" / "Makefile").read_text()
