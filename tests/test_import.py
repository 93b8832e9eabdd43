"""Bring your own model: ONNX and torch.export graphs lowered to the layers of an onespike-ann file.

The imported network must compute what the exported one computes (float against float: a tolerance),
and convert to the same integer model as the onespike-ann path (exact) where the weights are the same.
"""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from codegen import cli
from codegen.frontend import ann, convert, graph
from runtime.errors import UserError
from conftest import one_line_error, randomise_batchnorm, same_int_model as _same_int_model

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _export(net, x, path: Path, how: str) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "onnx":          # the TorchScript exporter, BatchNormalization kept (no constant folding)
            torch.onnx.export(net, (x,), str(path), dynamo=False, do_constant_folding=False,
                              training=torch.onnx.TrainingMode.PRESERVE)
        elif how == "onnx-dynamo":  # the default exporter (BN folded by its optimiser, weights in .onnx.data)
            torch.onnx.export(net, (x,), str(path), dynamo=True, verbose=False)
        elif how == "export":
            torch.export.save(torch.export.export(net, (x,)), str(path))
        elif how == "export-core":  # the core-ATen decomposition (convolution, addmm, _native_batch_norm...)
            torch.export.save(torch.export.export(net, (x,)).run_decompositions(), str(path))
    return path


def _suffix(how):
    return ".onnx" if how.startswith("onnx") else ".pt2"


def _net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 6, 3), nn.ReLU6(), nn.AvgPool2d(2), nn.Dropout(0.2), nn.Flatten(),
                        nn.Linear(6 * 3 * 3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    randomise_batchnorm(net)
    with torch.no_grad():
        net[4].weight.mul_(40)       # activations above 6: the ReLU6 clips
    return net.eval()


def _pixels(n, shape=(1, 16, 16), seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n,) + shape).astype(np.uint8)


def _int_model(net, shape, calib, F=16):
    return convert.convert(net, shape, calib, Q=1.5, T=8, F=F).model


@pytest.mark.parametrize("how", ["onnx", "onnx-dynamo", "export", "export-core"])
def test_exported_network_imports_to_the_same_layers(tmp_path, how):
    net = _net()
    x = torch.from_numpy(_pixels(32)).float() / 255
    f = _export(net, x[:1], tmp_path / f"m{_suffix(how)}", how)
    got, shape, meta, notes = graph.load_network(f)
    assert shape == (1, 16, 16) and meta["source_layout"] == "NCHW" and notes == []
    with torch.no_grad():
        assert torch.allclose(got(x), net(x), rtol=1e-4, atol=1e-5)   # float vs float
    assert any(isinstance(m, nn.Hardtanh) and m.max_val == 6 for m in got)      # Clip(0, 6) kept as the cap
    calib = _pixels(200, seed=1)
    if how in ("onnx", "export"):          # BatchNorm kept: the very weights of the onespike-ann path
        _same_int_model(_int_model(got, shape, calib), _int_model(net, (1, 16, 16), calib))


def test_relu6_caps_the_activation_scale():
    net = _net()
    conv = convert.convert(net, (1, 16, 16), _pixels(200, seed=1), Q=1.5, T=8, F=16)
    capped = [s for s in conv.lowered.stages if s.cap is not None]
    assert len(capped) == 1 and capped[0].scale.max() == 6.0
    free = convert.convert(nn.Sequential(*[nn.ReLU() if isinstance(m, nn.ReLU6) else m for m in net]).eval(),
                           (1, 16, 16), _pixels(200, seed=1), Q=1.5, T=8, F=16)
    assert [s for s in free.lowered.stages if s.kind == "conv2d"][1].scale.max() > 6.0  # the cap did something


@pytest.mark.parametrize("name, how", [("mnist-mlp", "onnx"), ("mnist-mlp", "export"), ("mnist-cnn", "onnx"),
                                       ("mnist-cnn", "export"), ("fmnist-cnn", "onnx")])
def test_shipped_anns_convert_to_the_same_integer_model(tmp_path, name, how):
    net, shape, _ = ann.load(REPO / "models" / f"{name}.ann.pt")
    f = _export(net, torch.zeros((1,) + shape), tmp_path / f"{name}{_suffix(how)}", how)
    got, gshape, _, _ = graph.load_network(f)
    assert gshape == shape
    calib = _pixels(300, shape=shape, seed=2)
    F = 14 if name == "fmnist-cnn" else 16     # its 3136-input dense layer needs a smaller F at Q = 1.5
    _same_int_model(_int_model(got, gshape, calib, F), _int_model(net, shape, calib, F))


