"""Detection metrics: COCO box mAP (through pycocotools) and Edge Impulse FOMO's centroid F1.

Formats shared by every function here:

* detections of one image: an array ``(n, 6)`` of rows ``(class, x0, y0, x1, y1, score)``, class in
  ``0..K-1``, box corners in pixels of the model input (``x1``, ``y1`` are exclusive edges, so the
  width is ``x1 - x0``);
* ground truth of one image: ``(boxes (m, 4) x0, y0, x1, y1, labels (m,) int)``;
* a set: one list entry per image for each, plus ``classes`` (the K class names).
"""
from __future__ import annotations

import contextlib
import io
import math

import numpy as np

__all__ = ["coco_eval", "fomo_f1", "iou"]


def iou(a, b) -> float:
    """Intersection over union of two boxes ``(x0, y0, x1, y1)`` (exclusive edges); 0.0 when the union is empty."""
    ax0, ay0, ax1, ay1 = (float(v) for v in np.asarray(a, dtype=np.float64).reshape(4))
    bx0, by0, bx1, by1 = (float(v) for v in np.asarray(b, dtype=np.float64).reshape(4))
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = max(0.0, ax1 - ax0) * max(0.0, ay1 - ay0) + max(0.0, bx1 - bx0) * max(0.0, by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def _as_dets(d, k: int, i: int) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    if d.size == 0:
        return np.zeros((0, 6))
    if d.ndim != 2 or d.shape[1] != 6:
        raise ValueError(f"detections of image {i}: expected shape (n, 6), got {d.shape}")
    c = d[:, 0]
    if np.any(c != np.round(c)) or np.any(c < 0) or np.any(c >= k):
        raise ValueError(f"detections of image {i}: class ids must be integers in 0..{k - 1}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"detections of image {i}: non-finite values")
    return d


def _as_gt(g, k: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    boxes, labels = g
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(boxes) != len(labels):
        raise ValueError(f"ground truth of image {i}: {len(boxes)} boxes but {len(labels)} labels")
    if np.any(labels < 0) or np.any(labels >= k):
        raise ValueError(f"ground truth of image {i}: labels must be in 0..{k - 1}")
    return boxes, labels


def _check(dets: list, gts: list, classes: list[str]):
    if len(dets) != len(gts):
        raise ValueError(f"{len(dets)} detection entries but {len(gts)} ground-truth entries (one per image each)")
    k = len(classes)
    if k == 0:
        raise ValueError("classes is empty")
    return ([_as_dets(d, k, i) for i, d in enumerate(dets)], [_as_gt(g, k, i) for i, g in enumerate(gts)])


def coco_eval(dets: list, gts: list, classes: list[str]) -> dict:
    """COCO box evaluation (pycocotools ``COCOeval``, iouType ``"bbox"``, default parameters).

    Ground truth and results are built in memory (bbox ``[x0, y0, w, h]``, area ``w * h``, iscrowd 0,
    category ids ``1..K``, image ids ``1..N``); pycocotools' printing is suppressed.

    Returns ``{"map50", "map", "per_class", "pr50"}``:

    * ``per_class[name] = {"ap50", "ap", "n_gt", "n_det"}``: ``ap50`` is the mean over the 101 recall
      points of ``eval["precision"][0, :, k, 0, 2]`` (IoU 0.5, area "all", maxDets 100), ``ap`` the
      same averaged over the IoU thresholds 0.50:0.05:0.95 (AP@[.5:.95]); entries of -1 are left out
      as COCO does. ``n_gt``/``n_det`` count all boxes of the class given (before any maxDets cut).
    * ``map50``, ``map``: mean of the per-class values over the classes that have ground truth.
      A class with no ground-truth box gets ``ap50 = ap = NaN`` and is excluded from the mAP
      (NaN when no class has ground truth).
    * ``pr50[name] = (recall (101,), precision (101,))``: COCO's interpolated precision at the
      recall thresholds 0, 0.01, ..., 1 at IoU 0.5 (0 beyond the highest recall reached; NaN for a
      class without ground truth).

    maxDets is COCO's default ``[1, 10, 100]``, the numbers above use 100. pycocotools applies it per
    image *and class*: if an image has more than 100 detections of one class, only the 100 with the
    highest scores count (ties keep input order). BCCD has at most about 30 objects per image.

    Images without detections or without ground truth are fine. With no detections at all
    (pycocotools' ``loadRes`` cannot take an empty list) every class with ground truth gets AP 0.
    """
    dets, gts = _check(dets, gts, classes)
    k = len(classes)
    n_gt = np.zeros(k, dtype=np.int64)
    n_det = np.zeros(k, dtype=np.int64)
    images, anns, results = [], [], []
    for i, (d, (boxes, labels)) in enumerate(zip(dets, gts)):
        images.append({"id": i + 1})
        for b, c in zip(boxes, labels):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            # ids from 1: COCOeval treats a matched gt id of 0 as "no match"
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": 0})
            n_gt[c] += 1
        for row in d:
            c = int(row[0])
            results.append({"image_id": i + 1, "category_id": c + 1,
                            "bbox": [float(row[1]), float(row[2]), float(row[3] - row[1]), float(row[4] - row[2])],
                            "score": float(row[5])})
            n_det[c] += 1

    rec_thrs = np.linspace(0.0, 1.0, 101)  # COCOeval's Params.recThrs
    ap50 = np.full(k, np.nan)
    ap = np.full(k, np.nan)
    prec50 = np.full((k, 101), np.nan)
    if not results:
        ap50[n_gt > 0] = 0.0
        ap[n_gt > 0] = 0.0
        prec50[n_gt > 0] = 0.0
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            gt_api = COCO()
            gt_api.dataset = {"images": images, "annotations": anns,
                              "categories": [{"id": j + 1, "name": str(n)} for j, n in enumerate(classes)]}
            gt_api.createIndex()
            dt_api = gt_api.loadRes(results)
            ev = COCOeval(gt_api, dt_api, iouType="bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        rec_thrs = np.asarray(ev.params.recThrs, dtype=np.float64)
        p = ev.eval["precision"]  # [T, R, K, A, M]
        a_all = ev.params.areaRngLbl.index("all")
        m100 = ev.params.maxDets.index(100)
        for j in range(k):
            pk = p[:, :, j, a_all, m100]
            if n_gt[j] == 0 or not np.any(pk > -1):
                continue
            ap50[j] = float(np.mean(pk[0][pk[0] > -1]))
            ap[j] = float(np.mean(pk[pk > -1]))
            prec50[j] = pk[0]
    has = ~np.isnan(ap50)
    return {
        "map50": float(np.mean(ap50[has])) if has.any() else math.nan,
        "map": float(np.mean(ap[has])) if has.any() else math.nan,
        "per_class": {str(n): {"ap50": float(ap50[j]), "ap": float(ap[j]), "n_gt": int(n_gt[j]),
                               "n_det": int(n_det[j])} for j, n in enumerate(classes)},
        "pr50": {str(n): (rec_thrs.copy(), prec50[j].copy()) for j, n in enumerate(classes)},
    }


def _prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": int(tp), "fp": int(fp), "fn": int(fn)}


def fomo_f1(dets: list, gts: list, classes: list[str], image_width: int, radius: float = 0.2) -> dict:
    """Centroid precision/recall/F1 in the manner of Edge Impulse FOMO (which reports F1, not mAP).

    Edge Impulse does not publish the exact code of the Studio's FOMO score, so this is the
    definition used here: per image and class, the predicted centroids (box centres) are taken in
    descending score order (ties: input order), and each is matched to the nearest not-yet-matched
    ground-truth box centre of the same class at a Euclidean distance ``<= radius * image_width``
    pixels. A matched prediction is a TP, an unmatched one a FP (a prediction of the wrong class is a
    FP and leaves that ground truth a FN), an unmatched ground-truth box a FN.

    Returns ``{"per_class": {name: S}, "overall": S, "radius_px": float}`` with
    ``S = {"precision", "recall", "f1", "tp", "fp", "fn"}``; ``overall`` is the micro average
    (TP/FP/FN summed over classes). A precision, recall or F1 whose denominator is 0 is 0.0.
    """
    dets, gts = _check(dets, gts, classes)
    if not radius > 0 or not image_width > 0:
        raise ValueError("radius and image_width must be positive")
    k = len(classes)
    rpx = float(radius) * float(image_width)
    tp = np.zeros(k, dtype=np.int64)
    fp = np.zeros(k, dtype=np.int64)
    fn = np.zeros(k, dtype=np.int64)
    for d, (boxes, labels) in zip(dets, gts):
        for c in range(k):
            dc = d[d[:, 0] == c]
            dc = dc[np.argsort(-dc[:, 5], kind="stable")]
            pc = np.stack([(dc[:, 1] + dc[:, 3]) / 2, (dc[:, 2] + dc[:, 4]) / 2], axis=1)
            gb = boxes[labels == c]
            gc = np.stack([(gb[:, 0] + gb[:, 2]) / 2, (gb[:, 1] + gb[:, 3]) / 2], axis=1)
            free = np.ones(len(gc), dtype=bool)
            for pt in pc:
                dist = np.hypot(gc[:, 0] - pt[0], gc[:, 1] - pt[1])
                dist[~free] = np.inf
                j = int(np.argmin(dist)) if len(dist) else -1
                if j >= 0 and dist[j] <= rpx:
                    free[j] = False
                    tp[c] += 1
                else:
                    fp[c] += 1
            fn[c] += int(free.sum())
    return {"per_class": {str(n): _prf(tp[j], fp[j], fn[j]) for j, n in enumerate(classes)},
            "overall": _prf(int(tp.sum()), int(fp.sum()), int(fn.sum())),
            "radius_px": rpx}
