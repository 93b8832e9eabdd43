"""Pascal VOC object-detection datasets: loading, training augmentation and grid-head targets.

Datasets (``name``):

* ``bccd`` — ``data_root()/bccd`` (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/{split}.txt``),
  classes ``RBC, WBC, Platelets``.
* ``raccoon`` — ``data_root()/raccoon`` (``annotations/``, ``images/``, ``data/{train,test}_labels.csv``),
  class ``raccoon``; ``val`` is every 5th image (sorted by id) of the CSV train list, ``train`` the rest.
* ``voc:PATH`` — any folder in one of those layouts. Without a split list, every id (sorted) goes to
  ``test`` when ``int(sha256(id), 16) % 10 == 0``, to ``val`` when it is 1, else to ``train``. Classes are
  the sorted object names of the whole annotation folder unless given.

Images come back as uint8 ``(N, C, H, W)`` resized (bilinear, Pillow) to ``size = (W, H)``; boxes as
float64 ``(n, 4)`` ``x0, y0, x1, y1`` in model-input pixels (scaled with the image); labels as int64
indices into ``classes``. Boxes with zero width or height are dropped and counted. Every problem with
the data is a one-line :class:`UserError` naming the file. Nothing is cached on disk.
"""
from __future__ import annotations

import csv
import hashlib
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import UserError

from .datasets import data_root

NAMED = {
    "bccd": ("bccd", ["RBC", "WBC", "Platelets"]),
    "raccoon": ("raccoon", ["raccoon"]),
}
SPLITS = ("train", "val", "test")
_CSV_HEADER = ["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"]
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


@dataclass
class DetSet:
    name: str
    split: str
    classes: list[str]
    ids: list[str]
    images: np.ndarray                  # uint8 (N, C, H, W)
    boxes: list[np.ndarray]             # per image float64 (n, 4) x0, y0, x1, y1 in model-input pixels
    labels: list[np.ndarray]            # per image int64 (n,) in 0..K-1
    orig_sizes: list[tuple[int, int]]   # (width, height) of the original image
    dropped: int                        # zero-area boxes dropped

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, n: int) -> "DetSet":
        """The first ``n`` images."""
        return DetSet(self.name, self.split, self.classes, self.ids[:n], self.images[:n], self.boxes[:n],
                      self.labels[:n], self.orig_sizes[:n], self.dropped)


# --------------------------------------------------------------------------------------- names


def is_detection_dataset(name: str) -> bool:
    """True for ``bccd``, ``raccoon`` and any ``voc:PATH``."""
    if not isinstance(name, str):
        return False
    return name.lower() in NAMED or name.lower().startswith("voc:")


def _voc_path(name: str) -> Path:
    path = name[4:]
    if not path:
        raise UserError("dataset 'voc:' needs a folder: voc:PATH")
    return Path(path).expanduser().resolve()


def canonical(name: str) -> str:
    """Display name: ``bccd``, ``raccoon`` or ``voc:/abs/path``."""
    if not is_detection_dataset(name):
        raise UserError(f"unknown detection dataset {name!r}; known: {', '.join(NAMED)}, voc:PATH")
    if name.lower() in NAMED:
        return name.lower()
    return f"voc:{_voc_path(name)}"


def _folder(name: str) -> tuple[Path, list[str] | None]:
    """The dataset folder and its fixed classes (None for ``voc:PATH``)."""
    key = canonical(name)
    if key in NAMED:
        sub, classes = NAMED[key]
        folder = data_root() / sub
        if not folder.is_dir():
            raise UserError(f"dataset folder not found: {folder} (set ONESPIKE_DATA to the folder holding {sub}/)")
        return folder, list(classes)
    folder = _voc_path(name)
    if not folder.is_dir():
        raise UserError(f"dataset folder not found: {folder}")
    return folder, None


