"""Generated C on the host equals the golden model exactly: logits, class and every layer's phases."""
from pathlib import Path

import numpy as np
import pytest

from codegen.c import host as c_host
from codegen.frontend import datasets
from randmodels import random_images, random_model
from runtime import golden, modelfile

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {"mnist-mlp": "mnist", "mnist-cnn": "mnist", "fmnist-cnn": "fashion-mnist"}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("c_host")


def _wide_random_model(rng):
    """Random models with strides, paddings and kernels the C ring buffer must handle."""
    plans = [["conv2d", "maxpool", "dense"], ["conv2d", "avgpool", "conv2d", "dense"], ["dense", "dense"],
             ["conv2d", "conv2d"], ["maxpool", "conv2d", "dense", "dense"], ["conv2d", "conv2d", "conv2d"]]
    plan = plans[int(rng.integers(len(plans)))]
    return random_model(rng, input_shape=(int(rng.integers(1, 4)), int(rng.integers(5, 12)), int(rng.integers(5, 12))), plan=plan)


# Both kernels: the direct one (the host's and Cortex-M0+'s default) and the phase-bucket one
# (Cortex-M4's; here its portable C reading of SXTAB16, -DOS_LANES=1).
KERNELS = pytest.mark.parametrize("lanes", [False, True], ids=["direct", "lanes"])


@pytest.mark.parametrize("seed,lanes", [(s, False) for s in range(24)] + [(s, True) for s in range(12)],
                         ids=[f"{s}-direct" for s in range(24)] + [f"{s}-lanes" for s in range(12)])
def test_c_equals_golden_on_random_models(seed, lanes, work):
    rng = np.random.default_rng(1000 + seed)
    model = _wide_random_model(rng)
    images = random_images(rng, model, 16)
    matched, n, first = c_host.verify_host(model, f"rand{seed}", images, work, trace=True, lanes=lanes)
    assert first is None, str(first)
    assert matched == n == 16


@pytest.mark.parametrize("seed,lanes", [(s, False) for s in range(6)] + [(s, True) for s in range(3)],
                         ids=[f"{s}-direct" for s in range(6)] + [f"{s}-lanes" for s in range(3)])
def test_sanitizer_build_is_clean(seed, lanes, work):
    rng = np.random.default_rng(2000 + seed)
    model = _wide_random_model(rng)
    images = random_images(rng, model, 8)
    matched, n, first = c_host.verify_host(model, f"san{seed}", images, work, trace=True, sanitize=True, lanes=lanes)
    assert first is None and matched == n


def test_corrupted_c_is_caught_and_located(work):
    rng = np.random.default_rng(5)
    model = random_model(rng, plan=["dense", "dense", "dense"], T=6)
    images = random_images(rng, model, 32)
    exe = c_host.build_host(model, "corrupt", work)
    gold = golden.run(model, images)
    # change one hidden weight in the golden model only: the C binary keeps the original
    model.layers[0].weight[:, :] = np.clip(model.layers[0].weight.astype(np.int16) + 7, -127, 127).astype(np.int8)
    model._golden_cache = None
    gold_bad = golden.run(model, images)
    got = c_host.run_host(model, exe, images, trace=True)
    assert c_host.compare(model, gold, got)[0] == 32
    matched, first = c_host.compare(model, gold_bad, got)
    assert matched < 32 and first is not None
    assert first.layer in ("0:dense", "1:dense") or "readout" in first.layer


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_models_full_test_set_parity(name, work):
    """Both kernels against the same golden batches: logits, class and every phase of all 10,000 test
    images (the bucket kernel's portable reading: the first 2,000 of the Fashion-MNIST CNN's)."""
    m = modelfile.load(ROOT / "models" / f"{name}.pt")
    x, _ = datasets.load(SHIPPED[name], "test")
    exes = {lanes: c_host.build_host(m, name, work, lanes=lanes) for lanes in (False, True)}
    matched = {False: 0, True: 0}
    for s in range(0, len(x), 2000):
        gold = golden.run(m, x[s:s + 2000], keep_phases=True)
        for lanes, exe in exes.items():
            if lanes and name == "fmnist-cnn" and s >= 2000:
                continue  # suite time: the bucket kernel's full set runs under QEMU in scripts/bench_c.py --full-qemu
            ok, first = c_host.compare(m, gold, c_host.run_host(m, exe, x[s:s + 2000], trace=True))
            assert first is None, f"{'lanes' if lanes else 'direct'} kernel, batch at {s}: {first}"
            matched[lanes] += ok
    assert matched[False] == len(x) == 10000
    assert matched[True] == (2000 if name == "fmnist-cnn" else 10000)


@KERNELS
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_models_sanitizer_subset(name, lanes, work):
    m = modelfile.load(ROOT / "models" / f"{name}.pt")
    x, _ = datasets.load(SHIPPED[name], "test")
    matched, n, first = c_host.verify_host(m, name, x[:50], work, trace=True, sanitize=True, lanes=lanes)
    assert first is None and matched == n


# --- fuzz reproducers (tests/data/fuzz-repro, see its README.md) and the C target's limits ---

