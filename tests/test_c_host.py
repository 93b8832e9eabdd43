"""Generated C on the host equals the golden model exactly: logits, class and every layer's phases."""
from pathlib import Path

import numpy as np
import pytest

from codegen import c_target, datasets
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


@pytest.mark.parametrize("seed", range(24))
def test_c_equals_golden_on_random_models(seed, work):
    rng = np.random.default_rng(1000 + seed)
    model = _wide_random_model(rng)
    images = random_images(rng, model, 16)
    matched, n, first = c_target.verify_host(model, f"rand{seed}", images, work, trace=True)
    assert first is None, str(first)
    assert matched == n == 16


@pytest.mark.parametrize("seed", range(6))
def test_sanitizer_build_is_clean(seed, work):
    rng = np.random.default_rng(2000 + seed)
    model = _wide_random_model(rng)
    images = random_images(rng, model, 8)
    matched, n, first = c_target.verify_host(model, f"san{seed}", images, work, trace=True, sanitize=True)
    assert first is None and matched == n


def test_corrupted_c_is_caught_and_located(work):
    rng = np.random.default_rng(5)
    model = random_model(rng, plan=["dense", "dense", "dense"], T=6)
    images = random_images(rng, model, 32)
    exe = c_target.build_host(model, "corrupt", work)
    gold = golden.run(model, images)
    # change one hidden weight in the golden model only: the C binary keeps the original
    model.layers[0].weight[:, :] = np.clip(model.layers[0].weight.astype(np.int16) + 7, -127, 127).astype(np.int8)
    model._golden_cache = None
    gold_bad = golden.run(model, images)
    got = c_target.run_host(model, exe, images, trace=True)
    assert c_target.compare(model, gold, got)[0] == 32
    matched, first = c_target.compare(model, gold_bad, got)
    assert matched < 32 and first is not None
    assert first.layer in ("0:dense", "1:dense") or "readout" in first.layer


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_models_full_test_set_parity(name, work):
    m = modelfile.load(ROOT / "models" / f"{name}.pt")
    x, _ = datasets.load(SHIPPED[name], "test")
    matched, n, first = c_target.verify_host(m, name, x, work, trace=True)
    assert first is None, str(first)
    assert matched == n == 10000


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_models_sanitizer_subset(name, work):
    m = modelfile.load(ROOT / "models" / f"{name}.pt")
    x, _ = datasets.load(SHIPPED[name], "test")
    matched, n, first = c_target.verify_host(m, name, x[:50], work, trace=True, sanitize=True)
    assert first is None and matched == n
