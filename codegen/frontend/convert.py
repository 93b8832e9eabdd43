"""ANN -> one-spike SNN conversion (seed 004, One-Spike SNN) and lowering to the integer specification.

Pipeline (``convert``):

1. **Lower** the PyTorch ``nn.Sequential`` into float stages: fold BatchNorm into the preceding
   Conv2d/Linear, drop Dropout/Identity, attach each ReLU to its affine layer (a ReLU after a MaxPool
   commutes with it), check every shape.
2. **Calibrate**: run the float ANN on calibration images and take, per channel of every firing stage,
   the activation scale ``lambda`` (``max`` or a ``percentile`` of the positive activations; ``none``:
   1, for an ANN already in the one-spike units, as ``codegen finetune`` writes them).
3. **Normalise**: ``W' = W * lambda_in / lambda_out``, ``b' = b / lambda_out``, so activations live in
   [0, 1] where single-spike phase coding represents ``Q**-f``.
4. **Quantise** for a base Q and T phases: int8 weights per output channel (scale ``s_o``), the decode
   table ``D``, bias ``B = round(b' / s_o * 2**F)``, thresholds ``Theta[o, f] = ceil(theta_f * 2**F / s_o)``
   with the seed's threshold shift ``theta_f = Q**-f (1 + 1/Q) / 2``. The readout layer uses one scale
   for the whole layer so that argmax over its integer logits equals argmax over the real values.
   ``F`` is the largest number of fraction bits (<= ``max_F``) for which the range analysis fits every
   accumulator in ``MAX_ACC_BITS``.
5. **Choose (Q, T)** (base manipulation) unless given. The error target is the share of held-out
   calibration images (``eval_fraction`` of them, not used for the statistics) whose integer-model class
   differs from the ANN's class: at most ``max_disagree`` percent. The cheapest pair that meets it
   wins: the smallest T (fewest phases: lowest latency), then the lowest disagreement, then the larger
   Q. Each Q is searched over the T it can represent (see :func:`_search`); if nothing meets the
   target, the most faithful pair evaluated is used. Every decision is logged in ``Conversion.search``.
6. **Choose F** (only with ``F="auto"``, see :func:`_search_F`): the smallest F, from the least that keeps
   both decode tables positive up to the F of step 4, whose disagreement on the same held-out images is
   at most ``F_TOLERANCE`` percentage points above the disagreement at the F of step 4.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from runtime import golden
from runtime.errors import UserError
from runtime.spec import MAX_T, IntModel

from .calibrate import (INPUT_Q, INPUT_T, Normalised, _t, calibrate, float_forward, normalise,  # noqa: F401
                        onespike_float_forward)
from .lower import Lowered, Stage, lower  # noqa: F401
from .quantise import _code_bound, fraction_bits_needed, quantise  # noqa: F401

Q_CANDIDATES = (2.0, 1.75, 1.5, 1.4, 1.3, 1.25, 1.2, 1.15)
T_CANDIDATES = tuple(range(4, 65, 2))
F_TOLERANCE = 0.05  # F="auto": percentage points of held-out disagreement a smaller F may add


def cell_classes(logits, n_classes: int | None, threshold: float | None = None) -> np.ndarray:
    """What the (Q, T) search compares: the class of each image (argmax of the logits), or for a detector
    (``n_classes`` = 1 + K channels of scores) the class of each grid cell, flattened (N * GH * GW,):
    the best class k in 1..K when its score ``L[k] - L[0]`` reaches ``threshold`` (the decode's score
    threshold, in the logits' units), else 0 (background)."""
    logits = np.asarray(logits)
    if n_classes is None:
        return np.argmax(logits.reshape(len(logits), -1), axis=1)
    scores = logits[:, 1:n_classes]
    best = np.argmax(scores, axis=1)
    s = np.take_along_axis(scores, best[:, None], 1)[:, 0] - logits[:, 0]
    thr = 0 if threshold is None else threshold
    return np.where(s >= thr, best + 1, 0).reshape(-1)


def ann_maps(low: Lowered, images_u8: np.ndarray, batch: int = 500) -> np.ndarray:
    """The float ANN's outputs (N, *readout shape), float64."""
    with torch.no_grad():
        return np.concatenate([float_forward(low, _t(images_u8[i:i + batch].astype(np.float64) / 255.0)).numpy()
                               for i in range(0, len(images_u8), batch)])


def onespike_maps(norm: Normalised, images_u8: np.ndarray, Q: float, T: int, input_Q: float = INPUT_Q,
                  input_T: int = INPUT_T, batch: int = 500) -> np.ndarray:
    """The float one-spike network's outputs (N, *readout shape), float64."""
    shape = tuple(norm.stages[-1].out_shape)
    with torch.no_grad():
        return np.concatenate([onespike_float_forward(norm, images_u8[i:i + batch], Q, T, input_Q=input_Q,
                                                      input_T=input_T).numpy().reshape((-1,) + shape)
                               for i in range(0, len(images_u8), batch)])


def ann_predict(low: Lowered, images_u8: np.ndarray, batch: int = 1000, progress: bool = False,
                desc: str = "ANN float") -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(images_u8), batch), desc=desc, unit="batch", disable=not progress, leave=False):
            out.append(float_forward(low, _t(images_u8[i:i + batch].astype(np.float64) / 255.0)).reshape(
                min(batch, len(images_u8) - i), -1).argmax(1).numpy())
    return np.concatenate(out)


