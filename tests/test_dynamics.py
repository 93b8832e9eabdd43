"""The seed's time-stepped neuron (runtime.dynamics) gives the same spikes as the closed form.

1. Exact rational arithmetic (Fractions, Q = 3/2 and 5/4): time-stepped == closed form on random
   float one-spike networks, every layer's spike phases and the readout values.
2. The integer golden model == the time-stepped dynamics on random integer models with Q = 2, where
   the decode table is exact (D[f] = 2**(F-f)) and the thresholds are the shifted geometric ones.
"""
from fractions import Fraction

import numpy as np
import pytest

from randmodels import random_images, random_model
from runtime import dynamics, golden
from runtime.spec import encode_table


def _frac(a):
    return np.vectorize(lambda v: Fraction(int(v)), otypes=[object])(a)


def _theta(Q, T):
    return [Q ** -f * (1 + 1 / Q) / 2 for f in range(T)]


def _random_float_stages(rng, plan, shape, denom=8):
    stages = []
    for i, kind in enumerate(plan):
        fires = i < len(plan) - 1
        if kind == "dense":
            n_in, n_out = int(np.prod(shape)), int(rng.integers(2, 6))
            w = _frac(rng.integers(-8, 9, size=(n_out, n_in))) / denom
            b = _frac(rng.integers(-4, 5, size=n_out)) / (2 * denom)
            stages.append({"kind": "dense", "weight": w, "bias": b, "fires": fires})
            shape = (n_out,)
        elif kind == "conv2d":
            c, o = shape[0], int(rng.integers(1, 4))
            k, s, p = 2, 1, int(rng.integers(0, 2))
            w = _frac(rng.integers(-8, 9, size=(o, c, k, k))) / denom
            b = _frac(rng.integers(-4, 5, size=o)) / (2 * denom)
            stages.append({"kind": "conv2d", "weight": w, "bias": b, "kernel": k, "stride": s, "padding": p, "fires": fires})
            shape = (o, shape[1] + 2 * p - k + 1, shape[2] + 2 * p - k + 1)
        else:
            k = 2
            st = {"kind": kind, "kernel": k, "stride": 2, "padding": 0, "fires": kind == "avgpool"}
            if kind == "avgpool":
                st["ratio"] = _frac(rng.integers(1, 4, size=shape[0]))
            stages.append(st)
            shape = (shape[0], (shape[1] - k) // 2 + 1, (shape[2] - k) // 2 + 1)
    return stages


@pytest.mark.parametrize("Q", [Fraction(3, 2), Fraction(5, 4)])
@pytest.mark.parametrize("seed", range(6))
def test_time_stepped_equals_closed_form_exactly(Q, seed):
    rng = np.random.default_rng(seed)
    T = int(rng.integers(3, 7))
    plan = [["conv2d", "maxpool", "dense", "dense"], ["conv2d", "avgpool", "dense"], ["dense", "dense", "dense"]][seed % 3]
    shape = (2, 6, 6)
    stages = _random_float_stages(rng, plan, shape)
    theta = _theta(Q, T)
    x = np.vectorize(lambda v: Fraction(int(v), 255), otypes=[object])(rng.integers(0, 256, size=shape))
    ph_ts, out_ts = dynamics.simulate(stages, x, Q, T, theta)
    ph_cf, out_cf = dynamics.closed_form(stages, x, Q, T, theta)
    assert len(ph_ts) == len(ph_cf)
    for a, b in zip(ph_ts, ph_cf):
        assert a.tolist() == b.tolist()
    assert list(out_ts.reshape(-1)) == list(out_cf.reshape(-1))
    # not vacuous: some neurons fire and some stay silent across the hidden layers
    hidden = np.concatenate([p.reshape(-1) for p in ph_ts[1:]])
    assert (hidden < T).any() or seed % 3 == 2


def _exact_int_model(rng, plan, T, F):
    """A random integer model with Q = 2 whose tables are exact: D[f] = 2**(F-f), Theta = theta_f 2**F sigma_c."""
    model = random_model(rng, Q=2.0, T=T, F=F, input_shape=(2, 6, 6), plan=plan, input_code=(2.0, T))
    assert model.decode[:T].tolist() == [2 ** (F - f) for f in range(T)]
    sigmas = []
    for layer in model.layers:
        if layer.theta is not None:
            c = layer.theta.shape[0]
            sigma = rng.integers(1, 40, size=c)
            base = np.array([3 * 2 ** (F - f - 2) for f in range(T)], dtype=np.int64)  # theta_f * 2**F
            layer.theta = sigma[:, None] * base[None, :]
            sigmas.append(sigma)
        else:
            sigmas.append(None)
    return model, sigmas


def _stages_of(model, sigmas):
    two_f = Fraction(2 ** model.F)
    stages = []
    for layer, sigma in zip(model.layers, sigmas):
        if layer.kind in ("dense", "conv2d"):
            div = np.array([Fraction(1)] * layer.weight.shape[0] if sigma is None else [Fraction(int(s)) for s in sigma], dtype=object)
            w = _frac(layer.weight) / div.reshape((-1,) + (1,) * (layer.weight.ndim - 1))
            b = _frac(layer.bias) / two_f / div
            stages.append({"kind": layer.kind, "weight": w, "bias": b, "kernel": layer.kernel, "stride": layer.stride,
                           "padding": layer.padding, "fires": not layer.readout})
        elif layer.kind == "avgpool":
            k = layer.kernel
            stages.append({"kind": "avgpool", "kernel": k, "stride": layer.stride, "padding": layer.padding, "fires": True,
                           "ratio": np.array([Fraction(k * k, int(s)) for s in sigma], dtype=object)})
        else:
            stages.append({"kind": "maxpool", "kernel": layer.kernel, "stride": layer.stride, "padding": layer.padding, "fires": False})
    return stages


@pytest.mark.parametrize("seed", range(8))
def test_golden_equals_time_stepped_dynamics(seed):
    rng = np.random.default_rng(100 + seed)
    T = int(rng.integers(3, 7))
    F = T + 4
    plan = [["conv2d", "maxpool", "dense"], ["conv2d", "avgpool", "conv2d", "dense"], ["dense", "dense"],
            ["maxpool", "conv2d", "dense", "dense"]][seed % 4]
    model, sigmas = _exact_int_model(rng, plan, T, F)
    assert model.encode.tolist() == encode_table(2.0, T).tolist()
    stages = _stages_of(model, sigmas)
    Q = Fraction(2)
    theta = _theta(Q, T)
    images = random_images(rng, model, 3)
    res = golden.run(model, images)
    fired = 0
    for n in range(len(images)):
        x = np.vectorize(lambda v: Fraction(int(v), 255), otypes=[object])(images[n])
        ph_ts, out_ts = dynamics.simulate(stages, x, Q, T, theta)
        golden_phases = [p[n] for p in res.phases if p is not None and True]
        spiking = [golden_phases[0]] + [p[n] for p, l in zip(res.phases[1:], model.layers) if l.fires]
        assert len(ph_ts) == len(spiking)
        for a, b in zip(ph_ts, spiking):
            assert a.reshape(-1).tolist() == np.asarray(b).reshape(-1).tolist()
        assert [v * 2 ** F for v in out_ts.reshape(-1)] == res.logits[n].tolist()
        fired += sum(int((p < T).sum()) for p in ph_ts[1:])
    assert fired > 0 or len(ph_ts) == 1
