"""``codegen convert`` for a detector: the classifier's conversion (codegen/frontend/convert.py) with
the (Q, T) search counting grid cells, then the integer detection head for the readout's unit, and
the three networks (float ANN, float one-spike, integer) evaluated alike on val and test."""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from runtime import golden
from runtime.errors import UserError
from runtime.spec import validate

from ..frontend import convert as conv_mod
from ..frontend import voc
from ..frontend.quantise import readout_scale
from . import evaluate
from .head import integer_head

HEAD_KEYS = ("classes", "stride", "score_threshold", "nms_iou_percent", "max_detections")


def head_of(ann_meta: dict, source) -> dict:
    """The real decode parameters a detector's ANN file records (``meta["head"]``), checked."""
    h = ann_meta.get("head")
    if not isinstance(h, dict) or any(k not in h for k in HEAD_KEYS):
        raise UserError(f"{source}: a detector's ANN file must record meta['head'] with {', '.join(HEAD_KEYS)}")
    if not isinstance(h["classes"], list) or not h["classes"]:
        raise UserError(f"{source}: meta['head']['classes'] must be a non-empty list of names")
    if h.get("peak", 1) not in (0, 1):
        raise UserError(f"{source}: meta['head']['peak'] must be 0 or 1, not {h.get('peak')!r}")
    return h


def convert(net, input_shape, ann_meta: dict, dataset: str, source, calib: int = 10000, seed: int = 0,
            progress: bool = True, **options):
    """Convert a detector ANN; returns the :class:`~codegen.frontend.convert.Conversion` (model with its
    head and meta figures) and the figures {split: {network: figures}} for val and test."""
    h = head_of(ann_meta, source)
    c, hh, ww = input_shape
    size = (ww, hh)
    tr = voc.load(dataset, "train", size, c, classes=list(h["classes"]), progress=progress)
    rng = np.random.default_rng(seed)
    x = tr.images[np.sort(rng.choice(len(tr.images), size=min(calib, len(tr.images)), replace=False))]
    k1 = 1 + len(h["classes"])
    conv = conv_mod.convert(net, input_shape, x, progress=progress, score_channels=k1,
                            score_threshold=float(h["score_threshold"]), **options)
    m = conv.model
    unit = readout_scale(conv.normalised.stages[-1].weight) / float(2 ** m.F)
    m.task = "detect"
    m.head = integer_head(h["classes"], int(h["stride"]), float(h["score_threshold"]), unit,
                          int(h["nms_iou_percent"]), int(h["max_detections"]), int(h.get("peak", 1)))
    m.meta["readout_unit"] = unit
    validate(m)
    figures = {}
    for split in ("val", "test"):
        ds = voc.load(dataset, split, size, c, classes=list(h["classes"]), progress=progress)
        figures[split] = networks(conv, ds, progress)
    return conv, figures


def networks(conv, ds, progress: bool = False) -> dict:
    """The figures of the float ANN, the float one-spike network and the integer model on ``ds``."""
    m = conv.model
    bar = tqdm(total=3, desc=f"evaluate {ds.split}", disable=not progress, leave=False)
    out = {}
    out["ann_float"] = evaluate.score(evaluate.float_detections(conv_mod.ann_maps(conv.lowered, ds.images), m), ds)
    bar.update(1)
    maps = conv_mod.onespike_maps(conv.normalised, ds.images, m.Q, m.T, input_Q=m.input_Q, input_T=m.input_T)
    out["onespike_float"] = evaluate.score(evaluate.float_detections(maps, m), ds)
    bar.update(1)
    res = golden.run_batched(m, ds.images)
    out["integer"] = evaluate.score(res.detections, ds)
    bar.update(1)
    bar.close()
    return out