REPRO = ROOT / "tests" / "data" / "fuzz-repro"


def test_fuzz_repro_no_firing_layer_compiles_with_werror(work):
    """A lone dense readout reads only the input code: the hidden decode table must not be emitted
    (it was, and -Wunused-const-variable under -Werror refused it)."""
    from codegen.c import emit as emit_c

    m = modelfile.load(REPRO / "c-werror-unused-decode" / "model.pt")
    assert not any(l.fires for l in m.layers)
    assert "-Werror" in c_host.WARN_FLAGS
    src = emit_c.generate(m, "werror")["werror_model.c"].decode()
    assert "werror_decode[" not in src and "werror_input_decode[" in src
    x, _ = datasets.load("mnist", "test")
    images = np.concatenate([x[:40], random_images(np.random.default_rng(9), m, 10)])
    matched, n, first = c_host.verify_host(m, "werror", images, work, trace=True)
    assert first is None and matched == n == 50


def test_fuzz_repro_product_beyond_int32_is_exact_under_sanitizers(work):
    """F = 25, W = 127, biases near -2^31: single products W * D[f] exceed int32 although every
    accumulator fits; the kernel's modulo-2^32 sum must equal golden exactly with no UBSan report."""
    d = REPRO / "c-ubsan-product-overflow"
    m = modelfile.load(d / "model.pt")
    x = np.load(d / "inputs.npy")
    # the reproducer does reach a product beyond int32 on these inputs (else this test proves nothing)
    l0 = m.layers[0]
    spiking = m.encode[x.reshape(len(x), -1)] != m.input_T
    dmax = [int(m.input_decode[m.encode[img]][s].max(initial=0)) for img, s in zip(x.reshape(len(x), -1), spiking)]
    assert int(np.abs(l0.weight.astype(np.int64)).max()) * max(dmax) > 2**31 - 1
    assert min(int(b) for b in l0.bias) == -2**31
    gold = golden.run(m, x)
    for sanitize in (False, True):
        exe = c_host.build_host(m, "ubprod", work, sanitize=sanitize)
        got = c_host.run_host(m, exe, x, trace=True)
        matched, first = c_host.compare(m, gold, got)
        assert first is None and matched == len(x), str(first)
        assert np.array_equal(got.logits, gold.logits)


def _limit_model(input_shape, plan, T=4, F=4, Q=2.0, seed=0):
    """A valid model of the given layer plan with small random weights (dense: ('dense', out);
    conv2d: ('conv2d', out, k, s, p); pools: (kind, k, s, p))."""
    from runtime.spec import IntModel, Layer, conv_out, decode_table, encode_table, validate

    rng = np.random.default_rng(seed)
    dec = decode_table(Q, T, F)
    layers, shape = [], tuple(input_shape)
    for i, spec in enumerate(plan):
        kind, readout = spec[0], i == len(plan) - 1
        if kind in ("dense", "conv2d"):
            if kind == "dense":
                o, k, s, p = spec[1], 1, 1, 0
                w = rng.integers(-2, 3, size=(o, int(np.prod(shape)))).astype(np.int8)
                out = (o,)
            else:
                _, o, k, s, p = spec
                w = rng.integers(-2, 3, size=(o, shape[0], k, k)).astype(np.int8)
                out = (o, conv_out(shape[1], k, s, p), conv_out(shape[2], k, s, p))
            th = None if readout else np.tile(np.arange(T, 0, -1) * int(dec[0]), (o, 1)).astype(np.int64)
            layers.append(Layer(kind, shape, out, w, rng.integers(-8, 8, size=o).astype(np.int64), th, k, s, p, readout))
        else:
            _, k, s, p = spec
            out = (shape[0], conv_out(shape[1], k, s, p), conv_out(shape[2], k, s, p))
            th = np.tile(np.arange(T, 0, -1) * int(dec[0]), (shape[0], 1)).astype(np.int64) if kind == "avgpool" else None
            layers.append(Layer(kind, shape, out, theta=th, kernel=k, stride=s, padding=p))
        shape = out
    m = IntModel(Q=Q, T=T, F=F, input_shape=tuple(input_shape), decode=dec, encode=encode_table(Q, T), layers=layers)
    validate(m)
    return m


@KERNELS
@pytest.mark.parametrize("case", ["side-1024", "fan-in-65536", "logits-65540"])
def test_c_target_works_at_its_size_limits(case, lanes, work):
    """Sides of 1024, a fan-in of exactly 65536 (uint16 event offsets 0..65535) and more than
    65535 outputs (sizes are uint32) compile with -Werror and equal golden."""
    shape, plan = {"side-1024": ((1, 1024, 1024), [("maxpool", 32, 32, 16), ("conv2d", 3, 3, 1, 1), ("avgpool", 2, 2, 1),
                                                    ("dense", 5)]),
                   "fan-in-65536": ((1, 256, 256), [("dense", 2)]),
                   "logits-65540": ((1, 1, 1), [("dense", 65540)])}[case]
    m = _limit_model(shape, plan)
    images = random_images(np.random.default_rng(3), m, 3)
    matched, n, first = c_host.verify_host(m, f"lim_{case.replace('-', '_')}", images, work, trace=True, lanes=lanes)
    assert first is None and matched == n == 3, str(first)


