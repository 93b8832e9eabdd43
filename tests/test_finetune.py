"""Spike-aware training (codegen/frontend/finetune.py, ``codegen finetune``).

* The training forward equals the golden model after conversion, exactly (every phase of every
  layer, the class and the logits), on random networks whose quantisation is exact: Q = 2 codes
  (dyadic levels) and weights and biases on the int8 / 2^F grid of their scales;
* its SOP count equals the golden model's, image by image;
* the NA gradient equals the brute-force aggregated finite difference of the loss (re-running the
  network with each hidden neuron's membrane value moved over its neighbourhood) on a tiny network
  whose loss is linear in the hidden outputs, where the first-order form is exact; the STE slope;
* a short fine-tune of the MNIST CNN under a SOP budget cuts its SOPs; ``codegen finetune`` then
  ``codegen convert`` on the MNIST MLP (the file records its units and codes), and option refusals.
"""
import numpy as np
import pytest
import torch
from torch import nn

from codegen import cli
from codegen.frontend import ann, calibrate as C, convert, datasets, finetune as ft, lower as L
from codegen.frontend.quantise import quantise
from conftest import ROOT
from runtime import golden, modelfile

K = 10         # weights are multiples of 2**-K; every row holds +-127 * 2**-K (so its scale is 2**-K)
F = 10


def dyadic(rng, shape):
    w = rng.integers(-24, 25, size=shape).astype(np.float64)
    rows = w.reshape(shape[0], -1)
    rows[:, 0] = 127 * np.where(rng.random(shape[0]) < 0.5, 1, -1)    # every row's max |w| is 127
    return w * 2.0 ** -K


def dyadic_net(seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "dense":
        mods = [nn.Flatten(), nn.Linear(36, 12), nn.ReLU(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 4)]
    else:
        mods = [nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3), nn.ReLU(),
                nn.Flatten(), nn.Linear(5, 4)]
    net = nn.Sequential(*mods).double()
    for m in net:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.weight.data = torch.from_numpy(dyadic(rng, tuple(m.weight.shape)))
            # bias on the accumulator grid: an integer times scale / 2**F, about the size of a few terms
            m.bias.data = torch.from_numpy(rng.integers(-200_000, 200_000, size=m.bias.shape) * 2.0 ** -(K + F))
    return net.eval()


def converted(seed, kind):
    net = dyadic_net(seed, kind)
    low = L.lower(net, (1, 6, 6))
    C.calibrate(low, None, "none")
    normd = C.normalise(low)
    model = quantise(normd, 2.0, 5, F=F, input_Q=2.0, input_T=4)
    return normd, model


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_forward_equals_golden_after_conversion(kind, seed):
    normd, model = converted(seed, kind)
    x = np.random.default_rng(100 + seed).integers(0, 256, size=(64, 1, 6, 6), dtype=np.uint8)
    gold = golden.run(model, x)
    net = ft.OneSpikeNet(normd, 2.0, 5, 2.0, 4, dtype=torch.float64)
    ph = net.phases(x)
    assert len(ph) == len(model.layers)            # the input and every layer but the readout
    for i, p in enumerate(ph):
        assert np.array_equal(p, gold.phases[i]), f"layer {i - 1} phases differ"
    fired = sum(int((p < 5).sum()) for p in ph[1:])
    assert fired > 50                                # spikes were really compared
    with torch.no_grad():
        logits, st = net(net.encode(x), with_stats=True)
    scale = 2.0 ** -K                                 # the readout's one scale
    assert np.array_equal(logits.numpy() * 2.0 ** F / scale, gold.logits.astype(np.float64))
    assert np.array_equal(logits.numpy().argmax(1), gold.classes)
    assert np.array_equal(st.sops.numpy(), gold.sops.sum(1).astype(np.float64))


def test_a_corrupted_golden_phase_is_seen():
    """The comparison above can fail: a network one weight step off gives other phases."""
    normd, model = converted(0, "dense")
    x = np.random.default_rng(7).integers(0, 256, size=(64, 1, 6, 6), dtype=np.uint8)
    model.layers[0].bias[:] += 1 << (F - 1)
    gold = golden.run(model, x)
    net = ft.OneSpikeNet(normd, 2.0, 5, 2.0, 4, dtype=torch.float64)
    assert not np.array_equal(net.phases(x)[1], gold.phases[1])


