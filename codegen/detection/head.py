"""The detection head's parameters between the float world and the integer specification.

A detector's readout map is in real units in the ANN (class logits, box channels in grid cells) and in
accumulator units in the integer model (``real = acc * unit``, one ``unit`` for the whole readout
layer). :func:`integer_head` turns the real decode parameters (a score threshold in logit units, the
grid stride, the suppression settings) into the integer :class:`runtime.spec.DetectHead` for a given
``unit``; :func:`decode_real` decodes a float map with the very same integer rules, after rounding it
to that unit, so the float ANN, the float one-spike network and the integer model are all decoded alike.
"""
from __future__ import annotations

import math

import numpy as np

from runtime.errors import UserError
from runtime.spec import DetectHead, decode_detections

BOX_MULT_BITS = 15  # box_mult lies in [2**14, 2**15): 15 significant bits of the pixel scale
FLOAT_UNIT = 1.0 / 4096  # the accumulator unit used to decode float maps before conversion


def integer_head(classes, stride: int, score_threshold: float, unit: float, nms_iou_percent: int = 50,
                 max_detections: int = 64, peak: int = 1) -> DetectHead:
    """The integer head for a readout whose accumulator unit is ``unit`` (real value per unit).

    ``px(v) = (v * box_mult + 2**(box_shift-1)) >> box_shift`` approximates ``v * unit * stride``
    (box channels are in grid cells); the score threshold is ``ceil(score_threshold / unit)``."""
    if not (isinstance(unit, float) and math.isfinite(unit) and unit > 0):
        raise UserError(f"readout unit must be a positive number, not {unit!r}")
    scale = unit * stride  # pixels per accumulator unit of a box channel
    shift = BOX_MULT_BITS - 1 - math.floor(math.log2(scale))
    mult = int(round(scale * 2.0 ** shift))
    if mult >= 1 << BOX_MULT_BITS:  # rounding up to the next power of two
        shift -= 1
        mult = int(round(scale * 2.0 ** shift))
    if not 1 <= shift <= 62:
        raise UserError(f"the readout's scale ({scale:g} pixels per unit) cannot be decoded with a shift of 1..62")
    return DetectHead(classes=list(classes), stride=int(stride), score_threshold=int(math.ceil(score_threshold / unit)),
                      box_mult=mult, box_shift=int(shift), nms_iou_percent=int(nms_iou_percent),
                      max_detections=int(max_detections), peak=int(peak))


def to_units(maps: np.ndarray, unit: float) -> np.ndarray:
    """Real maps rounded to accumulator units (int64), saturated to int32 like an accumulator."""
    q = np.floor(np.asarray(maps, dtype=np.float64) / unit + 0.5)
    return np.clip(q, -(1 << 31), (1 << 31) - 1).astype(np.int64)


def decode_real(maps: np.ndarray, head_real: dict, input_hw, unit: float = FLOAT_UNIT) -> list[np.ndarray]:
    """Detections of float maps (N, C, GH, GW) in real units, decoded by the integer rules.

    ``head_real``: {"classes", "stride", "score_threshold" (real), "nms_iou_percent", "max_detections", "peak"}.
    The scores of the result are real numbers again (float64 column)."""
    head = integer_head(head_real["classes"], head_real["stride"], float(head_real["score_threshold"]), unit,
                        head_real.get("nms_iou_percent", 50), head_real.get("max_detections", 64),
                        head_real.get("peak", 1))
    out = []
    for m in to_units(maps, unit):
        d = decode_detections(m, head, input_hw).astype(np.float64)
        d[:, 5] *= unit
        out.append(d)
    return out


def real_head(head: DetectHead, unit: float) -> dict:
    """The real parameters of an integer head (the inverse of :func:`integer_head`, up to rounding)."""
    return {"classes": list(head.classes), "stride": head.stride, "score_threshold": head.score_threshold * unit,
            "nms_iou_percent": head.nms_iou_percent, "max_detections": head.max_detections, "peak": head.peak}
