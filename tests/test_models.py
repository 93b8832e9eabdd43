"""The shipped models meet their accuracy targets on the full 10k test sets (integer golden model)."""
from pathlib import Path

import numpy as np
import pytest

from codegen.frontend import ann
from codegen.frontend import convert
from codegen.frontend import datasets
from runtime import golden, modelfile

ROOT = Path(__file__).resolve().parent.parent
# name -> (dataset, minimum integer accuracy)
TARGETS = {"mnist-cnn": ("mnist", 0.992), "fmnist-cnn": ("fashion-mnist", 0.91), "mnist-mlp": ("mnist", 0.98)}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_shipped_model_meets_target(name):
    dataset, target = TARGETS[name]
    m = modelfile.load(ROOT / "models" / f"{name}.pt")
    net, shape, _ = ann.load(ROOT / "models" / f"{name}.ann.pt")
    x, y = datasets.load(dataset, "test")
    assert len(y) == 10000
    res = golden.run_batched(m, x)
    acc = float((res.classes == y).mean())
    ann_acc = float((convert.ann_predict(convert.lower(net, shape), x) == y).mean())
    assert acc >= target, f"{name}: integer accuracy {acc:.4f} < {target}"
    assert abs(acc - ann_acc) <= 0.003, f"{name}: integer {acc:.4f} vs ANN {ann_acc:.4f}"
    # the recorded figures are the measured ones
    assert m.meta["test_accuracy"]["integer"] == acc
    spn = res.spikes[:, [0] + [i + 1 for i, l in enumerate(m.layers) if l.fires]].sum(1).mean() / sum(m.neuron_counts())
    assert 0 < spn < 1
    assert np.isclose(m.meta["spikes_per_neuron"], spn)