class Normalising(nn.Module):
    """A model with its own forward(): normalisation inside, NHWC input (as Keras exports), HWC flatten."""

    def __init__(self, nhwc=True, mean=(0.1307,), std=(0.3081,)):
        super().__init__()
        self.nhwc = nhwc
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))
        self.conv = nn.Conv2d(len(mean), 5, 3, stride=2)
        self.fc1 = nn.Linear(5 * 7 * 7, 12)
        self.fc2 = nn.Linear(12, 4)

    def forward(self, x):
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        x = (x - self.mean) / self.std
        x = torch.relu(self.conv(x))
        if self.nhwc:
            x = x.permute(0, 2, 3, 1)          # Keras flattens H, W, C
        x = torch.flatten(x, 1)
        return torch.softmax(self.fc2(torch.relu(self.fc1(x))), dim=1)


@pytest.mark.parametrize("how", ["onnx", "export"])
@pytest.mark.parametrize("nhwc", [True, False])
def test_own_forward_with_normalisation_and_nhwc(tmp_path, how, nhwc):
    torch.manual_seed(3)
    shape = (3, 15, 15)
    m = Normalising(nhwc, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)).eval()
    x = torch.from_numpy(_pixels(16, shape)).float() / 255
    xin = x.permute(0, 2, 3, 1).contiguous() if nhwc else x
    f = _export(m, xin[:1], tmp_path / f"n{_suffix(how)}", how)
    got, gshape, meta, notes = graph.load_network(f)
    assert gshape == shape and meta["source_layout"] == ("NHWC" if nhwc else "NCHW")
    assert notes == []                      # no padding: the normalisation folds exactly
    assert [type(l).__name__ for l in got] == ["Conv2d", "ReLU", "Flatten", "Linear", "ReLU", "Linear"]
    with torch.no_grad():
        ref = torch.log(m(xin))             # softmax dropped: compare log-probabilities up to a constant
        out = torch.log_softmax(got(x), 1)
    assert torch.allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize("how", ["onnx", "export"])
def test_nhwc_graph_converts_to_the_integer_model_of_its_nchw_twin(tmp_path, how):
    """Keras' layout (NHWC input, H, W, C flatten order) against the onespike-ann twin built by hand."""
    torch.manual_seed(6)
    m = Normalising(True, mean=(0.0,), std=(1.0,)).eval()
    f = _export(m, torch.zeros(1, 15, 15, 1), tmp_path / f"k{_suffix(how)}", how)
    got, shape, _, _ = graph.load_network(f)
    twin = nn.Sequential(nn.Conv2d(1, 5, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 7 * 7, 12), nn.ReLU(),
                         nn.Linear(12, 4)).eval()
    with torch.no_grad():
        twin[0].load_state_dict(m.conv.state_dict())
        # fc1 reads (h, w, c)-ordered features; the twin reads (c, h, w): the same weights, columns moved
        twin[3].weight.copy_(m.fc1.weight.reshape(12, 7, 7, 5).permute(0, 3, 1, 2).reshape(12, -1))
        twin[3].bias.copy_(m.fc1.bias)
        twin[5].load_state_dict(m.fc2.state_dict())
    calib = _pixels(200, shape=(1, 15, 15), seed=8)
    _same_int_model(_int_model(got, shape, calib), _int_model(twin, (1, 15, 15), calib))


def test_mean_std_options_fold_into_the_first_layer(tmp_path):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 2)).eval()
    x = torch.from_numpy(_pixels(8, (1, 8, 8))).float()
    f = _export(net, x[:1], tmp_path / "m.onnx", "onnx")
    got, _, meta, notes = graph.load_network(f, mean=[100.0], std=[50.0], input_scale=255)
    assert len(notes) == 1 and "padding" in notes[0]  # said: the border differs
    assert meta["input_code"] == {"scale": [255 / 50], "offset": [-2.0]}
    with torch.no_grad():    # away from the border the fold is exact; at it, only the padding differs
        ref, out = net[0]((x - 100) / 50), got[0](x / 255)
    assert torch.allclose(ref[..., 1:-1, 1:-1], out[..., 1:-1, 1:-1], atol=1e-4)
    assert not torch.allclose(ref, out, atol=1e-4)
    with pytest.raises(UserError, match="apply to ONNX and torch.export"):
        graph.load_network(REPO / "models" / "mnist-mlp.ann.pt", mean=[0.5])