def onespike_predict(norm: Normalised, images_u8: np.ndarray, Q: float, T: int, batch: int = 1000,
                     input_Q: float = INPUT_Q, input_T: int = INPUT_T, progress: bool = False,
                     desc: str = "one-spike float") -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(images_u8), batch), desc=desc, unit="batch", disable=not progress, leave=False):
            out.append(onespike_float_forward(norm, images_u8[i:i + batch], Q, T, input_Q=input_Q,
                                              input_T=input_T).argmax(1).numpy())
    return np.concatenate(out)


@dataclass
class Conversion:
    model: IntModel
    lowered: Lowered
    normalised: Normalised
    search: list  # the search log, in order: one record per (Q, T) decided on (see SEARCH_RESULTS)


# ``result`` of a search record: "meets" / "misses" the error target (evaluated on the held-out images),
# or "not representable" (no valid integer model: no (Q, T) from its T on is evaluated at that Q).
SEARCH_RESULTS = ("meets", "misses", "not representable")
EVAL_CHUNK = 500  # held-out images per golden run; a miss is decided as soon as too many disagree


def _record(q, t, f=None, disagreement=None, result="meets", reason=None) -> dict:
    return {"Q": float(q), "T": int(t), "F": None if f is None else int(f), "disagreement_percent": disagreement,
            "result": result, "reason": reason}


def is_auto(F) -> bool:
    """Whether ``F`` asks for the F search (``F="auto"``)."""
    return isinstance(F, str) and F == "auto"