def _subdir(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for n in names:
        if (folder / n).is_dir():
            return folder / n
    raise UserError(f"{folder}: no {what} folder ({' or '.join(names)})")


# --------------------------------------------------------------------------------------- splits


def _hash_split(ident: str) -> str:
    r = int(hashlib.sha256(ident.encode("utf-8")).hexdigest(), 16) % 10
    return "test" if r == 0 else "val" if r == 1 else "train"


def _read_list(path: Path, split: str) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read split list ({e.__class__.__name__})") from None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _read_csv_ids(path: Path) -> list[str]:
    """Image ids (file stems) of a ``filename,width,height,class,...`` CSV, in first-appearance order."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot read split CSV ({e.__class__.__name__})") from None
    if not rows or [c.strip() for c in rows[0]] != _CSV_HEADER:
        raise UserError(f"{path}: header is not {','.join(_CSV_HEADER)}")
    ids: dict[str, None] = {}
    for row in rows[1:]:
        if row and row[0].strip():
            ids.setdefault(Path(row[0].strip()).stem, None)
    return list(ids)


def _split_ids(folder: Path, ann_dir: Path, split: str) -> tuple[list[str], Path]:
    """(ids of ``split`` in list order, the file that defines it)."""
    imagesets = folder / "ImageSets" / "Main"
    csvdir = folder / "data"
    if imagesets.is_dir():
        path = imagesets / f"{split}.txt"
        if not path.is_file():
            raise UserError(f"split list not found: {path}")
        return _read_list(path, split), path
    if (csvdir / "train_labels.csv").is_file() or (csvdir / "test_labels.csv").is_file():
        if split == "test":
            path = csvdir / "test_labels.csv"
            if not path.is_file():
                raise UserError(f"split list not found: {path}")
            return _read_csv_ids(path), path
        path = csvdir / "train_labels.csv"
        if not path.is_file():
            raise UserError(f"split list not found: {path}")
        ids = _read_csv_ids(path)
        val = set(sorted(ids)[::5])
        return [i for i in ids if (i in val) == (split == "val")], path
    ids = sorted(p.stem for p in ann_dir.glob("*.xml"))
    return [i for i in ids if _hash_split(i) == split], ann_dir


# --------------------------------------------------------------------------------------- XML


@dataclass
class _Ann:
    filename: str | None
    width: int
    height: int
    objects: list[tuple[str, tuple[float, float, float, float]]]


def _text(elem, tag: str, path: Path, what: str) -> str:
    child = elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise UserError(f"{path}: {what} has no <{tag}>")
    return child.text.strip()


def _number(text: str, path: Path, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise UserError(f"{path}: {what} is not a number: {text!r}")
    return v


def _parse_xml(path: Path) -> _Ann:
    if not path.is_file():
        raise UserError(f"annotation file not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise UserError(f"{path}: XML does not parse ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.__class__.__name__})") from None
    fn = root.find("filename")
    filename = fn.text.strip() if fn is not None and fn.text and fn.text.strip() else None
    size = root.find("size")
    if size is None:
        raise UserError(f"{path}: annotation has no <size>")
    dims = []
    for tag in ("width", "height"):
        v = _number(_text(size, tag, path, "<size>"), path, f"size {tag}")
        if v != int(v) or v < 1:
            raise UserError(f"{path}: size {tag} must be a positive integer, not {v:g}")
        dims.append(int(v))
    objects = []
    for k, obj in enumerate(root.findall("object"), start=1):
        name = _text(obj, "name", path, f"object {k}")
        bb = obj.find("bndbox")
        if bb is None:
            raise UserError(f"{path}: object {k} ({name}) has no <bndbox>")
        coords = tuple(_number(_text(bb, t, path, f"box {k} ({name})"), path, f"box {k} ({name}) {t}")
                       for t in ("xmin", "ymin", "xmax", "ymax"))
        objects.append((name, coords))
    return _Ann(filename, dims[0], dims[1], objects)


def _image_path(img_dir: Path, ident: str, ann: _Ann, xml_path: Path) -> Path:
    candidates = []
    if ann.filename:
        candidates.append(img_dir / ann.filename)
    candidates += [img_dir / (ident + ext) for ext in _IMAGE_EXTS]
    for c in candidates:
        if c.is_file():
            return c
    raise UserError(f"image file not found: {candidates[0]} (for {xml_path})")


def _all_classes(ann_dir: Path) -> list[str]:
    names = set()
    for p in sorted(ann_dir.glob("*.xml")):
        names.update(n for n, _ in _parse_xml(p).objects)
    return sorted(names)


# --------------------------------------------------------------------------------------- load


def _check_size(size) -> tuple[int, int]:
    ok = (isinstance(size, (tuple, list)) and len(size) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 8 <= v <= 1024 for v in size))
    if not ok:
        raise UserError(f"size must be two integers (width, height) in 8..1024, not {size!r}")
    return int(size[0]), int(size[1])


def load(name: str, split: str, size: tuple[int, int], channels: int = 3,
         classes: list[str] | None = None, progress: bool = False) -> DetSet:
    """Load ``split`` of detection dataset ``name`` resized to ``size = (width, height)``."""
    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    W, H = _check_size(size)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise UserError(f"channels must be 1 or 3, not {channels!r}")
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    display = canonical(name)
    folder, fixed = _folder(name)
    ann_dir = _subdir(folder, ("Annotations", "annotations"), "annotation")
    img_dir = _subdir(folder, ("JPEGImages", "images"), "image")
    ids, listfile = _split_ids(folder, ann_dir, split)
    if not ids:
        raise UserError(f"{listfile}: split {split!r} lists no images")
    if classes is not None:
        classes = [str(c) for c in classes]
        if not classes or len(set(classes)) != len(classes):
            raise UserError(f"classes must be a non-empty list of distinct names, not {classes!r}")
    elif fixed is not None:
        classes = fixed
    else:
        classes = _all_classes(ann_dir)
        if not classes:
            raise UserError(f"{ann_dir}: no objects in any annotation, so no classes")
    index = {c: i for i, c in enumerate(classes)}
    mode = "RGB" if channels == 3 else "L"

    images = np.empty((len(ids), channels, H, W), dtype=np.uint8)
    boxes, labels, orig_sizes = [], [], []
    dropped = 0
    for n, ident in enumerate(tqdm(ids, desc=f"{display} {split}", unit="img", disable=not progress)):
        xml_path = ann_dir / f"{ident}.xml"
        ann = _parse_xml(xml_path)
        bs, ls = [], []
        for k, (cname, (x0, y0, x1, y1)) in enumerate(ann.objects, start=1):
            where = f"{xml_path}: box {k} ({cname}) {x0:g},{y0:g},{x1:g},{y1:g}"
            if x0 > x1 or y0 > y1:
                raise UserError(f"{where} is inverted (xmin > xmax or ymin > ymax)")
            if x0 < 0 or y0 < 0 or x1 > ann.width or y1 > ann.height:
                raise UserError(f"{where} lies outside the {ann.width}x{ann.height} image")
            if cname not in index:
                raise UserError(f"{xml_path}: box {k} has unknown class {cname!r}; classes: {', '.join(classes)}")
            if x0 == x1 or y0 == y1:
                dropped += 1
                continue
            bs.append((x0, y0, x1, y1))
            ls.append(index[cname])
        img_path = _image_path(img_dir, ident, ann, xml_path)
        try:
            with Image.open(img_path) as im:
                if im.size != (ann.width, ann.height):
                    raise UserError(f"{xml_path}: size {ann.width}x{ann.height} differs from the "
                                    f"{im.size[0]}x{im.size[1]} image {img_path}")
                arr = np.asarray(im.convert(mode).resize((W, H), Image.Resampling.BILINEAR), dtype=np.uint8)
        except UserError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
            raise UserError(f"{img_path}: Pillow cannot read the image ({e.__class__.__name__})") from None
        images[n] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
        scale = np.array([W / ann.width, H / ann.height, W / ann.width, H / ann.height])
        b = np.array(bs, dtype=np.float64).reshape(-1, 4) * scale
        boxes.append(b)
        labels.append(np.array(ls, dtype=np.int64))
        orig_sizes.append((ann.width, ann.height))
    return DetSet(display, split, list(classes), list(ids), images, boxes, labels, orig_sizes, dropped)


# --------------------------------------------------------------------------------------- augment


def augment(x, boxes: list[np.ndarray], labels: list[np.ndarray], gen,
            hflip: bool = True, vflip: bool = False, scale: tuple[float, float] = (0.75, 1.25),
            brightness: float = 0.2):
    """Random flips, zoom (about a random centre, then crop/zero-pad to the same size) and brightness.

    ``x`` float32 ``(N, C, H, W)`` in [0, 1]; boxes in pixels of ``x``. Boxes follow the geometry, are
    clipped to the image and dropped when under 2 px wide/high or under 40% of their area remains. All
    randomness comes from ``gen``: six uniforms per image, drawn at once whatever the options.
    """
    import torch
    import torch.nn.functional as F

    N, C, H, W = x.shape
    if len(boxes) != N or len(labels) != N:
        raise ValueError(f"augment: {N} images but {len(boxes)} box lists and {len(labels)} label lists")
    r = torch.rand(N, 6, generator=gen, device=gen.device, dtype=torch.float64).cpu().numpy()
    out = x.clone()
    do_h = hflip & (r[:, 0] < 0.5)
    do_v = vflip & (r[:, 1] < 0.5)
    lo, hi = (1.0, 1.0) if scale is None else (float(scale[0]), float(scale[1]))
    s = lo + (hi - lo) * r[:, 2]
    cx = r[:, 3] * W
    cy = r[:, 4] * H
    fac = 1.0 + float(brightness) * (2.0 * r[:, 5] - 1.0)

    idx = torch.as_tensor(np.flatnonzero(do_h), device=x.device)
    if len(idx):
        out[idx] = out[idx].flip(-1)
    idx = torch.as_tensor(np.flatnonzero(do_v), device=x.device)
    if len(idx):
        out[idx] = out[idx].flip(-2)

    zoom = s != 1.0
    if zoom.any():
        # output pixel p samples input c + (p - c) / s; in align_corners=False normalised coordinates
        # n_in = n_out / s + (1/s - 1)(1 - 2c/size)
        theta = np.zeros((N, 2, 3))
        theta[:, 0, 0] = 1.0 / s
        theta[:, 1, 1] = 1.0 / s
        theta[:, 0, 2] = (1.0 / s - 1.0) * (1.0 - 2.0 * cx / W)
        theta[:, 1, 2] = (1.0 / s - 1.0) * (1.0 - 2.0 * cy / H)
        zi = np.flatnonzero(zoom)
        th = torch.as_tensor(theta[zi], dtype=out.dtype, device=x.device)
        grid = F.affine_grid(th, [len(zi), C, H, W], align_corners=False)
        zidx = torch.as_tensor(zi, device=x.device)
        out[zidx] = F.grid_sample(out[zidx], grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    f = torch.as_tensor(fac, dtype=out.dtype, device=x.device).view(N, 1, 1, 1)
    out = (out * f).clamp_(0.0, 1.0)

    new_boxes, new_labels = [], []
    for i in range(N):
        b = np.array(boxes[i], dtype=np.float64).reshape(-1, 4).copy()
        lab = np.array(labels[i], dtype=np.int64).reshape(-1)
        if do_h[i]:
            b[:, [0, 2]] = W - b[:, [2, 0]]
        if do_v[i]:
            b[:, [1, 3]] = H - b[:, [3, 1]]
        if zoom[i]:
            b[:, [0, 2]] = cx[i] + s[i] * (b[:, [0, 2]] - cx[i])
            b[:, [1, 3]] = cy[i] + s[i] * (b[:, [1, 3]] - cy[i])
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        c = b.copy()
        c[:, [0, 2]] = c[:, [0, 2]].clip(0.0, W)
        c[:, [1, 3]] = c[:, [1, 3]].clip(0.0, H)
        cw, ch = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
        keep = (cw >= 2.0) & (ch >= 2.0) & (cw * ch >= 0.4 * area)
        new_boxes.append(c[keep])
        new_labels.append(lab[keep])
    return out, new_boxes, new_labels


# --------------------------------------------------------------------------------------- targets


def targets(boxes: np.ndarray, labels: np.ndarray, grid: tuple[int, int], stride: int):
    """Training targets of a stride-``stride`` grid head with ``grid = (GH, GW)`` cells.

    Returns ``cls`` int64 (GH, GW) — 0 background, k+1 class k at each box's centre cell, -1 (ignore) on
    the 8 neighbours of a centre cell that are not centre cells; ``box`` float32 (4, GH, GW) — dx, dy
    (centre offset in the cell, cell units), w, h (cell units) at centre cells, 0 elsewhere; ``mask``
    bool (GH, GW), True at centre cells. Two boxes in one cell: the smaller area wins (ties: the first).
    """
    GH, GW = int(grid[0]), int(grid[1])
    cls = np.zeros((GH, GW), dtype=np.int64)
    box = np.zeros((4, GH, GW), dtype=np.float32)
    mask = np.zeros((GH, GW), dtype=bool)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(b) != len(lab):
        raise ValueError(f"targets: {len(b)} boxes but {len(lab)} labels")
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    for i in sorted(range(len(b)), key=lambda i: (area[i], i)):
        x0, y0, x1, y1 = b[i]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        gx = max(0, min(GW - 1, math.floor(cx / stride)))
        gy = max(0, min(GH - 1, math.floor(cy / stride)))
        if mask[gy, gx]:
            continue
        mask[gy, gx] = True
        cls[gy, gx] = lab[i] + 1
        box[:, gy, gx] = ((cx - gx * stride) / stride, (cy - gy * stride) / stride,
                          (x1 - x0) / stride, (y1 - y0) / stride)
    for gy, gx in zip(*np.nonzero(mask)):
        ys, xs = slice(max(0, gy - 1), gy + 2), slice(max(0, gx - 1), gx + 2)
        ring = cls[ys, xs]
        ring[~mask[ys, xs]] = -1
    return cls, box, mask