def test_flat_input_needs_the_image_shape(tmp_path):
    net = nn.Sequential(nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    f = _export(net, torch.zeros(1, 64), tmp_path / "flat.onnx", "onnx")
    with pytest.raises(UserError, match="--input-shape C,H,W"):
        graph.load_network(f)
    got, shape, _, _ = graph.load_network(f, image_shape=(1, 8, 8))
    assert shape == (1, 8, 8) and isinstance(got[0], nn.Flatten)


# ---------------------------------------------------------------------------------- hand-built ONNX graphs

def _graph(nodes, inits, in_shape=(1, 1, 4, 4), out="y", inputs=None):
    vi = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))] if inputs is None else inputs
    g = helper.make_graph(nodes, "g", vi, [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _save(tmp_path, model, name="g.onnx"):
    p = tmp_path / name
    onnx.save(model, str(p))
    return p


def test_matmul_add_chain_is_a_gemm_chain(tmp_path):
    rng = np.random.default_rng(0)
    w1, b1, w2, b2 = rng.normal(size=(16, 6)), rng.normal(size=6), rng.normal(size=(6, 3)), rng.normal(size=3)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["a1"]), helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["y"], transB=0)]
    got, shape, _, _ = graph.load_network(_save(tmp_path, _graph(nodes, dict(w1=w1, b1=b1, w2=w2, b2=b2))))
    x = rng.random((5, 1, 4, 4))
    ref = np.maximum(x.reshape(5, -1) @ w1 + b1, 0) @ w2 + b2
    with torch.no_grad():
        assert np.allclose(got(torch.from_numpy(x).float()).numpy(), ref, atol=1e-4)


W3 = np.ones((2, 1, 3, 3))
FC = np.ones((2, 8))


