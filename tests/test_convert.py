"""Conversion: lowering rules, BN folding, one-line refusals, and the integer model against the float one."""
import numpy as np
import pytest
import torch
from torch import nn

from codegen import convert
from runtime import golden
from runtime.errors import UserError
from runtime.spec import validate


def _tiny_cnn(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Dropout(0.1),
        nn.Flatten(), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Identity(), nn.Linear(8, 3))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.3)
    return net.eval()


def _images(n, seed=0, shape=(1, 8, 8)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n,) + shape).astype(np.uint8)


def test_bn_folding_matches_the_ann():
    net = _tiny_cnn()
    x = _images(64)
    low = convert.lower(net, (1, 8, 8))
    with torch.no_grad():
        ref = net(torch.from_numpy(x).float() / 255).double()
        got = convert.float_forward(low, torch.from_numpy(x).double() / 255)
    assert torch.allclose(ref, got, rtol=1e-4, atol=1e-5)  # float vs float: a tolerance is legitimate
    assert [s.kind for s in low.stages] == ["conv2d", "maxpool", "conv2d", "avgpool", "dense", "dense"]


def test_relu_after_maxpool_commutes():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(18, 2)).eval()
    low = convert.lower(net, (1, 8, 8))
    assert low.stages[0].relu and low.stages[1].kind == "maxpool"


@pytest.mark.parametrize("net, shape, needle", [
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Sigmoid(), nn.Linear(4, 2)), (1, 8, 8), "unsupported layer Sigmoid at position 2"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU(), nn.Linear(5, 2)), (1, 8, 8), "shape mismatch: Linear at position 3 expects 5 inputs but receives 4"),
    (nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 2)), (1, 8, 8), "shape mismatch: Conv2d at position 0"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(36, 2)), (1, 8, 8), "add a Flatten"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Linear(4, 2)), (1, 8, 8), "not followed by ReLU"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU()), (1, 8, 8), "readout"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2)), (1, 8, 8), "must directly follow"),
    (nn.Sequential(nn.Conv2d(1, 2, (3, 1)), nn.ReLU(), nn.Flatten(), nn.Linear(72, 2)), (1, 8, 8), "non-square"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Tanh(), nn.Linear(4, 2)), (1, 8, 8), "unsupported layer Tanh at position 2"),
])
def test_refusals(net, shape, needle):
    with pytest.raises(UserError) as e:
        convert.lower(net.eval(), shape)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_nan_weights_refused():
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        net[1].weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN or infinite"):
        convert.lower(net, (1, 8, 8))


def test_convert_fixed_q_t_gives_valid_model_close_to_float():
    net = _tiny_cnn()
    calib = _images(400, 1)
    conv = convert.convert(net, (1, 8, 8), calib, Q=1.25, T=24, progress=False)
    m = conv.model
    validate(m)
    assert (m.Q, m.T) == (1.25, 24) and all(l.acc_bits <= 32 for l in m.layers)
    x = _images(300, 2)
    ints = golden.run(m, x).classes
    flt = convert.onespike_predict(conv.normalised, x, m.Q, m.T)
    assert (ints == flt).mean() >= 0.9  # weight quantisation vs float one-spike: a tolerance is legitimate here


def test_search_meets_error_target_and_records_it():
    net = _tiny_cnn(3)
    calib = _images(600, 4)
    conv = convert.convert(net, (1, 8, 8), calib, max_disagree=5.0, progress=False)
    assert conv.search, "the Q/T search ran"
    chosen = [r for r in conv.search if r["Q"] == conv.model.Q and r["T"] == conv.model.T]
    assert chosen and chosen[0]["disagreement_percent"] <= 5.0
    # no candidate with a smaller T met the target
    assert all(r["disagreement_percent"] > 5.0 for r in conv.search if r["T"] < conv.model.T)


def test_refuses_model_that_does_not_fit_the_accumulator():
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    low = convert.lower(net, (1, 8, 8))
    convert.calibrate(low, _images(50), "max")
    norm = convert.normalise(low)
    with pytest.raises(UserError, match="no valid 12-bit integer model at any F <= 8"):
        convert.quantise(norm, 1.5, 8, max_bits=12, max_F=8)


def test_non_sequential_network_is_refused():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            return x + self.a(x)

    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU(), Residual(), nn.Linear(4, 2)).eval()
    with pytest.raises(UserError, match="Residual is not an nn.Sequential"):
        convert.lower(net, (1, 8, 8))


def test_ann_file_keeps_every_layer_argument(tmp_path):
    from codegen import ann

    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, count_include_pad=False, padding=1),
                        nn.Flatten(), nn.Linear(50, 2)).eval()
    ann.save(tmp_path / "a.ann.pt", net, (1, 8, 8))
    back, shape, _ = ann.load(tmp_path / "a.ann.pt")
    assert back[2].count_include_pad is False and shape == (1, 8, 8)
    with pytest.raises(UserError, match="count_include_pad"):
        convert.lower(back, shape)
