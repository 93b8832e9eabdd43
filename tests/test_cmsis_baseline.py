"""BASELINE: the shipped MLP through CMSIS-NN on a Cortex-M4 (Unicorn) equals its numpy reading exactly,
and a corrupted expectation is caught."""
import shutil

import numpy as np
import pytest

from codegen.c.baseline import cmsis

pytestmark = [
    pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc"),
    pytest.mark.skipif(cmsis.missing() is not None, reason=cmsis.missing() or ""),
]


def test_cmsis_nn_mlp_equals_its_reference(tmp_path):
    from pathlib import Path

    from boards import registry
    from codegen.c import emulators, firmware
    from codegen.frontend import ann, convert, datasets

    root = Path(__file__).resolve().parents[1]
    net, shape, _ = ann.load(root / "models" / "mnist-mlp.ann.pt")
    xtr, _ = datasets.load("mnist", "train")
    xte, yte = datasets.load("mnist", "test")
    q = cmsis.quantise(convert.lower(net, shape), xtr[:2000])
    ref = cmsis.forward(q, xte)
    assert (ref.argmax(1) == yte).mean() > 0.98  # the int8 network is a real baseline
    b = registry.mcu("mps2-an386")
    lib = cmsis.build_library(b.cpu_flags, "-O2", tmp_path)
    fw = firmware.build_elf(cmsis.generate(q, "mlp_cmsis", 784), ["mlp_cmsis.c"], "mlp_cmsis_infer", 784, 10, b,
                            tmp_path / "fw", "-O2", "mlp_cmsis", include_dirs=[cmsis.vendor() / "Include"], libs=[lib])
    x = xte[:8]
    run = emulators.run_unicorn(fw, x, 10)
    assert np.array_equal(run.logits, ref[:8]) and np.array_equal(run.classes, ref[:8].argmax(1))
    bad = ref[:8].copy()
    bad[3, 7] += 1
    assert not np.array_equal(run.logits, bad)  # the comparison sees a one-unit change in one output
    assert all(c >= i for c, i in zip(run.cycles, run.instructions)) and min(run.instructions) > 100_000