def check_options(Q=None, T=None, F=None, norm="percentile", percentile=99.99, max_disagree=0.2,
                  eval_fraction=0.5, input_Q=INPUT_Q, input_T=INPUT_T, max_F: int = 16) -> None:
    """Refuse bad options of :func:`convert` before any work: ranges, types, and the decode tables.

    Only the weight-independent part of "representable" is checked here: with Q and T both given,
    both decode tables must be positive at F (or at some F <= ``max_F``, also for ``F="auto"``); with
    a search, at least one candidate (Q, T) must be.
    """
    def real(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def integer(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if Q is not None and not (real(Q) and 1.0 < Q <= 2.0):
        raise UserError(f"base Q must be a number in (1, 2], not {Q}")
    if T is not None and not (integer(T) and 1 <= T <= MAX_T):
        raise UserError(f"T must be an integer in 1..{MAX_T}, not {T}")
    if F is not None and not is_auto(F) and not (integer(F) and 0 <= F <= 30):
        raise UserError(f"F must be an integer in 0..30 or 'auto', not {F!r}" if isinstance(F, str) else
                        f"F must be an integer in 0..30 or 'auto', not {F}")
    if is_auto(F):
        F = None  # representable at some F <= max_F
    if not (real(input_Q) and 1.0 < input_Q <= 2.0):
        raise UserError(f"input Q must be a number in (1, 2], not {input_Q}")
    if not (integer(input_T) and 1 <= input_T <= MAX_T):
        raise UserError(f"input T must be an integer in 1..{MAX_T}, not {input_T}")
    if norm not in ("max", "percentile", "none"):
        raise UserError(f"normalisation must be 'max', 'percentile' or 'none', not {norm!r}")
    if not (real(percentile) and 0 < percentile <= 100):
        raise UserError(f"percentile must be a number in (0, 100], not {percentile}")
    if not (real(max_disagree) and 0 <= max_disagree <= 100):
        raise UserError(f"error target must be a percentage in 0..100, not {max_disagree}")
    if not (real(eval_fraction) and 0 < eval_fraction < 1):
        raise UserError(f"eval_fraction must be a number in (0, 1), not {eval_fraction}")
    qs = [float(Q)] if Q is not None else list(Q_CANDIDATES)
    ts = [int(T)] if T is not None else list(range(1, max(T_CANDIDATES) + 1))
    errs = []
    for q in qs:
        for t in ts:
            try:
                _code_bound(q, t, float(input_Q), int(input_T), F, max_F)
                return
            except UserError as e:
                errs.append(e)
    if Q is not None and T is not None:
        raise errs[0]
    # the nearest miss: T = 1 at the given Q, or the given T at the smallest candidate Q
    raise UserError(f"no candidate (Q, T) is representable: {errs[0] if T is None else errs[-1]}; "
                    f"give another --Q, --T or --F")


def convert(ann: nn.Module, input_shape, calib_images: np.ndarray,
            Q: float | None = None, T: int | None = None, F: int | str | None = None, norm: str = "percentile",
            percentile: float = 99.99, max_disagree: float = 0.2, eval_fraction: float = 0.5,
            input_Q: float = INPUT_Q, input_T: int = INPUT_T, progress: bool = True,
            score_channels: int | None = None, score_threshold: float | None = None) -> Conversion:
    """Convert a trained ANN into an integer one-spike model (see the module docstring).

    ``score_channels``: a detector's 1 + K score channels, ``score_threshold`` its decode threshold (real,
    logit units). The error target then counts the grid cells whose class (:func:`cell_classes`) differs
    from the ANN's where either calls the cell an object, as a percentage of the ANN's object cells.

    ``F``: None (the largest <= 16 that fits the accumulators), an integer in 0..30, or ``"auto"``: after
    (Q, T) the F search of step 6 (:func:`_search_F`), on held-out images even when Q and T are given."""
    check_options(Q, T, F, norm, percentile, max_disagree, eval_fraction, input_Q, input_T)
    auto_F = is_auto(F)
    qkw = {"F": None if auto_F else F, "input_Q": float(input_Q), "input_T": int(input_T)}
    ann = ann.eval()
    calib_images = golden.check_images(
        IntModel(1.5, 1, 0, tuple(input_shape), np.zeros(2, np.int64), np.zeros(256, np.uint8), []), calib_images)
    if len(calib_images) < 2:
        raise UserError("calibration needs at least 2 images")
    low = lower(ann, tuple(input_shape))
    searching = Q is None or T is None
    n_eval = max(1, int(len(calib_images) * eval_fraction)) if searching or auto_F else 0
    stats_imgs = calib_images[:len(calib_images) - n_eval] if n_eval else calib_images
    calibrate(low, stats_imgs, norm, percentile, progress=progress)
    normd = normalise(low)
    search: list[dict] = []
    scorer = Scorer(normd, low, calib_images[len(calib_images) - n_eval:], score_channels,
                    score_threshold) if n_eval else None
    if not searching:
        model = quantise(normd, float(Q), int(T), **qkw)
        met = None
    else:
        model, met = _search(normd, scorer, Q, T, qkw, max_disagree, search, progress)
    if auto_F:
        model = _search_F(normd, scorer, model, qkw, search, progress)
    model.meta.update({
        "converter": "onespike-codegen 0.1.0", "normalisation": norm,
        "percentile": percentile if norm == "percentile" else None, "calibration_images": int(len(stats_imgs)),
        "threshold_shift": True, "error_target_disagreement_percent": max_disagree, "error_target_met": met,
    })
    return Conversion(model, low, normd, search)


class Scorer:
    """What both searches compare: the integer model's classes of the held-out images ``ev_x`` (or of a
    detector's grid cells, :func:`cell_classes`) against the float ANN's own classes.

    ``disagree(m)`` counts the held-out images (or, for a detector, the grid cells where either calls an
    object) whose class differs, out of ``n`` (the images, or the ANN's object cells)."""

    def __init__(self, normd: Normalised, low: Lowered, ev_x: np.ndarray, score_channels: int | None = None,
                 score_threshold: float | None = None):
        self.ev_x, self.score_channels, self.score_threshold = ev_x, score_channels, score_threshold
        if score_channels is None:
            self.ev_y = ann_predict(low, ev_x)
            self.n = self.ev_y.size
        else:
            from .quantise import readout_scale

            self.ev_y = cell_classes(ann_maps(low, ev_x), score_channels, score_threshold).reshape(len(ev_x), -1)
            self.n = max(1, int((self.ev_y != 0).sum()))  # the ANN's object cells
            self.scale = readout_scale(normd.stages[-1].weight)  # real = acc * scale / 2**F
        self.what = "held-out images" if score_channels is None else "object cells of held-out images"

    def disagree(self, m: IntModel, allowed: float | None = None) -> tuple[int, int]:
        """(d, done): d of the first ``done`` of ``n`` disagree. The images run in chunks of EVAL_CHUNK,
        stopping as soon as ``100 * d > allowed`` (then ``done < n`` unless it was the last chunk)."""
        ev_x, ev_y = self.ev_x, self.ev_y
        d = done = 0
        shape = (-1,) + tuple(m.layers[-1].out_shape)
        for i in range(0, len(ev_x), EVAL_CHUNK):
            logits = golden.run(m, ev_x[i:i + EVAL_CHUNK], keep_phases=False).logits
            want = ev_y[i:i + EVAL_CHUNK].reshape(-1)
            if self.score_channels is None:
                d += int((logits.argmax(1) != want).sum())
                done = min(len(ev_x), i + EVAL_CHUNK)
            else:
                thr = None if self.score_threshold is None else self.score_threshold * float(2 ** m.F) / self.scale
                cls = cell_classes(logits.reshape(shape), self.score_channels, thr)
                d += int(((cls != want) & ((cls != 0) | (want != 0))).sum())
                done = int((ev_y[:i + EVAL_CHUNK] != 0).sum())
            if allowed is not None and 100 * d > allowed:
                break
        else:
            done = self.n  # every held-out image evaluated
        return d, min(done, self.n)


def _search(normd: Normalised, scorer: Scorer, Q, T, qkw: dict, max_disagree: float,
            search: list, progress: bool) -> tuple[IntModel, bool]:
    """The (Q, T) search of step 5 (docs/conversion.md); appends every decision to ``search``.

    1. For each Q, the T it can represent: the largest integer T <= max(T_CANDIDATES) with a valid
       integer model (representability falls with T: the last decode entry shrinks, the accumulator
       widths do not depend on T), found by bisection; its candidates are the T_CANDIDATES below it
       plus that largest T itself.
    2. Each Q is evaluated at its largest T. If none meets the target there, the target is taken as
       out of reach (more phases are assumed not to hurt) and the most faithful of these is used.
    3. Otherwise every Q is evaluated at T ascending (each over its own candidates); the first T at
       which any Q meets the target wins (the lowest disagreement among those, then the larger Q).
       No monotonicity is assumed here: no pair with a smaller T meets the target. Step 2
       guarantees a winner by the smallest largest-T of a Q that met it.
    A miss is decided as soon as more held-out images disagree than the target allows.
    """
    # the target is agreement with the ANN's own classes (of images, or of a detector's grid cells)
    n = scorer.n
    qs = [float(Q)] if Q is not None else list(Q_CANDIDATES)
    ts = [int(T)] if T is not None else list(T_CANDIDATES)
    errors: dict = {}  # (q, t) -> None (representable) or the UserError; models are rebuilt when needed,
    results: dict = {}  # (q, t) -> record                    so that at most one is held at a time
    bar = tqdm(desc="search Q, T", unit="pair", disable=not progress, leave=False)

    def ok(q, t):
        if (q, t) not in errors:
            try:
                quantise(normd, q, t, **qkw)
                errors[(q, t)] = None
            except UserError as e:
                errors[(q, t)] = e
        return errors[(q, t)] is None

    def evaluate(q, t, early: bool) -> dict:
        if (q, t) in results:
            return results[(q, t)]
        m = quantise(normd, q, t, **qkw)
        bar.set_postfix_str(f"Q={q:g} T={t}")
        d, done = scorer.disagree(m, max_disagree * n if early else None)
        meets = 100 * d <= max_disagree * n
        if done == n:
            rec = _record(q, t, m.F, round(100 * d / n, 4), "meets" if meets else "misses")
        else:
            rec = _record(q, t, m.F, None, "misses",
                          f"stopped after {done} of {n} {scorer.what}: {d} disagree with the ANN, more than the "
                          f"{math.floor(max_disagree * n / 100 + 1e-9)} the target allows")
        results[(q, t)] = rec
        search.append(rec)
        bar.update(1)
        return rec

    # 1. what each Q can represent
    cands: dict = {}
    for q in qs:
        if T is not None:
            good, bad = ([T], None) if ok(q, T) else ([], T)
        else:
            top = max(ts)
            if ok(q, top):
                t_rep, bad = top, None
            elif not ok(q, 1):
                t_rep, bad = 0, 1
            else:
                lo, hi = 1, top  # ok(lo), not ok(hi)
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if ok(q, mid) else (lo, mid)
                t_rep, bad = lo, hi
            good = sorted({t for t in ts if t <= t_rep} | ({t_rep} if t_rep else set()))
        if bad is not None:
            err = errors[(q, bad)]
            if T is not None:
                why = str(err)
            elif bad > 1:
                why = f"{err}; nor is any larger T (the largest representable is T = {bad - 1})"
            else:
                why = f"{err}; nor is any larger T"
            search.append(_record(q, bad, result="not representable", reason=why))
        if good:
            cands[q] = good
    if not cands:
        bar.close()
        first = next(r["reason"] for r in search if r["result"] == "not representable")
        raise UserError(f"no (Q, T) candidate gives a valid integer model ({first}); give another --Q, --T or --F")
    # 2. each Q at its largest T
    tops = [evaluate(q, good[-1], early=False) for q, good in cands.items()]
    if not any(r["result"] == "meets" for r in tops):
        bar.close()
        for r, good in zip(tops, cands.values()):
            if len(good) > 1:
                r["reason"] = "no Q meets the target at its largest representable T, so no smaller T is tried"
        # the most faithful pair evaluated (every Q at its largest T, in full)
        top = min(tops, key=lambda r: (r["disagreement_percent"], r["T"], -r["Q"]))
        return quantise(normd, top["Q"], top["T"], **qkw), False
    # 3. T ascending, every Q
    for t in sorted({t for good in cands.values() for t in good}):
        met = [evaluate(q, t, early=True) for q, good in cands.items() if t in good]
        met = [r for r in met if r["result"] == "meets"]
        if met:
            best = min(met, key=lambda r: (r["disagreement_percent"], -r["Q"]))
            break
    bar.close()
    return quantise(normd, best["Q"], best["T"], **qkw), True


def _search_F(normd: Normalised, scorer: Scorer, model: IntModel, qkw: dict, search: list,
              progress: bool) -> IntModel:
    """The F search of step 6 (``F="auto"``); appends one record per F evaluated to ``search``.

    The reference is ``model`` (the chosen (Q, T) at the F of step 4, ``F0``: the largest <= 16 that fits
    the accumulators), evaluated on every held-out image: ``d0`` of ``n`` disagree with the ANN. Then F
    ascends from the least F that keeps both decode tables positive; the first F with
    ``100 * d <= 100 * d0 + F_TOLERANCE * n`` (disagreement at most F_TOLERANCE percentage points above the
    reference's) wins, else ``F0``. No monotonicity in F is assumed. A miss stops as soon as too many disagree.
    Every record's ``reason`` starts with "F search: ".
    """
    q, t, f0 = float(model.Q), int(model.T), int(model.F)
    n = scorer.n
    lo = _code_bound(q, t, float(qkw["input_Q"]), int(qkw["input_T"]), None, f0)
    bar = tqdm(desc="search F", unit="F", total=f0 - lo + 1, disable=not progress, leave=False)
    bar.set_postfix_str(f"F={f0}")
    d0, _ = scorer.disagree(model)
    bar.update(1)
    ref = round(100 * d0 / n, 4)
    search.append(_record(q, t, f0, ref, "meets", f"F search: the reference, F = {f0} (the largest <= 16 that fits "
                                                  f"the accumulators)"))
    allowed = 100 * d0 + F_TOLERANCE * n
    rule = f"{F_TOLERANCE:g} points above the {ref}% at F = {f0}"
    for f in range(lo, f0):
        bar.set_postfix_str(f"F={f}")
        try:
            m = quantise(normd, q, t, **dict(qkw, F=f))
        except UserError as e:
            search.append(_record(q, t, f, None, "not representable", f"F search: {e}"))
            bar.update(1)
            continue
        d, done = scorer.disagree(m, allowed)
        bar.update(1)
        if done == n:
            meets = 100 * d <= allowed
            search.append(_record(q, t, f, round(100 * d / n, 4), "meets" if meets else "misses",
                                  f"F search: {'at most' if meets else 'more than'} {rule}"))
            if meets:
                bar.close()
                return m
        else:
            search.append(_record(q, t, f, None, "misses",
                                  f"F search: stopped after {done} of {n} {scorer.what}: {d} disagree with the "
                                  f"ANN, more than the {math.floor(allowed / 100 + 1e-9)} allowed ({rule})"))
    bar.close()
    return model


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
