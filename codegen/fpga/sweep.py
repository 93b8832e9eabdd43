"""Design-space sweep of the fpga target (``codegen sweep``): every point of lanes x store x board is
synthesised (Yosys + nextpnr, :func:`.synth.synthesize`) and, if it fits, benchmarked on the same
design in the compiled Verilator harness (:func:`.bulk.bulk_verify`: cycles per inference, back to
back, and parity with the golden model); the results are a table (``sweep.md``, ``sweep.csv``), every
point's full record (``sweep.json``) and a Pareto plot of LUTs against latency (``pareto.png``).

One point is one job on Dask distributed (:func:`.engine.run_jobs`: an embedded local cluster of
``workers`` processes, a scheduler at ``cluster``, or this process for one worker): a job whose
worker fails or dies is retried, and a point that fails on every try is listed as lost, never dropped.

A point whose resolved design does not fit the board by the estimate (block RAM, SPRAM, DSP: the
counts tests/test_synth.py checks against Yosys) is not synthesised: its row says what it needs; one
that passes the estimate but fails place and route says nextpnr's message. See docs/fpga-sweep.md.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import ToolError, UserError
from runtime.spec import IntModel

from .engine import run_jobs
from .store import FIFO_DEPTH, STORES, check_lanes

OUTPUT_KIND = "sweep"
FILES = ("sweep.json", "sweep.md", "sweep.csv", "pareto.png")
MARKERS = ("o", "s", "^", "D", "v", "P")
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


# --------------------------------------------------------------------------------------------------
# the points


@dataclass(frozen=True)
class Point:
    """One design of the sweep: ``lanes`` an int, a tuple (one per layer) or ``"auto"``; ``store`` as
    ``--store`` takes it; ``board`` an FPGA board's name."""

    board: str
    store: str
    lanes: object

    @property
    def lanes_label(self) -> str:
        return lanes_label(self.lanes)

    @property
    def key(self) -> str:
        """The point's work folder name (``icebreaker-auto-4``, ``ulx3s-rom-4_1_8``)."""
        return f"{self.board}-{self.store}-{self.lanes_label.replace('/', '_')}"


def lanes_label(lanes) -> str:
    """``auto``, ``4`` or ``4/1/8`` (one per layer), as a sweep's ``--lanes`` item writes it."""
    if isinstance(lanes, (list, tuple)):
        return "/".join(str(int(v)) for v in lanes)
    return str(lanes)


def parse_lanes_list(text) -> list:
    """``--lanes`` of a sweep: comma-separated points, each ``N``, ``N/N/...`` (one per layer) or
    ``auto``. Returns ints, tuples and ``"auto"``; a one-line UserError for a bad or repeated item."""
    items = [t.strip() for t in str(text).split(",")]
    out = []
    for t in items:
        if t == "auto":
            v = "auto"
        else:
            try:
                vals = [int(s) for s in t.split("/")]
            except ValueError:
                raise UserError(f"--lanes: {t!r} is not a point; give comma-separated points, each N, N/N/... "
                                f"(one per layer) or auto, e.g. --lanes 2,4,4/1/8,auto") from None
            vals = check_lanes(vals if len(vals) > 1 else vals[0])
            v = tuple(vals) if isinstance(vals, list) else vals
        if v in out:
            raise UserError(f"--lanes names the point {lanes_label(v)} twice")
        out.append(v)
    return out


def parse_stores(text) -> list[str]:
    """``--store`` of a sweep: comma-separated, each auto, rom or ram."""
    out = []
    for t in (s.strip() for s in str(text).split(",")):
        if t not in STORES:
            raise UserError(f"--store: {t!r} is not a store; give comma-separated {', '.join(STORES)}")
        if t in out:
            raise UserError(f"--store names {t} twice")
        out.append(t)
    return out


