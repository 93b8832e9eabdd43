"""Detector evaluation: the three networks of a conversion (float ANN, float one-spike network, integer
model) decoded alike and scored with COCO mAP and FOMO's centroid F1, and the text table of them."""
from __future__ import annotations

import numpy as np

from runtime.spec import IntModel

from . import metrics
from .head import decode_real, real_head


def score(dets: list, ds) -> dict:
    """The figures of one network's detections on a loaded split (``codegen.frontend.voc.DetSet``)."""
    gts = list(zip(ds.boxes, ds.labels))
    coco = metrics.coco_eval(dets, gts, ds.classes)
    fomo = metrics.fomo_f1(dets, gts, ds.classes, image_width=int(ds.images.shape[3]))
    per = {k: {"ap50": v["ap50"], "ap": v["ap"], "n_gt": v["n_gt"], "n_det": v["n_det"],
               "fomo_precision": fomo["per_class"][k]["precision"], "fomo_recall": fomo["per_class"][k]["recall"],
               "fomo_f1": fomo["per_class"][k]["f1"]} for k, v in coco["per_class"].items()}
    o = fomo["overall"]
    return {"images": len(dets), "map50": coco["map50"], "map": coco["map"], "per_class": per,
            "fomo": {"precision": o["precision"], "recall": o["recall"], "f1": o["f1"], "tp": o["tp"], "fp": o["fp"],
                     "fn": o["fn"], "radius_px": fomo["radius_px"]},
            "detections_per_image": float(np.mean([len(d) for d in dets])) if dets else 0.0,
            "_pr50": coco["pr50"]}


def unit_of(model: IntModel) -> float:
    """The real value of one accumulator unit of a converted detector's readout (recorded at conversion)."""
    return float(model.meta["readout_unit"])


def float_detections(maps: np.ndarray, model: IntModel) -> list:
    """Detections of real-valued readout maps decoded with the integer model's head, at its unit."""
    u = unit_of(model)
    return decode_real(maps, real_head(model.head, u), tuple(model.input_shape[1:]), unit=u)


def public(figures: dict) -> dict:
    """The figures without the PR curves (for JSON reports)."""
    return {k: v for k, v in figures.items() if not k.startswith("_")}


def format_table(columns: dict, classes: list, title: str = "") -> str:
    """Per-class AP@0.5, mAP@0.5, mAP@[.5:.95] and FOMO P/R/F1, one column per network."""
    names = list(columns)
    w = max(18, max(len(n) for n in names) + 2)
    head = f"{'':<24}" + "".join(f"{n:>{w}}" for n in names)
    rows = [title] if title else []
    rows.append(head)

    def row(label, get, fmt="{:.3f}"):
        vals = []
        for n in names:
            v = get(columns[n])
            vals.append(f"{'n/a' if v is None or v != v else fmt.format(v):>{w}}")
        rows.append(f"{label:<24}" + "".join(vals))

    for k in classes:
        row(f"AP@0.5 {k}", lambda c, k=k: c["per_class"][k]["ap50"])
    row("mAP@0.5", lambda c: c["map50"])
    row("mAP@[.5:.95]", lambda c: c["map"])
    row("FOMO precision", lambda c: c["fomo"]["precision"])
    row("FOMO recall", lambda c: c["fomo"]["recall"])
    row("FOMO F1", lambda c: c["fomo"]["f1"])
    row("detections per image", lambda c: c["detections_per_image"], "{:.1f}")
    return "\n".join(rows)
