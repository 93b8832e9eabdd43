"""The Numba golden model equals a slow pure-Python reading of the specification, exactly."""
import numpy as np
import pytest

import spec_reference as ref
from randmodels import random_images, random_model
from runtime import golden
from runtime.spec import validate


@pytest.mark.parametrize("seed", range(40))
def test_golden_equals_reference_on_random_models(seed):
    rng = np.random.default_rng(seed)
    model = random_model(rng)
    validate(model)
    images = random_images(rng, model, 4)
    res = golden.run(model, images)
    for n in range(len(images)):
        logits, phases, sops = ref.run_one(model, images[n])
        assert res.logits[n].tolist() == logits
        assert int(res.classes[n]) == ref.argmax_lowest(logits)
        assert res.sops[n].tolist() == sops
        for li, p in enumerate(phases):
            if p is None:
                assert res.phases[li] is None
            else:
                assert np.asarray(res.phases[li][n]).reshape(-1).tolist() == np.asarray(p).reshape(-1).tolist(), f"layer {li}"
        codes = [model.input_T] + [model.T if l.fires else model.code_of_layer_input(i)[1] for i, l in enumerate(model.layers)]
        spikes = [int((np.asarray(p) != c).sum()) for p, c in zip(phases, codes) if p is not None]
        assert res.spikes[n][: len(spikes)].tolist() == spikes


def test_random_models_exercise_firing():
    """Guard against a vacuous comparison: across the random models, spikes and silences both occur."""
    fired = silent = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        model = random_model(rng)
        res = golden.run(model, random_images(rng, model, 4))
        for p in res.phases[1:]:
            if p is not None:
                fired += int((p != model.T).sum())
                silent += int((p == model.T).sum())
    assert fired > 100 and silent > 100


def test_corrupted_expectation_is_caught():
    """A single flipped weight changes the golden output: the equality checks above can fail."""
    rng = np.random.default_rng(7)
    model = random_model(rng, plan=["dense", "dense"], T=6)
    images = random_images(rng, model, 8)
    before = golden.run(model, images).logits.copy()
    w = model.layers[-1].weight
    w[0, :] = np.where(w[0, :] == 127, 126, w[0, :] + 1)
    model._golden_cache = None
    after = golden.run(model, images).logits
    assert not np.array_equal(before, after)


def test_ties_go_to_lowest_index():
    rng = np.random.default_rng(3)
    model = random_model(rng, plan=["dense", "dense"])
    last = model.layers[-1]
    last.weight[:] = 0
    last.bias[:] = 5
    res = golden.run(model, random_images(rng, model, 3))
    assert res.classes.tolist() == [0, 0, 0]


def test_batched_equals_unbatched():
    rng = np.random.default_rng(11)
    model = random_model(rng)
    x = random_images(rng, model, 37)
    a = golden.run(model, x)
    b = golden.run_batched(model, x, batch=5)
    assert np.array_equal(a.logits, b.logits) and np.array_equal(a.sops, b.sops) and np.array_equal(a.spikes, b.spikes)