def test_na_gradient_equals_the_brute_force_finite_difference():
    torch.manual_seed(0)
    Q, T = 1.25, 8
    theta = torch.tensor(ft.shifted_threshold(Q, T, True))
    lvt = torch.tensor(np.concatenate([ft.level(Q, T), [0.0]]))
    radius = ft.NA_RADIUS * (Q - 1)
    x = torch.rand(5, 9, dtype=torch.float64)
    w1 = torch.randn(6, 9, dtype=torch.float64) * 0.3
    w2 = torch.randn(3, 6, dtype=torch.float64)
    c = torch.randn(3, dtype=torch.float64)
    a = (x @ w1.T + 0.4).requires_grad_(True)

    def loss_of(h):                                   # linear in the hidden outputs
        return ((h @ w2.T) * c).sum()

    h = ft._Fire.apply(a, theta, lvt, "na", radius)
    loss_of(h).backward()
    got = a.grad.clone()
    want = torch.zeros_like(got)
    with torch.no_grad():
        q = lvt[ft._fire_phase(a, theta)]
        for n in range(a.shape[0]):
            for i in range(a.shape[1]):
                base = max(float(a[n, i]), float(theta[-1]))
                acc = 0.0
                for k in range(1, ft.NA_POINTS + 1):
                    d = base * radius * k / ft.NA_POINTS
                    hp, hm = q.clone(), q.clone()
                    hp[n, i] = lvt[ft._fire_phase(a[n, i] + d, theta)]
                    hm[n, i] = lvt[ft._fire_phase(a[n, i] - d, theta)]
                    acc += float(loss_of(hp) - loss_of(hm)) / (2 * d)
                want[n, i] = acc / ft.NA_POINTS
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert (got != 0).float().mean() > 0.3           # most neurons are near a level: a gradient


def test_ste_slope_is_one_on_the_coded_range():
    theta = torch.tensor(ft.shifted_threshold(1.5, 4, True))
    lvt = torch.tensor(np.concatenate([ft.level(1.5, 4), [0.0]]))
    a = torch.tensor([-0.5, 0.0, 0.05, 0.5, 1.0, 1.5], dtype=torch.float64)
    assert ft.fire_slope(a, theta, lvt, "ste", 0.5).tolist() == [0, 0, 1, 1, 1, 0]


def test_short_finetune_under_a_budget_cuts_the_sops():
    net, shape, _ = ann.load(ROOT / "models" / "mnist-cnn.ann.pt")
    xtr, ytr = datasets.load("mnist", "train")
    low = L.lower(net, shape)
    C.calibrate(low, xtr[:2000])
    onet = ft.OneSpikeNet(C.normalise(low), 1.2, 12, 1.02, 255)
    res = ft.finetune(onet, xtr[:6000], ytr[:6000], xtr[-1000:], ytr[-1000:], epochs=1, budget=0.5, mu=1.0,
                      max_steps=40, progress=False)
    assert res.history[0]["sop_ratio"] < 0.85 and res.history[0]["mu"] > 0
    assert res.best["sops"] < 0.85 * res.start["sops"]
    assert res.best["accuracy"] > 0.9


def test_cli_finetune_then_convert(tmp_path, capsys):
    out = tmp_path / "ft.ann.pt"
    src = ROOT / "models" / "mnist-mlp.ann.pt"
    rc = cli.main(["finetune", str(src), "--Q", "1.2", "--T", "16", "--input-T", "40", "--epochs", "1",
                   "--budget", "1", "--calib", "2000", "-o", str(out), "-q"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "SOPs per image" in text and f"then: codegen convert {out} --dataset mnist" in text
    _, _, meta = ann.load(out)
    assert meta["onespike_code"] == {"normalised": True, "Q": 1.2, "T": 16, "input_Q": 1.02, "input_T": 40}
    assert meta["finetune"]["source_ann_sha256"] == modelfile.file_sha256(src)
    model_out = tmp_path / "model.pt"
    assert cli.main(["convert", str(out), "--dataset", "mnist", "--calib", "200", "-o", str(model_out), "-q"]) == 0
    capsys.readouterr()
    m = modelfile.load(model_out)
    assert (m.Q, m.T, m.input_Q, m.input_T) == (1.2, 16, 1.02, 40) and m.meta["normalisation"] == "none"
    f1 = meta["finetune"]["test_float_onespike"]["accuracy"]
    assert abs(m.meta["test_accuracy"]["integer"] - f1) < 0.003      # the integer model is the trained one
    assert m.meta["test_accuracy"]["integer"] > 0.97
    # the same command again regenerates; another source needs --force
    assert cli.main(["finetune", str(ROOT / "models" / "mnist-cnn.ann.pt"), "--Q", "1.2", "--T", "12",
                     "--epochs", "1", "-o", str(out), "-q"]) == 2
    assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize("argv,msg", [
    (["--Q", "1.2"], "give --Q and --T together"),
    (["--budget", "0"], "--budget must be a share"),
    (["--budget", "1.5"], "--budget must be a share"),
    (["--gradient", "bptt"], "--gradient must be one of ste, na"),
    (["--epochs", "0"], "--epochs"),
    (["--input-T", "0"], "--input-T must be an integer"),
])
def test_cli_finetune_refusals(argv, msg, capsys, tmp_path):
    assert cli.main(["finetune", str(ROOT / "models" / "mnist-mlp.ann.pt"), "-o", str(tmp_path / "x.pt")] + argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and msg in err, err
    assert not (tmp_path / "x.pt").exists()
