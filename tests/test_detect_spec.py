"""The detection head's integer decode (runtime.spec) against a plain-Python reading of the spec, and
the detector model file (schema 2)."""
import numpy as np
import pytest
import torch

from runtime import golden, modelfile
from runtime.errors import UserError
from runtime.spec import DetectHead, decode_detections, validate

from randmodels import random_detector, random_head, random_images
from spec_reference import decode_reference


def _random_map(rng, K, gh, gw, lo, hi):
    return rng.integers(lo, hi, size=(1 + K + 4, gh, gw)).astype(np.int64)


@pytest.mark.parametrize("lo,hi", [(-3, 4), (-40, 40), (-(1 << 31), (1 << 31) - 1)])
def test_decode_equals_plain_python_reading(lo, hi):
    """Small ranges give ties and plateaus (the raster-order rule), the full int32 range the int64 steps."""
    rng = np.random.default_rng(lo & 0xFFFF)
    n_checked = n_dets = 0
    for trial in range(150):
        K = int(rng.integers(1, 4))
        gh, gw = int(rng.integers(1, 7)), int(rng.integers(1, 8))
        stride = int(rng.integers(1, 9))
        H, W = gh * stride, gw * stride
        head = random_head(rng, [f"k{j}" for j in range(K)], stride,
                           score_threshold=int(rng.integers(lo // 2, max(lo // 2 + 1, hi // 2))))
        L = _random_map(rng, K, gh, gw, lo, hi)
        got = decode_detections(L, head, (H, W))
        want = decode_reference(L.tolist(), head, H, W)
        assert got.dtype == np.int64 and got.shape == (len(want), 6)
        assert got.tolist() == want, f"trial {trial}"
        n_checked += 1
        n_dets += len(want)
    assert n_dets > 50  # the maps do produce detections, so the comparison is not vacuous


def _head(**kw):
    d = dict(classes=["a", "b"], stride=8, score_threshold=10, box_mult=1, box_shift=1, nms_iou_percent=50,
             max_detections=10)
    d.update(kw)
    return DetectHead(**d)


def test_touching_objects_stay_apart_and_duplicates_are_suppressed():
    # one class, three peaks: cells (1, 1) and (1, 3) two cells apart (touching objects), and (1, 4)
    # next to (1, 3) but lower: not a local maximum
    K, gh, gw = 2, 3, 6
    L = np.zeros((1 + K + 4, gh, gw), np.int64)
    L[1, 1, 1], L[1, 1, 3], L[1, 1, 4] = 100, 90, 80
    L[2] = -5  # class b everywhere lower: class a wins
    # box channels with box_mult / 2**box_shift = 1/2: px(v) = (v + 1) >> 1
    L[3:5] = 8   # dx = dy = 4 px
    L[5:7] = 32  # w = h = 16 px
    dets = decode_detections(L, _head(), (24, 48))
    assert dets.tolist() == [[0, 4, 4, 20, 20, 100], [0, 20, 4, 36, 20, 90]]
    # a wide box at the second peak (x 12..44) overlaps the first (4..20) with IoU 128 / 640 = 20%:
    # suppressed at 19%, kept at 20% (the test is strict: 100 * inter > percent * union)
    L[5, 1, 3] = 64
    assert decode_detections(L, _head(nms_iou_percent=19), (24, 48)).tolist() == [[0, 4, 4, 20, 20, 100]]
    assert len(decode_detections(L, _head(nms_iou_percent=20), (24, 48))) == 2
    assert len(decode_detections(L, _head(nms_iou_percent=100), (24, 48))) == 2
    assert len(decode_detections(L, _head(max_detections=1), (24, 48))) == 1
    # a cell of another class next to a peak does not suppress it
    L2 = np.zeros_like(L)
    L2[1, 1, 1], L2[2, 1, 2] = 50, 60
    L2[3:7] = 16
    assert [d[0] for d in decode_detections(L2, _head(), (24, 48))] == [1, 0]


def test_golden_run_decodes_every_image_and_model_file_round_trips(tmp_path):
    m = random_detector(3)
    x = random_images(np.random.default_rng(0), m, 8)
    r = golden.run(m, x)
    assert len(r.detections) == 8
    shape = m.layers[-1].out_shape
    for row, d in zip(r.logits, r.detections):
        assert d.tolist() == decode_reference(row.reshape(shape).tolist(), m.head, 16, 20)
    p = tmp_path / "det.pt"
    modelfile.save(m, p)
    m2 = modelfile.load(p)
    assert m2.task == "detect" and m2.head == m.head
    assert [d.tolist() for d in golden.run(m2, x).detections] == [d.tolist() for d in r.detections]


def test_model_file_versions_and_bad_heads(tmp_path):
    m = random_detector(4)
    obj = modelfile.to_dict(m)
    assert obj["schema_version"] == 2 and obj["task"] == "detect"
    p = tmp_path / "m.pt"
    for change, match in [
        (lambda o: o.update(schema_version=3), r"schema version 3 is not supported \(this codegen reads versions 1, 2"),
        (lambda o: o.update(task="segment"), "task must be one of classify, detect"),
        (lambda o: o.update(head=None), "a detector needs a head dict"),
        (lambda o: o["head"].pop("box_shift"), "detection head lacks field 'box_shift'"),
        (lambda o: o["head"].update(box_mult=0), r"box_mult must be an integer in 1\.\."),
        (lambda o: o["head"].update(classes=["a"]), "the readout has 7 channels but 1 classes need 6"),
        (lambda o: o["head"].update(classes=["a", "a"]), "class names must be distinct"),
        (lambda o: o.update(schema_version=2.0), r"schema version 2\.0 is not supported"),
        (lambda o: o.update(schema_version=True), "schema version True is not supported"),
        (lambda o: o.update(schema_version=1), "a one-spike model|must be"),  # v1: a classifier, no head read
    ]:
        o = modelfile.to_dict(m)
        change(o)
        torch.save(o, p)
        if type(o["schema_version"]) is int and o["schema_version"] == 1:
            assert modelfile.load(p).task == "classify"  # a version-1 file is a classifier
            continue
        with pytest.raises(UserError, match=match):
            modelfile.load(p)
    m.head = None
    with pytest.raises(UserError, match="needs a detection head"):
        validate(m)
