"""codegen.detection: COCO mAP through pycocotools on hand-built cases, the FOMO centroid F1, and the plots."""
import math

import numpy as np
import pytest

from codegen.detection.metrics import coco_eval, fomo_f1, iou
from codegen.detection.plots import detections_png, pr_curves_png

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def gt(boxes, labels):
    return (np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64))


def det(rows):
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


def test_iou():
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # exclusive edges: touching boxes do not overlap
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0


def test_coco_hand_ap():
    # 2 GT; detections by score: TP (0.9), FP (0.8), TP (0.7) -> (recall, precision) 0.5/1, 0.5/0.5, 1/(2/3).
    # COCO makes precision monotone from the right -> [1, 2/3, 2/3], then samples it at recall 0, .01, ..., 1:
    # the 51 points r <= 0.5 get 1, the 50 points r > 0.5 get 2/3.
    gts = [gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])]
    dets = [det([[0, 0, 0, 10, 10, 0.9], [0, 50, 50, 60, 60, 0.8], [0, 20, 20, 30, 30, 0.7]])]
    r = coco_eval(dets, gts, ["a", "b"])
    want = (51 * 1.0 + 50 * (2 / 3)) / 101
    a = r["per_class"]["a"]
    assert a["ap50"] == pytest.approx(want)
    assert a["ap"] == pytest.approx(want)  # both TPs have IoU 1, so every IoU threshold agrees
    assert (a["n_gt"], a["n_det"]) == (2, 3)
    # class b has no GT: NaN, excluded from the mean
    assert math.isnan(r["per_class"]["b"]["ap50"]) and math.isnan(r["per_class"]["b"]["ap"])
    assert r["map50"] == pytest.approx(want) and r["map"] == pytest.approx(want)
    rec, prec = r["pr50"]["a"]
    assert rec.shape == prec.shape == (101,)
    assert np.allclose(prec[:51], 1.0) and np.allclose(prec[51:], 2 / 3)
    assert np.all(np.isnan(r["pr50"]["b"][1]))


def test_coco_iou_thresholds():
    # IoU 0.72: a TP at thresholds .50, .55, .60, .65, .70 and a miss at .75 ... .95 -> AP@[.5:.95] = 5/10
    r = coco_eval([det([[0, 0, 0, 10, 7.2, 0.9]])], [gt([[0, 0, 10, 10]], [0])], ["a"])
    assert r["map50"] == pytest.approx(1.0)
    assert r["map"] == pytest.approx(0.5)


def test_coco_perfect_and_empty_images():
    gts = [gt([[0, 0, 10, 10], [30, 30, 40, 44]], [0, 1]), gt([], []), gt([[5, 5, 9, 9]], [2])]
    dets = [det([[0, 0, 0, 10, 10, 0.9], [1, 30, 30, 40, 44, 0.8]]), det([]), det([[2, 5, 5, 9, 9, 0.5]])]
    r = coco_eval(dets, gts, ["a", "b", "c"])
    assert r["map50"] == pytest.approx(1.0) and r["map"] == pytest.approx(1.0)
    assert all(v["ap50"] == pytest.approx(1.0) for v in r["per_class"].values())
    # an image with detections but no GT makes them FPs; here the FP scores lowest, so AP stays 1
    dets[1] = det([[0, 0, 0, 10, 10, 0.1]])
    assert coco_eval(dets, gts, ["a", "b", "c"])["per_class"]["a"]["ap50"] == pytest.approx(1.0)


def test_coco_all_miss_and_no_detections():
    gts = [gt([[0, 0, 10, 10]], [0]), gt([[20, 20, 30, 30]], [1])]
    miss = coco_eval([det([[0, 40, 40, 50, 50, 0.9]]), det([[0, 20, 20, 30, 30, 0.9]])], gts, ["a", "b", "c"])
    assert miss["map50"] == 0.0 and miss["map"] == 0.0  # wrong place, and right place but wrong class
    none = coco_eval([det([]), det([])], gts, ["a", "b", "c"])  # loadRes cannot take [], handled
    assert none["map50"] == 0.0 and none["map"] == 0.0
    assert none["per_class"]["a"]["ap50"] == 0.0 and math.isnan(none["per_class"]["c"]["ap50"])
    assert np.all(none["pr50"]["a"][1] == 0.0)