def _full_lane_model():
    """A dense readout of 1024 inputs whose channels 0 and 1 hold only +127 and -127: 1024 spikes of one
    phase sum to +-130048 in a channel, far beyond a 16-bit lane."""
    w = np.random.default_rng(4).integers(-3, 4, size=(4, 1024)).astype(np.int8)
    w[0], w[1] = 127, -127
    return _limit_model((1, 32, 32), [("dense", 4)], T=4, F=4), w


def test_lane_bound_is_the_largest_count_that_fits_int16():
    from codegen.c import emit as emit_c

    m, w = _full_lane_model()
    m.layers[0].weight = w
    assert emit_c.lane_max(m.layers[0]) == 258  # 258 * 127 = 32766; 259 * 127 > 32767
    w2 = w.copy()
    w2[0], w2[1] = 100, -100
    w2[1, :40] = -127  # the 40 most negative weights come first: 40 * 127 + 287 * 100 = 33780 > 32768
    m.layers[0].weight = w2
    assert emit_c.lane_max(m.layers[0]) == 40 + (32768 - 40 * 127) // 100  # 316
    m.layers[0].weight = np.ones((2, 1024), np.int8)
    assert emit_c.lane_max(m.layers[0]) == 1024  # no lane can overflow: the fan-in


def test_lanes_kernel_empties_a_lane_before_it_overflows(work, monkeypatch):
    """Every pixel white: one phase bucket of 1024 events, emptied every 258; with the bound
    disabled (lane_max = the fan-in) the same C wraps its lanes and differs from golden."""
    from codegen.c import emit as emit_c
    from runtime.spec import validate

    m, w = _full_lane_model()
    m.layers[0].weight = w
    validate(m)
    x = np.concatenate([np.full((2, 1, 32, 32), 255, np.uint8), random_images(np.random.default_rng(5), m, 6)])
    row, top = emit_c.theta_layout(m.T)
    assert f"258, {row}, {top} }}, /* 0: dense */" in emit_c.generate(m, "lanefull")["lanefull_model.c"].decode()
    matched, n, first = c_host.verify_host(m, "lanefull", x, work, trace=True, lanes=True, sanitize=True)
    assert first is None and matched == n == 8, str(first)
    monkeypatch.setattr(emit_c, "lane_max", lambda layer: 1024)
    matched, n, first = c_host.verify_host(m, "lanefull_unbounded", x, work, trace=True, lanes=True)
    assert matched < n and first is not None and first.image == 0


def test_c_target_refuses_a_fan_in_beyond_uint16_offsets_before_compiling(work, monkeypatch):
    from runtime.errors import UserError

    m = _limit_model((1, 256, 257), [("dense", 2)])

    def no_compiler(*a, **k):
        raise AssertionError("must refuse before compiling")

    monkeypatch.setattr(c_host.subprocess, "run", no_compiler)
    with pytest.raises(UserError) as e:
        c_host.build_host(m, "too_wide", work)
    assert str(e.value) == "C target: layer 0 (dense)'s fan-in 65792 exceeds 65536 (uint16 event offsets in onespike.h)"
    # a conv2d receptive field counts its channels: 80 x 29 x 29 = 67280
    m2 = _limit_model((80, 29, 29), [("conv2d", 1, 29, 1, 0)])
    with pytest.raises(UserError, match=r"layer 0 \(conv2d\)'s fan-in 67280 exceeds 65536"):
        c_host.build_host(m2, "too_wide2", work)


def test_a_compile_failure_is_one_line_with_its_log(tmp_path, monkeypatch, capsys):
    """A compile failure of our own generated C is a ToolError: one line naming gcc and the log."""
    from codegen import cli
    from codegen.c import emit as emit_c

    real = emit_c.generate

    def broken(model, name):
        files = real(model, name)
        key = f"{emit_c.c_symbol(name)}_model.c"
        files[key] += b"\nstatic int unused_by_anyone;\n"  # -Wunused-variable under -Werror
        return files

    monkeypatch.setattr(emit_c, "generate", broken)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["verify", str(REPRO / "c-werror-unused-decode" / "model.pt"), "--target", "c", "-n", "5"])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("codegen: error: gcc on the generated C") and "unused_by_anyone" in lines[0], lines[0]
    log = Path(lines[0].rsplit("log: ", 1)[1])
    assert log.is_file() and "unused_by_anyone" in log.read_text()


def test_verify_cli_on_the_no_firing_layer_reproducer(tmp_path, monkeypatch, capsys):
    from codegen import cli

    monkeypatch.chdir(tmp_path)
    code = cli.main(["verify", str(REPRO / "c-werror-unused-decode" / "model.pt"), "--target", "c", "-n", "50"])
    out = capsys.readouterr().out
    assert code == 0 and "host (gcc, every layer's phases compared): 50/50 matched" in out, out
