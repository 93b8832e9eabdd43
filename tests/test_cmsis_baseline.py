"""BASELINE: the shipped MLP, MNIST CNN and RGB detector through CMSIS-NN on a Cortex-M4 (Unicorn) equal
their numpy reading exactly (dense, conv and max-pool kernels; the detector's NCHW -> NHWC input step
and its readout map), and a corrupted expectation is caught."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from codegen.c.baseline import cmsis

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc"),
    pytest.mark.skipif(cmsis.missing() is not None, reason=cmsis.missing() or ""),
]


def test_cmsis_nn_equals_its_reference_on_every_shipped_kind(tmp_path):
    """One test, so that one worker builds libcmsisnn.a once (about 10 s) for all three networks."""
    from boards import registry

    lib = cmsis.build_library(registry.mcu("mps2-an386").cpu_flags, "-O2", tmp_path / "lib")
    for name, n_img in (("mnist-mlp", 8), ("mnist-cnn", 2)):
        _classifier(tmp_path / name, lib, name, n_img)
    _detector(tmp_path / "det", lib)


def _classifier(tmp_path, lib, name, n_img):
    """A classifier through CMSIS-NN == its numpy reading on n_img test images."""
    from boards import registry
    from codegen.c import emulators, firmware
    from codegen.frontend import ann, convert, datasets

    net, shape, _ = ann.load(ROOT / "models" / f"{name}.ann.pt")
    xtr, _ = datasets.load("mnist", "train")
    xte, yte = datasets.load("mnist", "test")
    q = cmsis.quantise(convert.lower(net, shape), xtr[:2000])
    ref = cmsis.forward(q, xte[:1000])
    assert (ref.argmax(1) == yte[:1000]).mean() > 0.97  # the int8 network is a real baseline
    b = registry.mcu("mps2-an386")
    fw = firmware.build_elf(cmsis.generate(q, "net_cmsis", 784), ["net_cmsis.c"], "net_cmsis_infer", 784, 10, b,
                            tmp_path / "fw", "-O2", "net_cmsis", extra_defs=["-DOS_INPUT_BUF=net_cmsis_input"],
                            include_dirs=[cmsis.vendor() / "Include"], libs=[lib])  # the image converted in place
    run = emulators.run_unicorn(fw, xte[:n_img], 10)
    assert np.array_equal(run.logits, ref[:n_img]) and np.array_equal(run.classes, ref[:n_img].argmax(1))
    bad = ref[:n_img].copy()
    bad[n_img - 1, 7] += 1
    assert not np.array_equal(run.logits, bad)  # the comparison sees a one-unit change in one output
    assert all(c >= i for c, i in zip(run.cycles, run.instructions)) and min(run.instructions) > 100_000


def _detector(tmp_path, lib):
    """The RGB detector: the image read into CMSIS-NN's activation buffer, transposed to NHWC int8 in
    the C, its readout map (C, H, W) equal to the numpy reading; the dequantised map decodes to a real
    mAP@0.5."""
    from boards import registry
    from codegen.c import emulators, firmware
    from codegen.detection import evaluate
    from codegen.frontend import ann, convert, voc
    from runtime import modelfile

    m = modelfile.load(ROOT / "models" / "bccd-det.pt")
    net, shape, _ = ann.load(ROOT / "models" / "bccd-det.ann.pt")
    c, h, w = shape
    tr = voc.load("bccd", "train", (w, h), c, classes=list(m.head.classes))
    te = voc.load("bccd", "test", (w, h), c, classes=list(m.head.classes))
    q = cmsis.quantise(convert.lower(net, shape), tr.images)
    ref = cmsis.forward(q, te.images)
    assert ref.shape == (len(te.images), m.num_classes) and m.num_classes == int(np.prod(q[-1].out_shape))
    maps = cmsis.dequantise(q, ref)
    assert maps.shape == (len(te.images),) + tuple(m.layers[-1].out_shape)
    assert evaluate.score(evaluate.float_detections(maps, m), te)["map50"] > 0.75  # a real baseline
    sym, n = "det_cmsis", c * h * w
    src = cmsis.generate(q, sym, n)
    assert f"uint8_t *{sym}_input(void)".encode() in src[f"{sym}.c"]
    fw = firmware.build_elf(src, [f"{sym}.c"], f"{sym}_infer", n, m.num_classes, registry.mcu("mps2-an386"),
                            tmp_path / "fw", "-O2", sym, extra_defs=[f"-DOS_INPUT_BUF={sym}_input"],
                            include_dirs=[cmsis.vendor() / "Include"], libs=[lib])
    assert fw.sizes["ram_bytes"] < 2 * n + 16_000  # the image lives in an activation buffer, not a copy of its own
    run = emulators.run_unicorn(fw, te.images[:1], m.num_classes)
    assert np.array_equal(run.logits, ref[:1]) and np.array_equal(run.classes, ref[:1].argmax(1))
    bad = ref[:1].copy()
    bad[0, m.num_classes - 1] += 1  # the last box channel of the last grid cell
    assert not np.array_equal(run.logits, bad)
    assert min(run.instructions) > 1_000_000
