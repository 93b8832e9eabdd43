"""Detection plots: precision-recall curves and image grids with boxes (PNG, Agg, deterministic).

Each PNG is rendered in memory (``codegen.report._png``: dpi 100, no "Software" metadata, so the
bytes do not depend on the matplotlib build) and written atomically (``runtime.io.atomic_write_bytes``:
a temp file in the same folder, then ``os.replace``), or returned as bytes when ``path`` is None.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from runtime.io import atomic_write_bytes

from ..report import _png

__all__ = ["pr_curves_png", "detections_png"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, path):
    """The figure as PNG bytes, closed; written atomically to ``path`` (then its Path) unless it is None."""
    data = _png(fig)
    plt.close(fig)
    if path is None:
        return data
    atomic_write_bytes(path, data)
    return Path(path)


def _colour(k: int):
    import matplotlib

    return matplotlib.colormaps["tab10"](k % 10)


def pr_curves_png(pr50: dict, per_class: dict, path=None) -> Path | bytes:
    """One figure, one precision-recall curve per class at IoU 0.5 (``coco_eval``'s ``pr50``), with
    each class's AP50 in the legend; a class without ground truth is listed as "no GT" and not drawn."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for k, (name, (rec, prec)) in enumerate(pr50.items()):
        ap50 = per_class.get(name, {}).get("ap50", math.nan)
        rec = np.asarray(rec, dtype=np.float64)
        prec = np.asarray(prec, dtype=np.float64)
        if math.isnan(ap50) or not np.all(np.isfinite(prec)):
            ax.plot([], [], color=_colour(k), label=f"{name} (no GT)")
            continue
        ax.plot(rec, prec, color=_colour(k), lw=1.5, drawstyle="steps-post", label=f"{name} (AP50 {ap50:.3f})")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall at IoU 0.5 (COCO, 101 points)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return _finish(plt, fig, path)


def detections_png(images: np.ndarray, gts: list, dets: list, classes, path=None, cols: int = 4,
                   title: str = "") -> Path | bytes:
    """A grid of ``images`` (uint8 ``(N, C, H, W)``, C = 1 shown in gray, or 3) with the ground-truth
    boxes (dashed, thin) and the predicted boxes (solid, labelled ``class score``), one colour per class.

    ``gts[i] = (boxes (m, 4), labels (m,))`` and ``dets[i]`` rows ``(class, x0, y0, x1, y1, score)`` in
    pixels of the images (exclusive right/bottom edges)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected (N, C, H, W) with C = 1 or 3, got shape {images.shape}")
    n = images.shape[0]
    if n == 0 or len(gts) != n or len(dets) != n:
        raise ValueError(f"{n} images, {len(gts)} ground-truth and {len(dets)} detection entries (need one each, N > 0)")
    if cols < 1:
        raise ValueError("cols must be >= 1")
    plt = _plt()
    h, w = images.shape[2:]
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    cell = 2.6
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows * h / w + (0.6 if title else 0.3) + 0.3),
                             squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        img = images[i]
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(np.transpose(img, (1, 2, 0)), interpolation="nearest")
        # pixel j covers [j - 0.5, j + 0.5] in imshow's coordinates, so a box edge at x sits at x - 0.5
        boxes, labels = gts[i]
        for b, c in zip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels).reshape(-1)):
            ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False,
                                   ls="--", lw=0.7, ec=_colour(int(c))))
        for r in np.asarray(dets[i], dtype=np.float64).reshape(-1, 6):
            c = int(r[0])
            col = _colour(c)
            ax.add_patch(Rectangle((r[1] - 0.5, r[2] - 0.5), r[3] - r[1], r[4] - r[2], fill=False, ls="-",
                                   lw=1.2, ec=col))
            name = classes[c] if 0 <= c < len(classes) else str(c)
            ax.text(r[1] - 0.5, r[2] - 0.5, f"{name} {r[5]:.3g}", fontsize=5, color="white", va="bottom",
                    ha="left", clip_on=True, bbox={"fc": col, "ec": "none", "pad": 0.5, "alpha": 0.8})
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(f"#{i}", fontsize=7)
    handles = [Line2D([], [], color=_colour(k), lw=1.5, label=str(nm)) for k, nm in enumerate(classes)]
    handles.append(Line2D([], [], color="gray", lw=0.7, ls="--", label="ground truth"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.3 / fig.get_figheight(), 1, 1))
    return _finish(plt, fig, path)
