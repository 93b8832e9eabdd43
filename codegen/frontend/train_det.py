"""Reproducible training of the example detectors (``codegen train bccd-det``, ``raccoon-det``).

A detector is fully convolutional: 3x3 convolutions with stride 2 down to the grid (stride 8 for
bccd-det, 16 for raccoon-det), ``body`` more 3x3 convolutions at stride 1, and a 1x1 readout with, per cell, background + K class scores and four box
channels (dx, dy: the centre's offset in the cell; w, h: the size, in cells; see runtime/spec.py,
"detection head"). Training (CenterNet-like, simplified to what the integer decode reads):
cross-entropy over background + classes at every cell, with the eight neighbours of an object's
centre cell ignored (they see most of the object; the decode keeps one detection per object), and a
smooth-L1 box loss at the centre cells; object cells weigh more than background cells, the rare classes
more than the common ones (``DetArch.obj_weight``). Input size, colour, depth, class weights and the
score threshold were chosen on the ``val`` split (scripts/bench_det.py, docs/benchmarks.md); the
threshold is chosen again for every training run, by the decode's own rules
(:mod:`codegen.detection.head`); ``test`` is only reported.

Everything is determined by the seed, as for the classifiers (codegen/frontend/train.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from runtime.errors import UserError


@dataclass(frozen=True)
class DetArch:
    dataset: str
    size: tuple[int, int]  # (width, height) of the model input
    channels: int  # 3 (RGB) or 1 (grayscale)
    widths: tuple[int, ...]  # output channels of the stride-2 convolutions, then of the ``body`` stride-1 ones
    epochs: int
    vflip: bool  # vertical flips are valid augmentation (microscopy), not for photos
    nms_iou_percent: int = 50
    max_detections: int = 64
    body: int = 1  # 3x3 stride-1 convolutions at the grid's resolution (the receptive field grows 2 * stride each)
    obj_weight: tuple | float = 2.0  # cross-entropy weight of object cells (per class), background 1


# chosen on val (docs/benchmarks.md, "Object detection"): 160x120 RGB is the largest input whose network
# fits a nucleo-f446re's 128 KiB with the decode; grayscale lost 0.1-0.2 mAP; a second stride-1 conv
# (receptive field 47 px) lifted WBC; platelets (the rarest, smallest class) weigh 6, WBC 3, RBC 2
ARCHS = {
    "bccd-det": DetArch("bccd", (160, 120), 3, (8, 16, 32, 32, 32), 150, True, body=2, obj_weight=(2.0, 3.0, 6.0)),
    # raccoons fill half the image: a stride-16 grid (receptive field 95 px) took val mAP@0.5 from 0.38 to 0.79
    "raccoon-det": DetArch("raccoon", (128, 96), 3, (8, 16, 32, 32, 32, 32), 150, False, body=2),
}
STRIDE = 8
THRESHOLDS = tuple(np.round(np.arange(-3.0, 3.01, 0.25), 2))  # score thresholds tried on val (logit units)


def build(channels: int, n_classes: int, widths=(8, 16, 32, 32), body: int = 1) -> nn.Sequential:
    mods, c = [], channels
    for i, w in enumerate(widths):
        s = 2 if i < len(widths) - body else 1
        mods += [nn.Conv2d(c, w, 3, stride=s, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    mods.append(nn.Conv2d(c, 1 + n_classes + 4, 1))
    return nn.Sequential(*mods)


def stride_of(widths, body: int = 1) -> int:
    return 2 ** (len(widths) - body)


def to_float(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(images_u8, dtype=np.float32)).div_(255.0)


def _targets(boxes, labels, grid, stride):
    from . import voc

    cls, box, mask = zip(*(voc.targets(b, l, grid, stride) for b, l in zip(boxes, labels)))
    return (torch.from_numpy(np.stack(cls)), torch.from_numpy(np.stack(box)), torch.from_numpy(np.stack(mask)))


def loss_fn(out: torch.Tensor, cls_t, box_t, mask_t, n_classes: int, obj_weight=2.0):
    """``obj_weight``: the cross-entropy weight of an object cell against a background cell (1), one
    number or one per class."""
    k1 = 1 + n_classes
    w = torch.ones(k1)
    w[1:] = torch.as_tensor(obj_weight, dtype=torch.float32)
    ce = nn.functional.cross_entropy(out[:, :k1], cls_t, weight=w, ignore_index=-1)
    pos = mask_t.sum()
    if pos == 0:
        return ce
    pred = out[:, k1:k1 + 4].permute(0, 2, 3, 1)[mask_t]  # (P, 4)
    tgt = box_t.permute(0, 2, 3, 1)[mask_t]
    return ce + nn.functional.smooth_l1_loss(pred, tgt, beta=0.25)


@torch.no_grad()
def predict_maps(model: nn.Module, images_u8: np.ndarray, batch: int = 64) -> np.ndarray:
    model.eval()
    return np.concatenate([model(to_float(images_u8[i:i + batch])).double().numpy()
                           for i in range(0, len(images_u8), batch)])


def evaluate(maps: np.ndarray, ds, head_real: dict, input_hw) -> dict:
    """mAP and FOMO F1 of real-valued maps on a loaded split (``voc.DetSet``)."""
    from codegen.detection import metrics

    from ..detection.head import decode_real

    dets = decode_real(maps, head_real, input_hw)
    gts = list(zip(ds.boxes, ds.labels))
    coco = metrics.coco_eval(dets, gts, ds.classes)
    fomo = metrics.fomo_f1(dets, gts, ds.classes, image_width=input_hw[1])
    return {"coco": coco, "fomo": fomo, "detections": dets}


def choose_threshold(maps: np.ndarray, ds, head_real: dict, input_hw, progress: bool = False) -> tuple[dict, list]:
    """The grouping (``peak`` 1: 3x3 local maxima, 0: suppression alone) and the score threshold with the
    best mAP@0.5 on ``ds`` (val), the goal metric; ties (within 0.001) go to the 3x3 peaks (fewer
    candidates on a device), then to the higher threshold (fewer false positives). Returns
    {"peak", "score_threshold"} and the table of (peak, threshold, FOMO F1, mAP@0.5): a user who wants
    fewer false positives picks a higher threshold from it."""
    table = []
    grid = [(p, float(t)) for p in (1, 0) for t in THRESHOLDS]
    for p, t in tqdm(grid, desc="grouping and threshold on val", disable=not progress, leave=False):
        r = evaluate(maps, ds, dict(head_real, score_threshold=t, peak=p), input_hw)
        table.append({"peak": p, "threshold": t, "f1": float(r["fomo"]["overall"]["f1"]),
                      "map50": float(r["coco"]["map50"])})
    top = max(r["map50"] for r in table)
    best = max((r for r in table if r["map50"] >= top - 1e-3), key=lambda r: (r["peak"], r["threshold"]))
    return {"peak": best["peak"], "score_threshold": best["threshold"]}, table


def train(arch: str, seed: int = 0, epochs: int | None = None, batch_size: int = 16, lr: float = 3e-3,
          threads: int = 2, progress: bool = True, max_steps: int | None = None, size=None, channels=None,
          widths=None, body=None, dataset: str | None = None, obj_weight=None) -> tuple[nn.Sequential, dict]:
    """Train detector ``arch`` from ``seed``; returns the ANN and its meta (task, head, val figures).

    ``size``, ``channels``, ``widths``, ``body`` and ``dataset`` override the architecture's (for the
    input-size table of scripts/bench_det.py and for tests)."""
    from . import train as train_cls
    from . import voc

    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")
    a = ARCHS[arch]
    size = tuple(size or a.size)
    channels = int(channels or a.channels)
    widths = tuple(widths or a.widths)
    body = int(a.body if body is None else body)
    obj_weight = a.obj_weight if obj_weight is None else obj_weight
    epochs = a.epochs if epochs is None else epochs
    if epochs < 1:
        raise UserError(f"epochs must be a positive integer, not {epochs}")
    gen = train_cls.seeded(seed, threads)
    dataset = dataset or a.dataset
    tr = voc.load(dataset, "train", size, channels, progress=progress)
    va = voc.load(dataset, "val", size, channels, classes=tr.classes, progress=progress)
    K = len(tr.classes)
    if isinstance(obj_weight, (list, tuple)) and len(obj_weight) != K:
        raise UserError(f"obj_weight gives {len(obj_weight)} class weights but {dataset} has {K} classes")
    stride = stride_of(widths, body)
    W, H = size
    grid = (-(-H // stride), -(-W // stride))
    model = build(channels, K, widths, body)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    n = len(tr.ids)
    steps = epochs * (-(-n // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    xtr = to_float(tr.images)
    done = 0
    bar = tqdm(total=steps if max_steps is None else min(steps, max_steps), desc=f"{arch}", disable=not progress)
    for ep in range(epochs):
        if max_steps is not None and done >= max_steps:
            break
        model.train()
        perm = torch.randperm(n, generator=gen).tolist()
        for i in range(0, n, batch_size):
            if max_steps is not None and done >= max_steps:
                break
            idx = perm[i:i + batch_size]
            xb, bb, lb = voc.augment(xtr[idx], [tr.boxes[j] for j in idx], [tr.labels[j] for j in idx], gen,
                                     vflip=a.vflip)
            cls_t, box_t, mask_t = _targets(bb, lb, grid, stride)
            loss = loss_fn(model(xb), cls_t, box_t, mask_t, K, obj_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            bar.update(1)
            bar.set_postfix_str(f"epoch {ep + 1}/{epochs} loss {loss.item():.3f}")
    bar.close()
    model.eval()
    head_real = {"classes": list(tr.classes), "stride": stride, "score_threshold": 0.0,
                 "nms_iou_percent": a.nms_iou_percent, "max_detections": a.max_detections, "peak": 1}
    val_maps = predict_maps(model, va.images)
    chosen, table = choose_threshold(val_maps, va, head_real, (H, W), progress)
    head_real.update(chosen)
    val = evaluate(val_maps, va, head_real, (H, W))
    meta = {"arch": arch, "task": "detect", "dataset": voc.canonical(dataset), "seed": seed, "epochs": epochs,
            "batch_size": batch_size, "lr": lr, "input_size": list(size), "channels": channels, "widths": list(widths), "body": body,
            "obj_weight": list(obj_weight) if isinstance(obj_weight, (list, tuple)) else obj_weight,
            "head": head_real, "threshold_search_val": table,
            "val": {"map50": val["coco"]["map50"], "map": val["coco"]["map"],
                    "ap50": {k: v["ap50"] for k, v in val["coco"]["per_class"].items()},
                    "fomo_f1": val["fomo"]["overall"]["f1"]},
            "torch": str(torch.__version__)}
    return model, meta