def test_coco_max_dets_per_image_and_class():
    # 100 higher-scored FPs push the one TP out of COCO's top 100 for that image and class
    fps = [[0, 50 + i, 50, 51 + i, 51, 0.9] for i in range(100)]
    r = coco_eval([det(fps + [[0, 0, 0, 10, 10, 0.1]])], [gt([[0, 0, 10, 10]], [0])], ["a"])
    assert r["per_class"]["a"]["n_det"] == 101 and r["map50"] == 0.0


def test_coco_bad_class():
    with pytest.raises(ValueError):
        coco_eval([det([[3, 0, 0, 1, 1, 0.5]])], [gt([], [])], ["a"])


def test_fomo_f1_cases():
    classes = ["a", "b"]
    g = [gt([[10, 10, 20, 20]], [0])]  # centre (15, 15); radius 0.2 * 100 = 20 px
    within = fomo_f1([det([[0, 20, 20, 40, 40, 0.9]])], g, classes, 100)  # centre (30, 30): 21.2 px > 20
    assert within["overall"]["tp"] == 0
    within = fomo_f1([det([[0, 20, 20, 30, 30, 0.9]])], g, classes, 100)  # centre (25, 25): 14.1 px
    assert within["radius_px"] == 20.0
    assert within["per_class"]["a"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 1, "fp": 0, "fn": 0}
    beyond = fomo_f1([det([[0, 60, 60, 70, 70, 0.9]])], g, classes, 100)["overall"]
    assert (beyond["tp"], beyond["fp"], beyond["fn"], beyond["f1"]) == (0, 1, 1, 0.0)
    wrong = fomo_f1([det([[1, 10, 10, 20, 20, 0.9]])], g, classes, 100)
    assert (wrong["per_class"]["a"]["fn"], wrong["per_class"]["b"]["fp"], wrong["overall"]["tp"]) == (1, 1, 0)
    two = fomo_f1([det([[0, 10, 10, 20, 20, 0.9], [0, 11, 11, 21, 21, 0.8]])], g, classes, 100)["overall"]
    assert (two["tp"], two["fp"], two["fn"]) == (1, 1, 0)
    assert two["precision"] == 0.5 and two["recall"] == 1.0 and two["f1"] == pytest.approx(2 / 3)
    empty = fomo_f1([det([])], [gt([], [])], classes, 100)["overall"]
    assert (empty["precision"], empty["recall"], empty["f1"]) == (0.0, 0.0, 0.0)


def test_fomo_f1_score_order_and_micro():
    # the higher-scored prediction takes its nearest GT first; the other is then matched to the remaining GT
    g = [gt([[0, 0, 10, 10], [12, 0, 22, 10]], [0, 0]), gt([[0, 0, 4, 4]], [1])]
    d = [det([[0, 6, 0, 16, 10, 0.5], [0, 1, 0, 11, 10, 0.9]]), det([[0, 0, 0, 4, 4, 0.9]])]
    r = fomo_f1(d, g, ["a", "b"], 32, radius=0.25)  # 8 px
    assert (r["per_class"]["a"]["tp"], r["per_class"]["a"]["fp"]) == (2, 1)
    assert r["per_class"]["b"]["fn"] == 1
    assert (r["overall"]["tp"], r["overall"]["fp"], r["overall"]["fn"]) == (2, 1, 1)
    assert r["overall"]["f1"] == pytest.approx(2 / 3)


def test_plots_write_pngs(tmp_path):
    gts = [gt([[2, 2, 10, 12]], [0]), gt([[4, 4, 8, 8], [1, 1, 3, 3]], [1, 0])]
    dets = [det([[0, 3, 2, 10, 12, 0.8]]), det([[1, 4, 4, 8, 9, 0.6], [0, 10, 10, 14, 15, 0.3]])]
    r = coco_eval(dets, gts, ["rbc", "wbc", "platelets"])
    pr_curves_png(r["pr50"], r["per_class"], tmp_path / "pr.png")
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (2, 1, 16, 16), dtype=np.uint8)
    detections_png(gray, gts, dets, ["rbc", "wbc", "platelets"], tmp_path / "gray.png", cols=3, title="t")
    rgb = rng.integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    detections_png(rgb, gts, dets, ["rbc", "wbc", "platelets"], tmp_path / "rgb.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gray.png", "pr.png", "rgb.png"]  # no temp files left
    for p in tmp_path.iterdir():
        data = p.read_bytes()
        assert len(data) > 1000 and data[:8] == PNG_SIG
