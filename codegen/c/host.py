"""Build and run generated C on the host, and compare it with the golden model exactly.

``verify`` returns how many images matched (logits and class, and with ``trace`` every layer's
spike phases; a detector's detections too) and the first mismatch as (image, layer, neuron,
expected, actual), or for a detector whose logits all match, the first differing detection.
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


def build_host(model: IntModel, name: str, work: Path, sanitize: bool = False, opt: str = "-O2",
               lanes: bool | None = None) -> Path:
    """Generate the C for ``model`` under ``work`` and compile the host runner; returns its path.

    ``lanes``: True builds the phase-bucket kernel (``-DOS_LANES=1``, the Cortex-M4 kernel's
    portable reading), False the direct one, None the compiler's default (direct on the host)."""
    cc = need("gcc", "gcc")
    files = emit_c.generate(model, name)
    sym = emit_c.c_symbol(name)
    flags = WARN_FLAGS + [opt] + (SANITIZE_FLAGS if sanitize else []) + detect_defines(model, sym)
    if lanes is not None:
        flags.append(f"-DOS_LANES={int(lanes)}")
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


def detect_defines(model: IntModel, sym: str) -> list[str]:
    """The host runner's (and firmware's) defines of a detector's entry points; none for a classifier."""
    if not emit_c.is_detector(model):
        return []
    return [f"-DOS_DETECT={sym}_detect", f"-DOS_DETECT_LOGITS={sym}_detect_logits", f"-DOS_READOUT={sym}_readout",
            f"-DOS_INPUT_BUF={sym}_input", f"-DOS_MAX_DETECTIONS={int(model.head.max_detections)}"]


@dataclass
class HostRun:
    logits: np.ndarray
    classes: np.ndarray
    traces: list | None  # per layer (input first): (N, ...) phases
    detections: list | None = None  # a detector: per image int64 (n, 6) (class, x0, y0, x1, y1, score)


DET_ROW_BYTES = 28  # 7 little-endian 32-bit words: class, x0, y0, x1, y1, score low, score high


def parse_detections(raw: bytes, off: int, max_detections: int, who: str) -> tuple[np.ndarray, int]:
    """One image's detections at ``raw[off:]`` (int32 count, then count rows): (int64 (n, 6), next offset)."""
    if off + 4 > len(raw):
        raise ToolError(f"{who} wrote {len(raw)} bytes, too few for the detections (a codegen bug, please report it)")
    n = int(np.frombuffer(raw, dtype="<i4", count=1, offset=off)[0])
    if not 0 <= n <= max_detections or off + 4 + DET_ROW_BYTES * n > len(raw):
        raise ToolError(f"{who} wrote a detection count of {n} (at most {max_detections}) or too few bytes "
                        f"(a codegen bug, please report it)")
    off += 4
    words = np.frombuffer(raw, dtype="<u4", count=7 * n, offset=off).reshape(n, 7).astype(np.uint64)
    rows = np.empty((n, 6), dtype=np.int64)
    rows[:, :5] = words[:, :5].astype(np.uint32).view(np.int32)
    rows[:, 5] = (words[:, 5] | (words[:, 6] << np.uint64(32))).view(np.int64)
    return rows, off + DET_ROW_BYTES * n


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
    if emit_c.is_detector(model):
        return _parse_detector_output(model, raw, n, sizes, rec)
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


def _parse_detector_output(model: IntModel, raw: bytes, n: int, sizes: list[int], rec: int) -> HostRun:
    """Records of a detector's runner: the classifier's record, then the detections (variable length)."""
    k = model.num_classes
    ints = np.empty((n, k + 1), dtype=np.int64)
    traces = [np.empty((n, s), dtype=np.uint8) for s in sizes] if sizes else None
    dets, off = [], 0
    for i in range(n):
        if off + rec > len(raw):
            raise ToolError(f"the host runner wrote {len(raw)} bytes, too few for {n} images (a codegen bug, please report it)")
        ints[i] = np.frombuffer(raw, dtype="<i4", count=k + 1, offset=off)
        p = off + 4 * (k + 1)
        for t, s in zip(traces or [], sizes):
            t[i] = np.frombuffer(raw, dtype=np.uint8, count=s, offset=p)
            p += s
        d, off = parse_detections(raw, p, int(model.head.max_detections), "the host runner")
        dets.append(d)
    if off != len(raw):
        raise ToolError(f"the host runner wrote {len(raw)} bytes, expected {off} (a codegen bug, please report it)")
    return HostRun(logits=ints[:, :k], classes=ints[:, k], traces=traces, detections=dets)


def _row(r) -> str:
    return "(" + ", ".join(str(int(v)) for v in r) + ")"


def detection_mismatch(expected: np.ndarray, got: np.ndarray) -> str | None:
    """The first difference of two detection lists (int64 (n, 6)) as words, or None when equal:
    ``detection 2 differs: expected (...), got (...)``, or a count mismatch naming the first
    missing or extra detection."""
    expected, got = np.asarray(expected).reshape(-1, 6), np.asarray(got).reshape(-1, 6)
    for j in range(min(len(expected), len(got))):
        if not np.array_equal(expected[j], got[j]):
            return f"detection {j} differs: expected {_row(expected[j])}, got {_row(got[j])}"
    if len(expected) > len(got):
        j = len(got)
        return f"expected {len(expected)} detections, got {len(got)}: detection {j} missing, expected {_row(expected[j])}"
    if len(got) > len(expected):
        j = len(expected)
        return f"expected {len(expected)} detections, got {len(got)}: extra detection {j}, got {_row(got[j])}"
    return None


@dataclass
class Mismatch:
    image: int
    layer: str
    neuron: int
    expected: int
    actual: int
    detail: str | None = None  # a detection mismatch, in words (layer "detections")

    def __str__(self) -> str:
        if self.detail is not None:
            return f"first mismatch: image {self.image}: {self.detail}"
        return f"first mismatch: image {self.image}, layer {self.layer}, neuron {self.neuron}: expected {self.expected}, got {self.actual}"


def compare(model: IntModel, gold: golden.GoldenResult, got: HostRun) -> tuple[int, Mismatch | None]:
    """Images whose logits, class (and traced phases; a detector's detections) all equal the golden model's; the first mismatch."""
    n = len(gold.classes)
    ok = np.all(got.logits == gold.logits, axis=1) & (got.classes == gold.classes)
    layer_names = ["input"] + [f"{i}:{l.kind}" for i, l in enumerate(model.layers) if not l.readout]
    gold_traces = [p for p in gold.phases if p is not None] if got.traces is not None else []
    for g, h in zip(gold_traces, got.traces or []):
        ok &= np.all(g.reshape(n, -1) == h, axis=1)
    det_diff = [None] * n
    if emit_c.is_detector(model):
        if gold.detections is None or got.detections is None:
            raise ToolError("a detector's golden result and host run must both carry detections (a codegen bug)")
        det_diff = [detection_mismatch(e, g) for e, g in zip(gold.detections, got.detections)]
        ok &= np.array([d is None for d in det_diff], dtype=bool)
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
            elif got.classes[i] != gold.classes[i]:
                first = Mismatch(i, "class", 0, int(gold.classes[i]), int(got.classes[i]))
            else:
                first = Mismatch(i, "detections", 0, 0, 0, detail=det_diff[i])
    return int(ok.sum()), first


def verify_host(model: IntModel, name: str, images: np.ndarray, work: Path, trace: bool = True,
                sanitize: bool = False, batch: int = 2000, lanes: bool | None = None) -> tuple[int, int, Mismatch | None]:
    exe = build_host(model, name, work, sanitize=sanitize, lanes=lanes)
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
