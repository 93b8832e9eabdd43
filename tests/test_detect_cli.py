"""The detector through the command line on a tiny VOC folder: convert, run (the accuracy table, the
report files and PNGs), detect (JSON and annotated PNGs), and their one-line errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from codegen import cli
from codegen.frontend import ann, train_det
from runtime import modelfile
from conftest import one_line_error
from test_voc import make_voc

PNG = b"\x89PNG\r\n\x1a\n"


def run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def det_files(tmp_path_factory):
    """A tiny VOC folder (32x24 images, classes cat and dog) and an untrained detector ANN for it."""
    root = tmp_path_factory.mktemp("voc")
    items = {f"i{k}": [("cat", (2 + k, 3, 14 + k, 15)), ("dog", (16, 4 + k % 3, 30, 20))] for k in range(6)}
    name = make_voc(root / "set", items, {"train": ["i0", "i1", "i2", "i3"], "val": ["i4"], "test": ["i4", "i5"]})
    torch.manual_seed(0)
    net = train_det.build(3, 2, widths=(4, 8), body=1).eval()
    meta = {"arch": "tiny-det", "task": "detect", "input_size": [32, 24], "channels": 3,
            "head": {"classes": ["cat", "dog"], "stride": 2, "score_threshold": -0.5, "nms_iou_percent": 50,
                     "max_detections": 16}}
    ann_path = root / "tiny.ann.pt"
    ann.save(ann_path, net, (3, 24, 32), meta)
    return name, ann_path, root


@pytest.fixture(scope="module")
def det_model(det_files, tmp_path_factory):
    name, ann_path, root = det_files
    out = root / "tiny.pt"
    code = cli.main(["convert", str(ann_path), "--dataset", name, "--Q", "1.5", "--T", "8", "-o", str(out), "-q"])
    assert code == 0
    return out


def test_convert_records_the_head_and_three_networks(det_model, det_files):
    m = modelfile.load(det_model)
    assert m.task == "detect" and m.head.classes == ["cat", "dog"] and m.head.stride == 2
    assert m.layers[-1].out_shape == (7, 12, 16)
    u = m.meta["readout_unit"]
    assert m.head.score_threshold == int(np.ceil(-0.5 / u))
    for split in ("val", "test"):
        assert set(m.meta["figures"][split]) == {"ann_float", "onespike_float", "integer"}


def test_run_prints_the_table_and_writes_the_report(det_model, det_files, capsys, tmp_path):
    name = det_files[0]
    code, out, err = run_cli(capsys, "run", det_model, "--dataset", name, "--report", tmp_path / "r", "-q")
    assert code == 0, err
    for row in ("AP@0.5 cat", "AP@0.5 dog", "mAP@0.5", "mAP@[.5:.95]", "FOMO F1", "ANN float", "one-spike float",
                "one-spike integer", "spikes per neuron", "synaptic ops", "energy estimate"):
        assert row in out, row
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    m = modelfile.load(det_model)
    # the integer column of this run equals what the conversion measured on the same split
    assert rep["detection"]["integer"]["map50"] == m.meta["figures"]["test"]["integer"]["map50"]
    for png in ("detections.png", "pr_curves.png", "sparsity.png", "phases.png"):
        assert (tmp_path / "r" / png).read_bytes()[:8] == PNG
    assert "AP@0.5 cat" in (tmp_path / "r" / "report.txt").read_text()


def test_detect_writes_json_and_png_and_resizes(det_model, capsys, tmp_path):
    img = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(img)
    code, out, err = run_cli(capsys, "detect", det_model, img, "-o", tmp_path / "d")
    assert code == 0, err
    rec = json.loads((tmp_path / "d" / "big.json").read_text())
    assert rec["size"] == [64, 48] and rec["model_input"] == [32, 24]
    from codegen.frontend import images
    from runtime import golden

    x, _ = images.load_pictures([img], (3, 24, 32))
    want = golden.run(modelfile.load(det_model), x).detections[0]
    assert [d["box"] + [d["score"]] for d in rec["detections"]] == [r[1:] for r in want.tolist()]
    for d in rec["detections"]:  # boxes mapped back to the original image: twice the model input here
        assert d["box_original"] == [2.0 * v for v in d["box"]]
    assert (tmp_path / "d" / "big.png").read_bytes()[:8] == PNG
    assert json.loads((tmp_path / "d" / "detections.json").read_text())[0]["image"] == str(img)


def test_detect_and_run_errors(det_model, det_files, capsys, tmp_path):
    gif = tmp_path / "a.gif"
    Image.new("RGB", (8, 8)).save(gif)
    txt = tmp_path / "n.png"
    txt.write_text("not an image")
    one_line_error(*run_cli(capsys, "detect", det_model, gif, "-o", tmp_path / "o")[::2], "a.gif", "GIF", "JPEG or PNG")
    one_line_error(*run_cli(capsys, "detect", det_model, txt, "-o", tmp_path / "o")[::2], "n.png", "not a readable")
    one_line_error(*run_cli(capsys, "detect", det_model, tmp_path / "missing.jpg", "-o", tmp_path / "o")[::2],
                   "missing.jpg")
    one_line_error(*run_cli(capsys, "run", det_model, "--dataset", "mnist", "--report", tmp_path / "r")[::2],
                   "is a detector", "detection dataset")
    # a classifier ANN with a detection dataset, and the reverse
    one_line_error(*run_cli(capsys, "convert", det_files[1], "--dataset", "mnist", "-o", tmp_path / "x.pt")[::2],
                   "is a detector", "classification dataset")
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.pt").exists()


def test_training_is_reproducible_from_the_seed(det_files):
    """Two short runs from one seed give identical weights and meta; another seed differs."""
    name = det_files[0]
    kw = dict(epochs=2, batch_size=2, size=(32, 24), channels=3, widths=(4, 8), body=1, dataset=name, progress=False,
              obj_weight=(2.0, 4.0), threads=1)
    a, ma = train_det.train("bccd-det", seed=0, **kw)
    b, mb = train_det.train("bccd-det", seed=0, **kw)
    c, _ = train_det.train("bccd-det", seed=1, **kw)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and ma == mb
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert ma["task"] == "detect" and ma["head"]["classes"] == ["cat", "dog"] and ma["head"]["stride"] == 2
    assert ma["head"]["score_threshold"] in train_det.THRESHOLDS and ma["head"]["peak"] in (0, 1)


def test_score_threshold_options(det_model, det_files, capsys, tmp_path):
    """detect --score-threshold decodes with another threshold (fewer detections when higher); convert
    --score-threshold records it in the head; a classifier refuses it."""
    img = tmp_path / "i.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(img)
    counts = []
    for t in ("-100", "100"):
        code, out, err = run_cli(capsys, "detect", det_model, img, "-o", tmp_path / f"d{t}", "--score-threshold", t)
        assert code == 0, err
        counts.append(len(json.loads((tmp_path / f"d{t}" / "i.json").read_text())["detections"]))
    assert counts[0] > counts[1] == 0
    name, ann_path, root = det_files
    out = tmp_path / "t.pt"
    code, _, err = run_cli(capsys, "convert", ann_path, "--dataset", name, "--Q", "1.5", "--T", "8", "-o", out, "-q",
                           "--score-threshold", "0.75")
    assert code == 0, err
    m = modelfile.load(out)
    assert m.head.score_threshold == int(np.ceil(0.75 / m.meta["readout_unit"]))
    mlp = Path(__file__).resolve().parents[1] / "models" / "mnist-mlp.ann.pt"
    one_line_error(*run_cli(capsys, "convert", mlp, "--dataset", "mnist", "-o", tmp_path / "c.pt",
                            "--score-threshold", "1")[::2], "--score-threshold applies to detectors")
    one_line_error(*run_cli(capsys, "detect", det_model, img, "-o", tmp_path / "e", "--score-threshold", "inf")[::2],
                   "--score-threshold must be")


def test_detect_refuses_names_that_would_collide(det_model, capsys, tmp_path):
    """An image named like the summary or the manifest, or two names that differ only in case."""
    for a, b, needle in (("detections.png", None, "would overwrite the summary"),
                         ("Manifest.png", None, "would overwrite the summary"),
                         ("A.png", "a.jpg", "letter case aside")):
        files = []
        for n in [a] + ([b] if b else []):
            (tmp_path / n).parent.mkdir(exist_ok=True)
            Image.new("RGB", (32, 24)).save(tmp_path / n)
            files.append(tmp_path / n)
        one_line_error(*run_cli(capsys, "detect", det_model, *files, "-o", tmp_path / "out")[::2], needle)
        assert not (tmp_path / "out").exists()


def test_run_on_own_images_writes_the_detections(det_model, capsys, tmp_path):
    from runtime import golden

    m = modelfile.load(det_model)
    x = np.random.default_rng(3).integers(0, 256, (3, 3, 24, 32), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    code, out, err = run_cli(capsys, "run", det_model, "--input", tmp_path / "x.npy", "--report", tmp_path / "r", "-q")
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    want = golden.run(m, x).detections
    assert [[[d["class_index"]] + d["box"] + [d["score"]] for d in img] for img in rep["detections"]] == \
        [w.tolist() for w in want]


def test_lut_manifest_records_the_head(det_model, capsys, tmp_path):
    code, _, err = run_cli(capsys, "emit", det_model, "--target", "lut", "-o", tmp_path / "lut")
    assert code == 0, err
    man = json.loads((tmp_path / "lut" / "manifest.json").read_text())
    assert man["spec"]["task"] == "detect" and man["spec"]["head"] == modelfile.load(det_model).head.to_dict()
