"""Build and run generated C on the host, and compare it with the golden model exactly.

``verify`` returns how many images matched (logits and class, and with ``trace`` every layer's
spike phases) and the first mismatch as (image, layer, neuron, expected, actual).
"""
from __future__ import annotations

import hashlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import golden
from runtime.errors import ToolError
from runtime.spec import IntModel

from . import emit as emit_c
from .toolchain import need, tool_error

HOST_MAIN = emit_c.C_DIR / "host_main.c"
WARN_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]


def build_host(model: IntModel, name: str, work: Path, sanitize: bool = False, opt: str = "-O2") -> Path:
    """Generate the C for ``model`` under ``work`` and compile the host runner; returns its path."""
    cc = need("gcc", "gcc")
    files = emit_c.generate(model, name)
    sym = emit_c.c_symbol(name)
    flags = WARN_FLAGS + [opt] + (SANITIZE_FLAGS if sanitize else [])
    key = hashlib.sha256(b"".join(files[k] for k in sorted(files)) + HOST_MAIN.read_bytes() + " ".join(flags).encode()).hexdigest()[:16]
    src = work / f"src-{key}"
    exe = work / f"host_runner-{key}{'-san' if sanitize else ''}"
    if exe.exists():
        return exe
    src.mkdir(parents=True, exist_ok=True)
    for fn, data in files.items():
        (src / fn).write_bytes(data)
    cmd = [cc] + flags + [f"-DOS_MODEL={sym}_model", "-include", str(src / f"{sym}_model.h"), "-I", str(src),
                          str(HOST_MAIN), str(src / f"{sym}_model.c"), str(src / "onespike.c"), "-o", str(exe) + ".tmp"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise tool_error("gcc on the generated C (a codegen bug, please report it)", cmd, r, src / "compile.log")
    Path(str(exe) + ".tmp").rename(exe)
    return exe


@dataclass
class HostRun:
    logits: np.ndarray
    classes: np.ndarray
    traces: list | None  # per layer (input first): (N, ...) phases


def run_host(model: IntModel, exe: Path, images: np.ndarray, trace: bool = False) -> HostRun:
    images = golden.check_images(model, images)
    n = len(images)
    with tempfile.TemporaryDirectory() as tmp:
        ip, op = Path(tmp) / "images.bin", Path(tmp) / "out.bin"
        ip.write_bytes(images.tobytes())
        cmd = [str(exe), str(ip), str(n), str(op)] + (["--trace"] if trace else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise tool_error("the host runner of the generated C (a codegen bug, please report it)", cmd, r,
                             exe.parent / f"{exe.name}.log")
        raw = op.read_bytes()
    return parse_output(model, raw, n, trace)


def trace_sizes(model: IntModel) -> list[int]:
    return [int(np.prod(model.input_shape))] + [int(np.prod(l.out_shape)) for l in model.layers if not l.readout]


def parse_output(model: IntModel, raw: bytes, n: int, trace: bool) -> HostRun:
    k = model.num_classes
    head = 4 * (k + 1)
    sizes = trace_sizes(model) if trace else []
    rec = head + sum(sizes)
    if len(raw) != rec * n:
        raise ToolError(f"the host runner wrote {len(raw)} bytes, expected {rec * n} (a codegen bug, please report it)")
    buf = np.frombuffer(raw, dtype=np.uint8).reshape(n, rec)
    ints = buf[:, :head].copy().view("<i4").reshape(n, k + 1)
    traces = None
    if trace:
        traces, off = [], head
        for s in sizes:
            traces.append(buf[:, off:off + s].copy())
            off += s
    return HostRun(logits=ints[:, :k].astype(np.int64), classes=ints[:, k].astype(np.int64), traces=traces)


@dataclass
class Mismatch:
    image: int
    layer: str
    neuron: int
    expected: int
    actual: int

    def __str__(self) -> str:
        return f"first mismatch: image {self.image}, layer {self.layer}, neuron {self.neuron}: expected {self.expected}, got {self.actual}"


def compare(model: IntModel, gold: golden.GoldenResult, got: HostRun) -> tuple[int, Mismatch | None]:
    """Images whose logits, class (and traced phases) all equal the golden model's; the first mismatch."""
    n = len(gold.classes)
    ok = np.all(got.logits == gold.logits, axis=1) & (got.classes == gold.classes)
    layer_names = ["input"] + [f"{i}:{l.kind}" for i, l in enumerate(model.layers) if not l.readout]
    gold_traces = [p for p in gold.phases if p is not None] if got.traces is not None else []
    for g, h in zip(gold_traces, got.traces or []):
        ok &= np.all(g.reshape(n, -1) == h, axis=1)
    first = None
    bad = np.flatnonzero(~ok)
    if len(bad):
        i = int(bad[0])
        for name, g, h in zip(layer_names, gold_traces, got.traces or []):
            diff = np.flatnonzero(g[i].reshape(-1) != h[i])
            if len(diff):
                j = int(diff[0])
                first = Mismatch(i, name, j, int(g[i].reshape(-1)[j]), int(h[i][j]))
                break
        if first is None:
            diff = np.flatnonzero(got.logits[i] != gold.logits[i])
            if len(diff):
                j = int(diff[0])
                first = Mismatch(i, f"{len(model.layers) - 1}:readout (logits)", j, int(gold.logits[i, j]), int(got.logits[i, j]))
            else:
                first = Mismatch(i, "class", 0, int(gold.classes[i]), int(got.classes[i]))
    return int(ok.sum()), first


def verify_host(model: IntModel, name: str, images: np.ndarray, work: Path, trace: bool = True,
                sanitize: bool = False, batch: int = 2000) -> tuple[int, int, Mismatch | None]:
    exe = build_host(model, name, work, sanitize=sanitize)
    matched, first = 0, None
    for s in range(0, len(images), batch):
        part = images[s:s + batch]
        gold = golden.run(model, part, keep_phases=trace)
        got = run_host(model, exe, part, trace=trace)
        m, f = compare(model, gold, got)
        matched += m
        if first is None and f is not None:
            f.image += s
            first = f
    return matched, len(images), first
