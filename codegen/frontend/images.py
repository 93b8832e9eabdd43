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
