"""Safe file I/O shared by every command: weights-only loading and atomic writes (no half-written output)."""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

from .errors import UserError


def load_plain(path: str | Path) -> dict:
    """``torch.load(path, weights_only=True)`` with one-line errors for every way a file can be wrong."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a model file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg or "Unsupported global" in msg or "GLOBAL" in msg:
            raise UserError(f"{path}: refused: the file carries pickled code or objects, not plain tensors (weights_only loading)") from None
        raise UserError(f"{path}: not a model file ({msg.splitlines()[0] if msg else 'unpickling failed'})") from None
    except Exception as e:  # noqa: BLE001 - any failure to parse means: not a model file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: not a model file ({first[:160]})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a model file (top level is {type(obj).__name__}, expected a dict)")
    return obj


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj, path: str | Path) -> None:
    """Save ``obj`` with ``torch.save`` through a temp file; byte-identical for identical ``obj``."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
