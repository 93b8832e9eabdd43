"""codegen export --to nir: the shipped models as NIR graphs, read back exactly and run time-stepped in sinabs."""
from pathlib import Path

import numpy as np
import pytest

from codegen import cli, nirgraph
from codegen.frontend import datasets
from runtime import golden, modelfile
from runtime.errors import UserError
from conftest import one_line_error, same_int_model

nir = pytest.importorskip("nir")
REPO = Path(__file__).resolve().parents[1]
CLASSIFIERS = ["mnist-mlp", "mnist-cnn", "fmnist-cnn"]


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_round_trip_is_exact(tmp_path, name):
    m = modelfile.load(REPO / "models" / f"{name}.pt")
    nirgraph.write(m, tmp_path / "m.nir")
    g = nir.read(str(tmp_path / "m.nir"))
    same_int_model(nirgraph.from_nir(g), m)
    for i, l in enumerate(m.layers):    # every firing layer and maxpool ends in an IF; the readout in none
        assert (f"{i}_if" in g.nodes) == (not l.readout)
    # the shipped CNNs' 2x2 maxpools are written as max trees, and the layer after one reads its 3 groups
    for i, l in enumerate(m.layers):
        if l.kind == "maxpool":
            assert g.nodes[f"{i}_maxpool"].weight.shape == (4 * l.in_shape[0], l.in_shape[0], 2, 2)
            nxt = g.nodes[f"{i + 1}_{m.layers[i + 1].kind}"].weight
            assert nxt.shape[1] == 3 * m.layers[i + 1].weight.shape[1]


def test_max_tree_computes_the_max_of_spike_rates():
    """The max tree of one 2x2 window, run in sinabs on spike trains with given rates: the max rate."""
    pytest.importorskip("sinabs")
    import torch
    from sinabs import nir as snir
    from sinabs.activation import SingleSpike
    from sinabs.layers import IAF

    from runtime.spec import Layer

    pool = Layer("maxpool", (1, 2, 2), (1, 1, 1), kernel=2, stride=2)
    nodes, edges = {"input": nir.Input(input_type={"input": np.array([1, 2, 2])})}, []
    last = nirgraph._max_tree(nodes, edges, "input", 0, pool)
    nodes["output"] = nir.Output(output_type={"output": np.array([3, 1, 1])})
    edges.append((last, "output"))
    steps = 60
    rates = torch.tensor([[0.2, 0.5], [0.35, 0.1]])
    t = torch.arange(steps, dtype=torch.float64)[:, None, None]
    trains = (torch.floor((t + 1) * rates) - torch.floor(t * rates)).float()   # evenly spread spikes
    net = snir.from_nir(nir.NIRGraph(nodes=nodes, edges=edges), batch_size=1, num_timesteps=steps)
    for mod in net.modules():
        if isinstance(mod, IAF):
            mod.spike_fn = SingleSpike
    y = net(trains.reshape(steps, 1, 2, 2))
    y = y[0] if isinstance(y, tuple) else y
    got = float(y.sum()) / steps                       # the three groups sum to the max
    assert abs(got - 0.5) <= 2 / steps, got
    assert abs(float(trains.sum()) / steps - 1.15) <= 4 / steps    # the OR / sum would be far off


def test_round_trip_reads_the_weights_from_the_nodes(tmp_path):
    m = modelfile.load(REPO / "models" / "mnist-mlp.pt")
    g = nirgraph.to_nir(m)
    g.nodes["0_dense"].weight[3, 5] += 1            # a corrupted node must not read back as the model
    back = nirgraph.from_nir(g)
    assert back.layers[0].weight[3, 5] == m.layers[0].weight[3, 5] + 1
    g.nodes["0_dense"].weight[0, 0] = 0.5
    with pytest.raises(UserError, match="not the int8 table"):
        nirgraph.from_nir(g)
    g.metadata = {}
    with pytest.raises(UserError, match="not a one-spike NIR graph"):
        nirgraph.from_nir(g)


@pytest.mark.parametrize("name, n, floor", [("mnist-mlp", 300, 0.98), ("mnist-cnn", 150, 0.95)])
def test_time_stepped_reading_in_sinabs_agrees_with_the_golden_model(tmp_path, name, n, floor):
    """A rate-coded reading (16 steps) of the exported graph: most classes agree, and a corrupted graph
    does not. docs/benchmarks.md gives the full test sets and why the two differ."""
    pytest.importorskip("sinabs")
    m = modelfile.load(REPO / "models" / f"{name}.pt")
    x, _ = datasets.load("mnist", "test")
    x = x[:n]
    gold = golden.run(m, x).classes
    nirgraph.write(m, tmp_path / "m.nir")
    g = nir.read(str(tmp_path / "m.nir"))
    agree = float((nirgraph.run_sinabs(g, m, x, steps=16) == gold).mean())
    assert agree >= floor, agree
    last = [k for k in g.nodes if k.endswith(("_dense", "_conv2d"))][-1]
    g.nodes[last].weight = -g.nodes[last].weight       # the readout negated: the argmax becomes the argmin
    assert float((nirgraph.run_sinabs(g, m, x, steps=16) == gold).mean()) < 0.5


def test_cli_export(tmp_path, capsys):
    out = tmp_path / "mlp.nir"
    model = REPO / "models" / "mnist-mlp.pt"
    assert cli.main(["export", str(model), "--to", "nir", "-o", str(out)]) == 0
    first = out.read_bytes()
    assert cli.main(["export", str(model), "--to", "nir", "-o", str(out)]) == 0   # its own output: regenerated
    assert out.read_bytes() == first                                                # byte for byte
    capsys.readouterr()
    code = cli.main(["export", str(REPO / "models" / "mnist-cnn.pt"), "--to", "nir", "-o", str(out)])
    one_line_error(code, capsys.readouterr().err, "made from another input", "--force")
    other = tmp_path / "notes.nir"
    other.write_text("mine")
    code = cli.main(["export", str(model), "--to", "nir", "-o", str(other)])
    one_line_error(code, capsys.readouterr().err, "is not a one-spike NIR graph; not replaced")
    assert other.read_text() == "mine"
    code = cli.main(["export", str(REPO / "models" / "bccd-det.pt"), "--to", "nir", "-o", str(tmp_path / "d.nir")])
    one_line_error(code, capsys.readouterr().err, "NIR export of detectors is not supported")
    code = cli.main(["export", str(model), "--to", "nir", "--check", "5", "-o", str(tmp_path / "c.nir")])
    one_line_error(code, capsys.readouterr().err, "--check N runs the exported graph on N test images")
    code = cli.main(["export", str(model), "--to", "nir", "--check", "0", "--dataset", "mnist"])
    one_line_error(code, capsys.readouterr().err, "--check must be a positive integer, not 0")
    assert not (tmp_path / "d.nir").exists() and not (tmp_path / "c.nir").exists()
