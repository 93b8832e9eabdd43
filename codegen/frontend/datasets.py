"""Datasets in the IDX layout (MNIST, Fashion-MNIST), read from ``../shared/data`` or ``$ONESPIKE_DATA``.

Images are returned as uint8 arrays of shape (N, 1, 28, 28) — the integer model consumes raw pixels —
and labels as int64 arrays of shape (N,).
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from runtime.errors import UserError

DATASETS = {"mnist": "mnist", "fashion-mnist": "fashion-mnist", "fmnist": "fashion-mnist"}
_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}


def data_root() -> Path:
    """Folder holding the dataset folders: ``$ONESPIKE_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("ONESPIKE_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise UserError(f"dataset file not found: {path} (set ONESPIKE_DATA to the folder holding mnist/ and fashion-mnist/)") from None
    magic = int.from_bytes(raw[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise UserError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path}: IDX header says {dims} but holds {data.size} bytes")
    return data.reshape(dims)


def canonical(name: str) -> str:
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(set(DATASETS)))}") from None


def load(name: str, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 (N,1,28,28), labels int64 (N,))`` for ``split`` in {"train", "test"}."""
    folder = data_root() / canonical(name)
    if split not in ("train", "test"):
        raise UserError(f"split must be 'train' or 'test', not {split!r}")
    images = _read_idx(folder / _FILES[(split, "images")])
    labels = _read_idx(folder / _FILES[(split, "labels")])
    if images.shape[0] != labels.shape[0]:
        raise UserError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels")
    return np.ascontiguousarray(images[:, None, :, :]), labels.astype(np.int64)