@pytest.mark.parametrize("nodes, inits, kw, needle", [
    ([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["y"])], dict(w=W3), {},
     "unsupported op Sigmoid at node 1"),
    ([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
      helper.make_node("Add", ["c", "r"], ["y"])], dict(w=W3), {}, "not a chain of layers"),
    ([helper.make_node("Conv", ["x", "w"], ["y"], group=2)], dict(w=np.ones((2, 1, 3, 3))), {"in_shape": (1, 2, 4, 4)},
     "grouped Conv"),
    ([helper.make_node("Conv", ["x", "w"], ["y"], strides=[1, 2])], dict(w=W3), {}, "stride (1, 2)"),
    ([helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER")], dict(w=W3), {}, "auto_pad=SAME_UPPER"),
    ([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Transpose", ["c"], ["y"], perm=[0, 1, 3, 2])],
     dict(w=W3), {}, "Transpose [0, 1, 3, 2]"),
    ([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Clip", ["c", "lo", "hi"], ["y"])],
     dict(w=W3, lo=-1.0, hi=1.0), {}, "Clip(-1.0, 1.0)"),
    ([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Softmax", ["c"], ["s"]),
      helper.make_node("Relu", ["s"], ["y"])], dict(w=W3), {}, "Softmax at node 1 (Softmax) is not the last op"),
    ([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2],
                                                                    ceil_mode=1)], dict(w=W3), {}, "ceil_mode"),
    ([helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "x2"], ["y"])], {},
     {"inputs": [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4]),
                 helper.make_tensor_value_info("x2", TensorProto.FLOAT, [16, 2])]}, "the graph has 2 inputs"),
    ([helper.make_node("Conv", ["x", "w"], ["y"])], dict(w=W3), {"in_shape": ("N", 1, "H", "W")}, "no fixed size"),
    ([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Flatten", ["r"], ["y"])], {}, {},
     "before the first Conv/Gemm"),
    ([helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)], dict(w=FC), {},
     "Gemm/MatMul at node 1 (Gemm): weight (2, 8) does not match its 16 inputs"),
    ([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Mul", ["c", "k"], ["y"])],
     dict(w=W3, k=np.ones((3, 1, 1))), {}, "neither a scalar nor one value per channel (2)"),
])
def test_unsupported_and_malformed_graphs(tmp_path, nodes, inits, kw, needle):
    with pytest.raises(UserError) as e:
        graph.load_network(_save(tmp_path, _graph(nodes, inits, **kw)))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg, msg


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xff\xff")
    code = cli.main(["convert", str(bad), "--dataset", "mnist", "-o", str(tmp_path / "m.pt")])
    one_line_error(code, capsys.readouterr().err, "not a readable ONNX file")
    sd = tmp_path / "checkpoint.pt"
    torch.save(nn.Linear(2, 2).state_dict(), sd)
    code = cli.main(["convert", str(sd), "--dataset", "mnist", "-o", str(tmp_path / "m.pt")])
    one_line_error(code, capsys.readouterr().err, "not an ANN file", "torch.onnx.export", "torch.export.save")
    pt2 = tmp_path / "junk.pt2"
    pt2.write_bytes(b"not a zip")
    code = cli.main(["convert", str(pt2), "--dataset", "mnist", "-o", str(tmp_path / "m.pt")])
    one_line_error(code, capsys.readouterr().err, "not a readable torch.export archive")
    for opts, needle in [(["--mean", "a,b"], "--mean must be one or comma-separated numbers"),
                         (["--std", "0"], "--std must be one or comma-separated positive numbers"),
                         (["--input-shape", "1,28"], "--input-shape must be C,H,W"),
                         (["--input-scale", "-1"], "--input-scale must be a positive number"),
                         (["--calib", "1"], "--calib must be an integer of at least 2"),
                         (["--test-labels", "y.npy"], "--test-labels goes with --test")]:
        code = cli.main(["convert", str(REPO / "models" / "mnist-mlp.ann.pt"), "--dataset", "mnist",
                         "-o", str(tmp_path / "m.pt")] + opts)
        one_line_error(code, capsys.readouterr().err, needle)
    code = cli.main(["convert", str(REPO / "models" / "mnist-mlp.ann.pt"), "-o", str(tmp_path / "m.pt")])
    one_line_error(code, capsys.readouterr().err, "give --dataset NAME, or your own calibration images")
    assert not (tmp_path / "m.pt").exists()


def test_own_data_calibration_and_test_folder(tmp_path, capsys):
    """Calibrate on a .npy (NHWC) and report on a folder of class sub-folders: no dataset involved."""
    from PIL import Image

    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 3)).eval()
    f = _export(net, torch.zeros(1, 3, 12, 12), tmp_path / "rgb.onnx", "onnx")
    calib = _pixels(40, (12, 12, 3), seed=6)
    np.save(tmp_path / "calib.npy", calib)
    test = _pixels(9, (12, 12, 3), seed=7)
    for i, img in enumerate(test):
        d = tmp_path / "test" / str(i % 3)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    out = tmp_path / "rgb.pt"
    code = cli.main(["convert", str(f), "--calib", str(tmp_path / "calib.npy"), "--test", str(tmp_path / "test"),
                     "--Q", "1.5", "--T", "8", "-o", str(out), "-q"])
    o = capsys.readouterr()
    assert code == 0, o.err
    assert "test accuracy (9 images" in o.out
    from runtime import golden, modelfile

    m = modelfile.load(out)
    assert m.input_shape == (3, 12, 12) and m.meta["calibration"].endswith("calib.npy")
    res = golden.run(m, np.ascontiguousarray(test.transpose(0, 3, 1, 2)))
    labels = np.array([i % 3 for i in range(9)])
    assert m.meta["test_accuracy"]["integer"] == float((res.classes == labels).mean())
    # the same calibration as a .npy of NCHW images gives the same model
    np.save(tmp_path / "calib_nchw.npy", np.ascontiguousarray(calib.transpose(0, 3, 1, 2)))
    code = cli.main(["convert", str(f), "--calib", str(tmp_path / "calib_nchw.npy"), "--Q", "1.5", "--T", "8",
                     "-o", str(tmp_path / "rgb2.pt"), "-q"])
    o = capsys.readouterr()
    assert code == 0 and "accuracy not measured" in o.out, o.err
    _same_int_model(m, modelfile.load(tmp_path / "rgb2.pt"))
