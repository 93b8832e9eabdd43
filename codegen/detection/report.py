"""``codegen run`` on a detector: the golden model's detections scored against the split's boxes, next
to the float ANN and float one-spike figures that the conversion measured on the same split, and the
PNGs (test images with ground-truth and predicted boxes, precision-recall curves)."""
from __future__ import annotations

import numpy as np

from . import evaluate, plots

def readout_unit(m) -> float | None:
    """The real value of one readout accumulator unit that conversion recorded, or None (absent or not a
    positive finite number: meta is free-form)."""
    import math

    u = m.meta.get("readout_unit") if isinstance(m.meta, dict) else None
    if isinstance(u, bool) or not isinstance(u, (int, float)) or not math.isfinite(u) or u <= 0:
        return None
    return float(u)


def _recorded(m, split: str):
    """The figures conversion recorded for ``split`` (three networks), if they are well-formed."""
    figs = m.meta.get("figures") if isinstance(m.meta, dict) else None
    rec = figs.get(split) if isinstance(figs, dict) else None
    if not isinstance(rec, dict):
        return None
    ok = all(isinstance(v, dict) and isinstance(v.get("map50"), (int, float)) and isinstance(v.get("per_class"), dict)
             and isinstance(v.get("fomo"), dict) for v in rec.values())
    return rec if ok else None


COLUMNS = (("ann_float", "ANN float"), ("onespike_float", "one-spike float"), ("integer", "one-spike integer"))
N_DRAWN = 8  # images drawn in detections.png


def detection_report(m, ds, res, full_split: bool) -> tuple[dict, str, dict]:
    """(figures for report.json, the text table, PNGs {name: bytes}) of a golden run on ``ds``."""
    integer = evaluate.score(res.detections, ds)
    recorded = _recorded(m, ds.split) if full_split and m.meta.get("dataset") == ds.name else None
    cols, notes = {}, []
    for key, label in COLUMNS:
        if key == "integer":
            cols[label] = integer
        elif recorded and key in recorded:
            cols[label] = recorded[key]
    if recorded:
        notes.append("float columns: measured by codegen convert on the same split; the integer column: this run")
        rec = recorded.get("integer", {})
        if rec and abs(rec.get("map50", -1) - integer["map50"]) > 1e-12:
            notes.append(f"note: the integer mAP@0.5 differs from the conversion's ({rec['map50']:.4f}): the model or "
                         f"the data changed since")
    else:
        notes.append("float columns: not recorded for this split / subset (codegen convert measures val and test)")
    text = evaluate.format_table(cols, list(m.head.classes),
                                 title=f"detection on {ds.name} {ds.split} ({len(res.detections)} images)")
    text += "\n" + "\n".join(notes)
    k = min(N_DRAWN, len(ds.images))
    unit = readout_unit(m)
    drawn = []
    for d in res.detections[:k]:  # scores drawn in logit units when the conversion recorded the unit
        d = np.asarray(d, dtype=np.float64).copy()
        if unit:
            d[:, 5] *= unit
        drawn.append(d)
    figs = {
        "detections.png": plots.detections_png(ds.images[:k], list(zip(ds.boxes[:k], ds.labels[:k])),
                                               drawn, list(m.head.classes),
                                               title=f"{ds.name} {ds.split}: ground truth dashed, integer model solid"),
        "pr_curves.png": plots.pr_curves_png(integer["_pr50"], integer["per_class"]),
    }
    out = {"dataset": ds.name, "split": ds.split, "integer": evaluate.public(integer),
           "recorded_at_conversion": recorded}
    return out, text, figs


def detections_json(dets: np.ndarray, classes, scale_xy=(1.0, 1.0), unit: float | None = None) -> list[dict]:
    """One image's detections as JSON records: box in model-input pixels and in the original image."""
    sx, sy = scale_xy
    out = []
    for c, x0, y0, x1, y1, s in np.asarray(dets).tolist():
        r = {"class": classes[int(c)], "class_index": int(c), "score": int(s),
             "box": [int(x0), int(y0), int(x1), int(y1)],
             "box_original": [round(x0 * sx, 1), round(y0 * sy, 1), round(x1 * sx, 1), round(y1 * sy, 1)]}
        if unit is not None:
            r["score_logit"] = round(int(s) * unit, 4)
        out.append(r)
    return out


def annotated_png(path, dets: np.ndarray, classes, scale_xy) -> bytes:
    """The original image with the detections drawn (boxes mapped back from the model input), as PNG bytes."""
    import io

    from PIL import Image, ImageDraw

    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    sx, sy = scale_xy
    with Image.open(path) as im:
        im = im.convert("RGB")
    draw = ImageDraw.Draw(im)
    for c, x0, y0, x1, y1, s in np.asarray(dets).tolist():
        col = palette[int(c) % len(palette)]
        box = [x0 * sx, y0 * sy, max(x0 * sx, x1 * sx - 1), max(y0 * sy, y1 * sy - 1)]
        draw.rectangle(box, outline=col, width=max(1, round(min(im.size) / 200)))
        draw.text((box[0] + 2, box[1] + 1), str(classes[int(c)]), fill=col)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
