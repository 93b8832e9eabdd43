import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NUMBA_NUM_THREADS", "2")


def refused(cls, *args, match):
    """``cls(*args)`` raises ValueError matching ``match``. The half-built Amaranth component is
    collected here, with its "created but never used" warning silenced, instead of warning in some
    later test."""
    import gc
    import warnings

    import pytest
    from amaranth.hdl import UnusedElaboratable

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError, match=match) as info:
            cls(*args)
        del info
        gc.collect()


def one_line_error(code, err, *needles):
    """The CLI's error contract: exit 2, exactly one ``codegen: error: ...`` line naming every needle,
    no traceback. Returns the line."""
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("codegen: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def randomise_batchnorm(net):
    """Give every BatchNorm of ``net`` non-trivial running statistics and affine parameters (in place)."""
    import torch
    from torch import nn

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.3)
    return net


def _same_value(va, vb) -> bool:
    import numpy as np

    if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
        return va is not None and vb is not None and np.array_equal(np.asarray(va), np.asarray(vb))
    return va == vb


def same_int_model(a, b):
    """Two integer models with every table and parameter equal (exact; the metadata aside)."""
    import dataclasses

    for f in dataclasses.fields(a):
        if f.name in ("meta", "layers"):
            continue
        assert _same_value(getattr(a, f.name), getattr(b, f.name)), f.name
    assert len(a.layers) == len(b.layers)
    for la, lb in zip(a.layers, b.layers):
        for f in dataclasses.fields(la):
            assert _same_value(getattr(la, f.name), getattr(lb, f.name)), (la.name, f.name)


# Seconds each of the longest tests took on 2 cores (pytest --durations, see README.md "Tests"). The
# suite runs them first, one test at a time per worker (``--maxschedchunk 1`` in pyproject.toml), so
# that the long ones overlap instead of ending the run on one worker; the figures only order the tests.
LONG_TESTS = {
    "test_board_build.py::test_bitstream_mnist_mlp_icebreaker": 55,
    "test_board_build.py::test_bitstream_mnist_mlp_icebreaker_pll_18mhz": 50,
    "test_deploy.py::test_mnist_cnn_100_images_match": 30,
    "test_sweep.py::test_two_point_sweep_on_two_workers": 30,
    "test_board_build.py::test_bitstream_mnist_mlp_ulx3s_pll_40mhz": 90,
    "test_rtl_cocotb.py::test_shipped_cnn[verilator-fmnist-cnn]": 100,
    "test_rtl_cocotb.py::test_shipped_cnn[verilator-mnist-cnn]": 40,
    "test_c_host.py::test_shipped_models_full_test_set_parity[fmnist-cnn]": 64,
    "test_board_sim.py::test_mnist_mlp_icebreaker_verilator_bad_frames_then_deploy": 45,
    "test_board_sim.py::test_random_model_icarus_corrupted_frame_then_deploy_sim_cli": 15,
    "test_models.py::test_shipped_model_meets_target[fmnist-cnn]": 35,
    "test_rtl_cocotb.py::test_mnist_mlp[verilator]": 34,
    "test_rtl_cocotb.py::test_shipped_cnn[icarus-mnist-cnn]": 30,
    "test_synth.py::test_small_conv_model_fits[ulx3s]": 31,
    "test_fpga_emit.py::test_mnist_cnn_emit": 25,
    "test_rtl_cocotb.py::test_mnist_mlp_spram_store[verilator]": 21,
    "test_synth.py::test_small_conv_model_fits[icebreaker]": 20,
}


def pytest_collection_modifyitems(session, config, items):
    def cost(item):
        return next((s for name, s in LONG_TESTS.items() if item.nodeid.endswith(name)), 0)

    items.sort(key=cost, reverse=True)   # stable: the others keep their order
    # xdist hands each of the 2 workers two tests to start with (items 0-1 and 2-3): pair the longest
    # with the fourth and the second with the third
    if len(items) >= 4 and cost(items[3]):
        items[:4] = [items[0], items[3], items[1], items[2]]
