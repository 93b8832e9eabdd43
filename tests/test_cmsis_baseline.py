"""BASELINE: the shipped MLP and MNIST CNN through CMSIS-NN on a Cortex-M4 (Unicorn) equal their numpy
reading exactly (dense, conv and max-pool kernels), and a corrupted expectation is caught."""
import shutil

import numpy as np
import pytest

from codegen.c.baseline import cmsis

pytestmark = [
    pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc"),
    pytest.mark.skipif(cmsis.missing() is not None, reason=cmsis.missing() or ""),
]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    from boards import registry

    return cmsis.build_library(registry.mcu("mps2-an386").cpu_flags, "-O2", tmp_path_factory.mktemp("cmsis"))


@pytest.mark.parametrize("name,n_img", [("mnist-mlp", 8), ("mnist-cnn", 2)])
def test_cmsis_nn_equals_its_reference(tmp_path, lib, name, n_img):
    from pathlib import Path

    from boards import registry
    from codegen.c import emulators, firmware
    from codegen.frontend import ann, convert, datasets

    root = Path(__file__).resolve().parents[1]
    net, shape, _ = ann.load(root / "models" / f"{name}.ann.pt")
    xtr, _ = datasets.load("mnist", "train")
    xte, yte = datasets.load("mnist", "test")
    q = cmsis.quantise(convert.lower(net, shape), xtr[:2000])
    ref = cmsis.forward(q, xte[:1000])
    assert (ref.argmax(1) == yte[:1000]).mean() > 0.97  # the int8 network is a real baseline
    b = registry.mcu("mps2-an386")
    fw = firmware.build_elf(cmsis.generate(q, "net_cmsis", 784), ["net_cmsis.c"], "net_cmsis_infer", 784, 10, b,
                            tmp_path / "fw", "-O2", "net_cmsis", include_dirs=[cmsis.vendor() / "Include"], libs=[lib])
    run = emulators.run_unicorn(fw, xte[:n_img], 10)
    assert np.array_equal(run.logits, ref[:n_img]) and np.array_equal(run.classes, ref[:n_img].argmax(1))
    bad = ref[:n_img].copy()
    bad[n_img - 1, 7] += 1
    assert not np.array_equal(run.logits, bad)  # the comparison sees a one-unit change in one output
    assert all(c >= i for c, i in zip(run.cycles, run.instructions)) and min(run.instructions) > 100_000