def parse_boards(text) -> list[str]:
    """``--board`` of a sweep: comma-separated FPGA boards (or device names); their canonical names."""
    from boards import registry

    out = []
    for t in (s.strip() for s in str(text).split(",")):
        name = registry.fpga(t, "codegen sweep").name
        if name in out:
            raise UserError(f"--board names {name} twice")
        out.append(name)
    return out


def make_points(boards: list[str], stores: list[str], lanes: list) -> list[Point]:
    """The cartesian product, in the order of the rows: board, then store, then lanes, as given."""
    return [Point(b, s, ln) for b in boards for s in stores for ln in lanes]


def check_points(model: IntModel, lanes: list) -> None:
    """Every per-layer lanes item has one count per layer of ``model`` (one line, exit 2, otherwise)."""
    n = len(model.layers)
    for v in lanes:
        if isinstance(v, tuple) and len(v) != n:
            raise UserError(f"--lanes {lanes_label(v)}: the model has {n} layers, so a per-layer point needs {n} "
                            f"counts separated by '/', not {len(v)}")


def check_tools(boards: list[str]) -> None:
    """Yosys, the boards' nextpnr and Verilator are installed (one line naming the missing one)."""
    from . import bulk, synth
    from .store import get_board

    synth.find_tool("yosys")
    for fam in dict.fromkeys(get_board(b).family for b in boards):
        synth.find_tool(f"nextpnr-{fam}")
    bulk._verilator()


# --------------------------------------------------------------------------------------------------
# one point (a Dask job: a module-level function, so that a worker can import it)


def _estimate_reason(mp: dict, b) -> str:
    parts = []
    if mp["block_rams"] > mp["block_rams_available"]:
        parts.append(f"needs {mp['block_rams']} block RAMs (board has {mp['block_rams_available']} {b.bram_name})")
    if mp["dsp"] > mp["dsp_available"]:
        parts.append(f"needs {mp['dsp']} DSPs (board has {mp['dsp_available']} {b.dsp_name})")
    if mp.get("spram", 0) > mp.get("spram_available", 0):
        parts.append(f"needs {mp['spram']} SPRAMs (board has {mp['spram_available']} {b.spram_name})")
    return "estimate: " + " and ".join(parts or ["does not fit"])


