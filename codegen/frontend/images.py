"""The user's own images: uint8 pixels ``(N, C, H, W)`` from a ``.npy`` file, with one-line errors."""
from __future__ import annotations

from pathlib import Path


def load_npy(path, model=None):
    """uint8 pixels (N, C, H, W) from a ``.npy`` file, with one-line errors (no pickles, no text files)."""
    import numpy as np

    from runtime.errors import UserError
    from runtime.io import check_regular_file

    p = Path(path)
    check_regular_file(p, ".npy file")
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        raise UserError(f"{p}: not a .npy file (no NumPy header); save images with numpy.save")
    try:
        x = np.load(p, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise UserError(f"{p}: holds Python objects, not uint8 pixels (object arrays are refused)") from None
        raise UserError(f"{p}: not a readable .npy array ({str(e).splitlines()[0][:120]})") from None
    except (OSError, EOFError) as e:
        raise UserError(f"{p}: not a readable .npy array ({str(e).splitlines()[0][:120] or type(e).__name__})") from None
    if not isinstance(x, np.ndarray):
        raise UserError(f"{p}: not a single .npy array")
    if x.ndim >= 1 and x.shape[0] == 0:
        raise UserError(f"{p}: holds 0 images")
    if model is None:
        return x
    from runtime import golden

    try:
        return golden.check_images(model, x)
    except UserError as e:
        raise UserError(f"{p}: {e}") from None


IMAGE_FORMATS = ("JPEG", "PNG")


def load_pictures(paths, shape) -> tuple:
    """JPEG/PNG files as uint8 pixels (N, C, H, W) resized to the model input ``shape`` (C, H, W).

    Every file is checked (exists, is a JPEG or PNG Pillow can decode) before any is converted, each
    problem a one-line error naming it. An image of another size is resized (bilinear, aspect ratio not
    kept: the boxes are mapped back per axis); colour is converted to the model's channels.
    Returns ``(pixels, original sizes [(width, height)])``."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from runtime.errors import UserError
    from runtime.io import check_regular_file

    c, h, w = shape
    opened = []
    for p in map(Path, paths):
        check_regular_file(p, "image")
        try:
            with Image.open(p) as im:
                fmt = im.format
                if fmt not in IMAGE_FORMATS:
                    raise UserError(f"{p}: a {fmt} image; give JPEG or PNG files")
                im.load()
                opened.append(im.copy())
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
            raise UserError(f"{p}: not a readable JPEG or PNG image ({str(e).splitlines()[0][:100] if str(e) else type(e).__name__})") from None
    pixels, sizes = [], []
    for im in opened:
        sizes.append(im.size)
        im = im.convert("L" if c == 1 else "RGB")
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        pixels.append(a[None] if c == 1 else a.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(pixels)), sizes


def to_nchw(x, shape, where: str):
    """uint8 images (N, C, H, W), (N, H, W, C) or, for one channel, (N, H, W) -> (N, C, H, W) for ``shape``."""
    import numpy as np

    from runtime.errors import UserError

    c, h, w = shape
    if x.dtype != np.uint8:
        raise UserError(f"{where}: images must be uint8 pixels (0..255), not {x.dtype}")
    if x.ndim == 4 and x.shape[1:] == (c, h, w):
        return np.ascontiguousarray(x)
    if x.ndim == 4 and x.shape[1:] == (h, w, c):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim == 3 and c == 1 and x.shape[1:] == (h, w):
        return np.ascontiguousarray(x[:, None])
    raise UserError(f"{where}: images of shape {tuple(x.shape)} do not fit the model input (C, H, W) = {tuple(shape)}: "
                    f"give (N, {c}, {h}, {w}), (N, {h}, {w}, {c})" + (f" or (N, {h}, {w})" if c == 1 else ""))


def _pictures_under(folder: Path) -> list:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def load_user_images(path, shape):
    """Calibration images from the user: a ``.npy`` of uint8 pixels, a folder of JPEG/PNG files (searched
    recursively, resized to the model input) or a VOC folder (its ``JPEGImages``). Returns (N, C, H, W) uint8."""
    from runtime.errors import UserError

    p = Path(path)
    if p.is_dir():
        voc = p / "JPEGImages"
        files = _pictures_under(voc if voc.is_dir() else p)
        if not files:
            raise UserError(f"{p}: no JPEG or PNG images in the folder")
        return load_pictures(files, shape)[0]
    if not p.exists():
        raise UserError(f"{p}: no such file or folder (give a .npy of uint8 images or a folder of JPEG/PNG images)")
    return to_nchw(load_npy(p), shape, str(p))


def load_labelled(path, labels, shape):
    """A labelled test set: ``(images (N, C, H, W) uint8, labels int64 (N,))`` from a ``.npy`` pair (``path``
    and ``labels``) or from a folder with one sub-folder of JPEG/PNG images per class (sub-folders named
    0, 1, ... are those classes; other names are the classes in sorted order)."""
    import numpy as np

    from runtime.errors import UserError

    p = Path(path)
    if p.is_dir():
        if labels is not None:
            raise UserError("--test-labels applies to a .npy of test images, not to a folder of class sub-folders")
        classes = sorted(d for d in p.iterdir() if d.is_dir())
        if not classes:
            raise UserError(f"{p}: no class sub-folders (give one folder of images per class)")
        numeric = all(d.name.isdigit() for d in classes)
        xs, ys = [], []
        for i, d in enumerate(sorted(classes, key=lambda d: int(d.name)) if numeric else classes):
            files = _pictures_under(d)
            if files:
                xs.append(load_pictures(files, shape)[0])
                ys += [int(d.name) if numeric else i] * len(files)
        if not xs:
            raise UserError(f"{p}: the class sub-folders hold no JPEG or PNG images")
        return np.concatenate(xs), np.asarray(ys, dtype=np.int64)
    if labels is None:
        raise UserError(f"{p}: give the labels of the test images with --test-labels LABELS.npy")
    x = to_nchw(load_npy(p), shape, str(p))
    y = load_npy(labels)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise UserError(f"{labels}: labels must be a 1-D array of integers, not {y.dtype} {tuple(y.shape)}")
    if len(y) != len(x):
        raise UserError(f"{labels}: {len(y)} labels for {len(x)} images in {p}")
    if y.min() < 0:
        raise UserError(f"{labels}: labels must be non-negative class indices")
    return x, y.astype(np.int64)
