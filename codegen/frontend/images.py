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
