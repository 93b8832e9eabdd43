"""Safe file I/O shared by every command: weights-only loading and atomic writes (no half-written output)."""
from __future__ import annotations

import os
import pickle
import stat
import tempfile
import warnings
from pathlib import Path


from .errors import UserError


def _pickle_imports_code(data: bytes) -> bool:
    """True if a raw pickle names a global or calls one (read with pickletools: nothing is executed)."""
    import pickletools

    code_ops = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD", "EXT1", "EXT2", "EXT4"}
    try:
        return any(op.name in code_ops for op, _, _ in pickletools.genops(data))
    except Exception:  # noqa: BLE001 - a truncated pickle: judge by what was read
        return True


def check_regular_file(path: Path, what: str = "model file") -> None:
    """Refuse a missing path, a folder, or anything but a regular file (a named pipe would block a read)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{path}: is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path}: not a regular file (a device, pipe or socket), not a {what}")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: cannot read (permission denied)")


def load_plain(path: str | Path) -> dict:
    """``torch.load(path, weights_only=True)`` with one-line errors for every way a file can be wrong.

    A model file is a ``torch.save`` zip archive. Anything else is told apart by its first bytes
    before it is parsed: a raw pickle (refused; said whether it names code), text, or other bytes.
    """
    path = Path(path)
    check_regular_file(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        if head[:1] == b"\x80":
            data = path.read_bytes()
            if _pickle_imports_code(data):
                raise UserError(f"{path}: refused: a raw pickle that carries code or objects "
                                f"(model files are torch.save archives of plain tensors)")
            raise UserError(f"{path}: not a model file (a raw pickle, not a torch.save archive)")
        if not head:
            raise UserError(f"{path}: not a model file (the file is empty)")
        kind = "a text file" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "unknown bytes"
        raise UserError(f"{path}: not a model file ({kind}, not a torch.save archive)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch

            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" in msg or "GLOBAL" in msg:
            raise UserError(f"{path}: refused: the file carries pickled code or objects, not plain tensors (weights_only loading)") from None
        detail = next((l.strip() for l in msg.splitlines()[1:] if l.strip() and "WeightsUnpickler" not in l
                       and not l.startswith(("Please", "Check"))), "unpickling failed")
        raise UserError(f"{path}: not a model file (a damaged archive: {detail[:120]})") from None
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

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