def run_point(model: IntModel, board: str, store: str, lanes, images, fifo_depth: int, work: str,
              name: str, fail: bool = False) -> dict:
    """One point: the lanes (``auto``: :func:`.fit.fit_lanes` for the board) and the store resolved,
    the fit estimated, then synthesis and place and route in ``work/synth`` and, if it fits, the
    cycle benchmark and parity on ``images`` in ``work/bench``. Returns the point's record. A design
    that does not fit, or that cannot be built (a UserError: e.g. ``ram`` on a board without SPRAM),
    is a record saying why; anything else raises, so that the engine retries the job.
    ``fail`` (tests): the job raises on every try."""
    from . import fit
    from .bulk import bulk_verify
    from .store import get_board, resolve_store
    from .synth import synthesize

    if fail:
        raise ToolError("test hook: this point's job fails on every try")
    b = get_board(board)
    work = Path(work)
    rec = {"board": b.name, "store": store, "lanes": lanes_label(lanes), "lanes_resolved": None,
           "store_resolved": None, "status": None, "fits": False, "fit_source": None, "reason": None,
           "resources": None, "fmax_mhz": None, "cycles": None, "latency_us": None, "fps": None, "parity": None,
           "pareto": False, "work": str(work), "seconds": {}}
    t0 = time.perf_counter()
    try:
        if lanes == "auto":
            got = fit.fit_lanes(model, b, fifo_depth, store)
            rec["seconds"]["fit_lanes"] = round(time.perf_counter() - t0, 1)
            if got is None:
                rec.update(status="does not fit", fit_source="estimate",
                           reason=f"estimate: no lane count fits {b.name} with store {store}")
                return rec
            ln = got[0] if len(set(got)) == 1 else list(got)
        else:
            ln = list(lanes) if isinstance(lanes, tuple) else lanes
        st = resolve_store(model, b, ln, store, fifo_depth)
        rec["lanes_resolved"] = lanes_label(ln)
        rec["store_resolved"] = st
        mp = fit.mapping(model, b, ln, fifo_depth, st)
        rec["estimate"] = {k: mp[k] for k in ("block_rams", "block_rams_available", "dsp", "dsp_available",
                                              "spram", "spram_available") if k in mp}
        if not mp["fits"]:
            rec.update(status="does not fit", fit_source="estimate", reason=_estimate_reason(mp, b))
            return rec
        t = time.perf_counter()
        rep = synthesize(model, b, ln, work / "synth", name=name, fifo_depth=fifo_depth, store=st, chart=False)
        rec["seconds"]["synthesis"] = round(time.perf_counter() - t, 1)
    except UserError as e:
        rec.update(status="refused", reason=str(e))
        return rec
    rec["synth_report"] = rep
    rec["resources"] = rep["synthesis"].get("resources")
    pr = rep.get("place_and_route", {})
    rec["fmax_mhz"] = pr.get("fmax_mhz")
    if not rep["fits"]:
        where = "yosys" if not rep["synthesis"]["ok"] else "nextpnr"
        err = rep["synthesis"].get("error") if where == "yosys" else pr.get("error")
        rec.update(status="does not fit", fit_source=where, reason=f"{where}: {err}")
        return rec
    rec.update(fits=True, fit_source="nextpnr")
    t = time.perf_counter()
    try:
        r = bulk_verify(model, images, ln, fifo_depth=fifo_depth, store=st, work=work / "bench", workers=1,
                        gap=0.0, stall=0.0)         # clean stimulus: the cycles of frames back to back
    except UserError as e:
        rec.update(status="refused", reason=f"cycle benchmark: {e}")
        return rec
    rec["seconds"]["benchmark"] = round(time.perf_counter() - t, 1)
    if r.error:         # a harness that failed or timed out: retried by the engine, then lost
        raise ToolError(f"cycle benchmark: {r.error}")
    rec["cycles"] = {"median": float(np.median(r.cycles)), "min": int(min(r.cycles)), "max": int(max(r.cycles)),
                     "frames": len(r.cycles), "source": "bulk harness (Verilator, back to back)"}
    rec["parity"] = {"matched": r.matched, "total": r.total, "passed": r.passed,
                     "mismatches": [list(m) for m in r.mismatches[:5]]}
    rec["status"] = "ok" if r.passed else "parity failed"
    fmax = rec["fmax_mhz"]
    med = rec["cycles"]["median"]
    if fmax and med:
        rec["latency_us"] = round(med / fmax, 3)
        rec["fps"] = round(fmax * 1e6 / med, 1)
    rec["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    return rec


# --------------------------------------------------------------------------------------------------
# the sweep


@dataclass
class SweepResult:
    points: list
    records: list
    lost: list = field(default_factory=list)
    wall_s: float = 0.0
    workers: int = 1
    cluster: str | None = None
    frames: int = 0
    frames_source: str = ""

    @property
    def failed_parity(self) -> list:
        return [r for r in self.records if r["status"] == "parity failed"]

    def summary(self) -> str:
        n = len(self.records)
        count = {s: sum(r["status"] == s for r in self.records)
                 for s in ("ok", "parity failed", "does not fit", "refused", "lost")}
        where = f"the Dask scheduler {self.cluster}" if self.cluster else \
            (f"{self.workers} workers" if self.workers > 1 else "this process")
        plural = {"does not fit": "do not fit"}
        parts = [f"{sum(r['fits'] for r in self.records)} fit"] + [
            f"{v} {plural.get(k, k) if v > 1 else k}" for k, v in count.items() if v and k != "ok"]
        front = [f"{r['board']} {r['lanes']} {r['store']}" for r in self.records if r["pareto"]]
        return (f"sweep: {n} points ({', '.join(parts)}) on {where} in {self.wall_s:.0f} s"
                + (f"; Pareto front: {'; '.join(front)}" if front else ""))


def run_sweep(model: IntModel, points: list[Point], images, *, name: str = "model", fifo_depth: int = FIFO_DEPTH,
              work: str | Path = "build/sweep-work", workers: int = 1, cluster: str | None = None,
              progress: bool = False, frames_source: str = "", fail_point: int | None = None) -> SweepResult:
    """Every point as one job (:func:`run_point`) on :func:`.engine.run_jobs`; records in the order of
    ``points``, a lost point's record says so. ``fail_point`` (tests): that point's job fails on every try."""
    work = Path(work).resolve()
    t0 = time.perf_counter()
    jobs = [(model, p.board, p.store, p.lanes, images, int(fifo_depth), str(work / p.key), name, k == fail_point)
            for k, p in enumerate(points)]
    outs, lost = run_jobs(run_point, jobs, workers, cluster, progress=progress, desc="sweep", unit="point")
    records = []
    for k, (p, out) in enumerate(zip(points, outs)):
        if out is None:
            why = next((l.split(": ", 1)[1] for l in lost if l.startswith(f"point {k}:")), "its job failed")
            out = {"board": p.board, "store": p.store, "lanes": p.lanes_label, "lanes_resolved": None,
                   "store_resolved": None, "status": "lost", "fits": False, "fit_source": None,
                   "reason": f"lost: failed on every try ({why})", "resources": None, "fmax_mhz": None,
                   "cycles": None, "latency_us": None, "fps": None, "parity": None, "pareto": False,
                   "work": str(work / p.key), "seconds": {}}
        out["index"] = k
        records.append(out)
    mark_pareto(records)
    return SweepResult(points=list(points), records=records, lost=list(lost), wall_s=time.perf_counter() - t0,
                       workers=int(workers), cluster=cluster, frames=len(images), frames_source=frames_source)


# --------------------------------------------------------------------------------------------------
# the Pareto front


def pareto_front(points: list) -> list[bool]:
    """For ``(x, y)`` pairs (None: not a candidate), whether each is on the front that minimises both:
    no other point is at most as large in both and smaller in one. Equal points are both on it."""
    out = []
    for i, p in enumerate(points):
        if p is None:
            out.append(False)
            continue
        x, y = p
        dominated = any(q is not None and j != i and q[0] <= x and q[1] <= y and (q[0] < x or q[1] < y)
                        for j, q in enumerate(points))
        out.append(not dominated)
    return out


def _xy(rec: dict):
    res = rec.get("resources") or {}
    if not rec.get("fits") or rec.get("latency_us") is None or res.get("lut") is None:
        return None
    return (res["lut"], rec["latency_us"])


def mark_pareto(records: list[dict]) -> None:
    """``rec["pareto"]``: on its board's front of (LUTs, latency µs) among the points that fit."""
    for b in dict.fromkeys(r["board"] for r in records):
        idx = [k for k, r in enumerate(records) if r["board"] == b]
        for k, on in zip(idx, pareto_front([_xy(records[k]) for k in idx])):
            records[k]["pareto"] = on


# --------------------------------------------------------------------------------------------------
# the outputs

COLUMNS = ("board", "store", "lanes", "fits", "LUT", "FF", "BRAM", "SPRAM", "DSP", "Fmax MHz", "cycles median",
           "latency µs", "fps", "parity", "Pareto", "note")


def _store_cell(rec: dict) -> str:
    st = rec.get("store_resolved")
    if st and rec["store"] == "auto":
        return f"auto ({'/'.join(st)})"
    return rec["store"]


def _lanes_cell(rec: dict) -> str:
    if rec["lanes"] == "auto" and rec.get("lanes_resolved"):
        return f"auto ({rec['lanes_resolved']})"
    return rec["lanes"]


def _num(v, fmt="{:,}"):
    return "—" if v is None else fmt.format(v)


def row_cells(rec: dict) -> list[str]:
    res = rec.get("resources") or {}
    fits = {"lost": "LOST", "refused": "—"}.get(rec["status"], "yes" if rec["fits"] else "no")
    cyc = rec.get("cycles")
    cyc_s = "—" if not cyc else f"{cyc['median']:,.0f}"
    par = rec.get("parity")
    par_s = "—" if not par else f"{par['matched']}/{par['total']}"
    spram = res.get("spram") if "spram" in res else None
    note = rec.get("reason") or ""
    if rec["status"] == "parity failed":
        note = "PARITY FAILED: " + "; ".join(f"frame {m[0]} {m[1]}" for m in par["mismatches"][:3])
    return [rec["board"], _store_cell(rec), _lanes_cell(rec), fits, _num(res.get("lut")), _num(res.get("ff")),
            _num(res.get("bram")), _num(spram), _num(res.get("dsp")), _num(rec.get("fmax_mhz"), "{:.1f}"), cyc_s,
            _num(rec.get("latency_us"), "{:,.1f}"), _num(rec.get("fps"), "{:,.0f}"), par_s,
            "★" if rec["pareto"] else "", note.replace("|", "/").replace("\n", " ")]


def format_table(records: list[dict]) -> str:
    """The markdown table of ``sweep.md`` (also what the command prints)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in records]
    return "\n".join(lines)


def format_markdown(res: SweepResult, model_name: str, command: str | None = None) -> str:
    lines = [f"# FPGA design sweep: {model_name}", ""]
    if command:
        lines += [f"`{command}`", ""]
    lines += [f"{len(res.records)} points; cycle benchmark and parity on {res.frames} frames ({res.frames_source}); "
              f"latency = median cycles per inference / Fmax; ★ = on the board's Pareto front (fewest LUTs, lowest "
              f"latency) among the points that fit. {res.summary()}.", "", format_table(res.records), ""]
    if res.lost:
        lines += ["Lost points (their job failed on every try):", ""] + [f"- {l}" for l in res.lost] + [""]
    return "\n".join(lines)


CSV_FIELDS = ("board", "store", "lanes", "lanes_resolved", "store_resolved", "status", "fits", "lut", "ff", "bram",
              "spram", "dsp", "fmax_mhz", "cycles_median", "cycles_source", "latency_us", "fps", "parity_matched",
              "parity_total", "pareto", "reason")


def format_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for r in records:
        res = r.get("resources") or {}
        cyc = r.get("cycles") or {}
        par = r.get("parity") or {}
        w.writerow([r["board"], r["store"], r["lanes"], r.get("lanes_resolved") or "",
                    "/".join(r.get("store_resolved") or []), r["status"], r["fits"], res.get("lut", ""),
                    res.get("ff", ""), res.get("bram", ""), res.get("spram", ""), res.get("dsp", ""),
                    "" if r.get("fmax_mhz") is None else r["fmax_mhz"], cyc.get("median", ""),
                    cyc.get("source", ""), "" if r.get("latency_us") is None else r["latency_us"],
                    "" if r.get("fps") is None else r["fps"], par.get("matched", ""), par.get("total", ""),
                    r["pareto"], r.get("reason") or ""])
    return buf.getvalue()


def _point_label(rec: dict) -> str:
    return f"lanes {_lanes_cell(rec)}, {_store_cell(rec)}"


def plot_pareto(records: list[dict], title: str) -> bytes:
    """``pareto.png``: LUTs (LUT4, Yosys) against latency (µs at Fmax) of every point that fits, one
    marker and colour per board, each board's Pareto front as a step line; log axes where the values
    spread over more than 10x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    pts = [(r, _xy(r)) for r in records]
    pts = [(r, xy) for r, xy in pts if xy is not None]
    boards = list(dict.fromkeys(r["board"] for r in records))
    for bi, b in enumerate(boards):
        mine = [(r, xy) for r, xy in pts if r["board"] == b]
        if not mine:
            continue
        c, mk = COLOURS[bi % len(COLOURS)], MARKERS[bi % len(MARKERS)]
        ax.scatter([xy[0] for _, xy in mine], [xy[1] for _, xy in mine], c=c, marker=mk, s=42, zorder=3,
                   label=f"{b} ({sum(1 for r in records if r['board'] == b and r['fits'])} of "
                         f"{sum(1 for r in records if r['board'] == b)} points fit)")
        front = sorted(xy for r, xy in mine if r["pareto"])
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=c, lw=1.2, alpha=0.8, zorder=2)
        labels = {}                      # points of equal (LUTs, latency): one label, a line each
        for r, xy in mine:
            labels.setdefault(xy, []).append(_point_label(r) + (" ★" if r["pareto"] else ""))
        for xy, text in labels.items():
            ax.annotate("\n".join(text), xy, xytext=(5, 4), textcoords="offset points", fontsize=7.5, color=c,
                        va="bottom")
    if pts:
        xs = [xy[0] for _, xy in pts]
        ys = [xy[1] for _, xy in pts]
        if min(xs) > 0 and max(xs) > 10 * min(xs):
            ax.set_xscale("log")
        if min(ys) > 0 and max(ys) > 10 * min(ys):
            ax.set_yscale("log")
        ax.legend(fontsize=8, loc="upper right")
        ax.margins(0.15)
    else:
        ax.text(0.5, 0.5, "no point fits", ha="center", va="center", transform=ax.transAxes, fontsize=12)
    off = [f"{r['board']} lanes {r['lanes']} {r['store']} ({r['status'] if r['status'] in ('lost', 'refused') else 'no fit'})"
           for r in records if not r["fits"]]
    if off:
        more = f" and {len(off) - 6} more" if len(off) > 6 else ""
        fig.text(0.01, 0.01, "not plotted: " + "; ".join(off[:6]) + more, fontsize=7, color="#555555")
    ax.set_xlabel("LUTs (LUT4 cells, Yosys)")
    ax.set_ylabel("latency per inference (µs at Fmax)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout(rect=(0, 0.04 if off else 0, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _json_safe(v):
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_outputs(out: str | Path, res: SweepResult, model_name: str, model_sha256: str,
                  command: str | None = None) -> list[Path]:
    """``sweep.json``, ``sweep.md``, ``sweep.csv``, ``pareto.png`` and ``manifest.json`` as the folder
    ``out``, atomically (written beside it, then renamed into place: :func:`codegen.outputs.replace_dir`)."""
    from codegen.lut import tool_versions, write_with_manifest

    out = Path(out)
    doc = {"model": {"name": model_name, "sha256": model_sha256}, "command": command,
           "frames": res.frames, "frames_source": res.frames_source, "workers": res.workers, "cluster": res.cluster,
           "wall_s": round(res.wall_s, 1), "summary": res.summary(), "lost": res.lost, "points": res.records}
    fits = sum(r["fits"] for r in res.records)
    files = {
        "sweep.json": (json.dumps(_json_safe(doc), indent=2, sort_keys=True) + "\n").encode(),
        "sweep.md": format_markdown(res, model_name, command).encode(),
        "sweep.csv": format_csv(res.records).encode(),
        "pareto.png": plot_pareto(res.records, f"{model_name}: {fits} of {len(res.records)} points fit; "
                                               f"step line = Pareto front per board"),
    }
    write_with_manifest(out, files, {"target": OUTPUT_KIND, "model": {"name": model_name, "sha256": model_sha256},
                                     "tools": tool_versions()})
    return [out / f for f in FILES]


__all__ = ["FILES", "OUTPUT_KIND", "Point", "SweepResult", "check_points", "check_tools", "format_csv",
           "format_markdown", "format_table", "lanes_label", "make_points", "mark_pareto", "parse_boards",
           "parse_lanes_list", "parse_stores", "pareto_front", "plot_pareto", "run_point", "run_sweep",
           "write_outputs"]
