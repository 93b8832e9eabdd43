"""``codegen emit --target lut``: the integer tables as ``$readmemh`` files, one ``tables.npz`` and a manifest.

Files (all deterministic: sorted, no timestamps):

* ``decode.mem`` / ``encode.mem`` / ``input_decode.mem``: the decode table D (T+1 entries), the
  256-entry input encoder, and the input code's decode table D_in (T_in+1 entries). Unsigned tables
  use one extra (sign) bit when choosing the number of hex digits.
* ``L<i>_<kind>_weight.mem``: int8 weights, two's complement, 2 hex digits, row-major
  (dense ``[out][in]``, conv2d ``[out][in_ch][ky][kx]``).
* ``L<i>_<kind>_bias.mem`` / ``L<i>_<kind>_theta.mem``: bias ``[out]`` and thresholds ``[ch][phase]``
  in two's complement at the layer's accumulator width (``acc_bits``).
* ``tables.npz``: the same arrays under the same names, for Python users.
* ``manifest.json``: model sha256, spec and tool versions, Q/T/F, layer shapes and widths, and every
  file with its size and sha256.
"""
from __future__ import annotations

import hashlib
import io
import json
import platform
import zipfile
from pathlib import Path

import numpy as np

from runtime.io import atomic_write_bytes
from runtime.spec import SCHEMA_VERSION, IntModel

from .outputs import replace_dir

TOOL_VERSION = "0.1.0"


def mem_lines(values: np.ndarray, bits: int) -> bytes:
    """Two's-complement hex, one word per line, ``ceil(bits / 4)`` digits, for ``$readmemh``."""
    digits = max(1, (bits + 3) // 4)
    mask = (1 << (4 * digits)) - 1
    v = np.asarray(values, dtype=np.int64).ravel()
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if v.size and (v.min() < lo or v.max() > hi):
        raise ValueError(f"value out of {bits}-bit range")  # the range analysis makes this unreachable
    return "".join(f"{int(x) & mask:0{digits}x}\n" for x in v).encode()


def unsigned_bits(values: np.ndarray) -> int:
    m = int(np.max(values)) if np.size(values) else 0
    return max(1, m.bit_length())


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (numpy's format) with fixed timestamps and sorted members: byte-identical output."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def tables(model: IntModel) -> dict[str, tuple[np.ndarray, int, bool]]:
    """name -> (array, width in bits, signed)."""
    out = {
        "decode": (model.decode, unsigned_bits(model.decode), False),
        "encode": (model.encode.astype(np.int64), unsigned_bits(model.encode), False),
        "input_decode": (model.input_decode, unsigned_bits(model.input_decode), False),
    }
    for i, l in enumerate(model.layers):
        p = f"L{i}_{l.kind}"
        if l.weight is not None:
            out[f"{p}_weight"] = (l.weight.astype(np.int64), 8, True)
            out[f"{p}_bias"] = (l.bias, l.acc_bits, True)
        if l.theta is not None:
            out[f"{p}_theta"] = (l.theta, l.acc_bits, True)
    return out


def tool_versions() -> dict[str, str]:
    import numba
    import torch

    return {"onespike-codegen": TOOL_VERSION, "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "torch": str(torch.__version__)}


def layer_summary(model: IntModel) -> list[dict]:
    return [{"index": i, "kind": l.kind, "name": l.name, "in_shape": list(l.in_shape), "out_shape": list(l.out_shape),
             "kernel": l.kernel, "stride": l.stride, "padding": l.padding, "readout": l.readout, "acc_bits": l.acc_bits}
            for i, l in enumerate(model.layers)]


def write_with_manifest(out_dir: Path, files: dict[str, bytes], manifest: dict) -> dict:
    """Add every file's size and sha256 to ``manifest``, write it as manifest.json, and swap the folder in."""
    manifest["files"] = [{"name": n, "bytes": len(files[n]), "sha256": hashlib.sha256(files[n]).hexdigest()}
                         for n in sorted(files)]
    files["manifest.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    replace_dir(out_dir, files, manifest["target"])
    return manifest


def emit(model: IntModel, model_sha256: str, model_name: str, out_dir: Path) -> dict:
    tabs = tables(model)
    files: dict[str, bytes] = {}
    for name, (arr, bits, signed) in tabs.items():
        files[f"{name}.mem"] = mem_lines(arr, bits + (0 if signed else 1)) if not signed else mem_lines(arr, bits)
    files["tables.npz"] = npz_bytes({k: v[0] for k, v in tabs.items()})
    manifest = {
        "target": "lut",
        "model": {"name": model_name, "sha256": model_sha256},
        "spec": {"schema_version": SCHEMA_VERSION, "Q": model.Q, "T": model.T, "F": model.F,
                 "no_spike_code": model.T, "input_Q": model.input_Q, "input_T": model.input_T,
                 "input_no_spike_code": model.input_T, "input_shape": list(model.input_shape),
                 "layers_reading_input_code": [i for i, x in enumerate(model.input_codes()) if x],
                 "task": model.task,
                 # a detector's decode parameters (docs/spec.md §10): the readout map's tables alone do not say
                 # how to turn it into boxes
                 "head": None if model.head is None else model.head.to_dict()},
        "tools": tool_versions(),
        "layers": layer_summary(model),
        "tables": {name: {"entries": int(np.size(arr)), "bits": bits, "signed": signed}
                   for name, (arr, bits, signed) in sorted(tabs.items())},
    }
    write_with_manifest(out_dir, files, manifest)
    return manifest


__all__ = ["emit", "mem_lines", "npz_bytes", "tables", "atomic_write_bytes"]
