"""``codegen sweep`` (codegen/fpga/sweep.py): the design-space sweep of the fpga target on Dask.

* the Pareto front as a pure function (hand-made points, one dominated);
* every bad option: one line, exit 2, nothing written;
* a lost point (its job fails on every try: in this process, and on a 2-worker Dask cluster) is
  listed in the table and the summary, the command exits 1, and the other points still count;
* (``synth``) a 2-point sweep of a small dense model on the iCEBreaker on 2 workers: all four files,
  rows in order, the Pareto mark, parity N/N (about 30 s of CPU).
"""
import csv
import io
import json
import os

import numpy as np
import pytest
from randmodels import random_images, valid_model

from codegen import cli
from codegen.fpga import sweep
from conftest import ROOT, one_line_error
from runtime import modelfile
from runtime.errors import ToolError

MLP = ROOT / "models" / "mnist-mlp.pt"


def run_cli(capsys, *args):
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:          # argparse's own errors (a missing required option)
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def small():
    """A 1x5x5 -> 2 -> 2 dense model (about 7 s of Yosys + nextpnr per point on the UP5K) and frames."""
    model, rng = valid_model(3, ["dense", "dense"], 4)
    return model, random_images(rng, model, 6)


def saved(tmp_path, small):
    model, x = small
    mp, xp = tmp_path / "small.pt", tmp_path / "frames.npy"
    modelfile.save(model, mp)
    np.save(xp, x)
    return mp, xp


def test_pareto_front_unit():
    #            A: few LUTs, slow   B: dominated by C    C               D: many LUTs, fastest  E: no fit
    pts = [(100, 50.0), (300, 40.0), (200, 30.0), (400, 10.0), None]
    assert sweep.pareto_front(pts) == [True, False, True, True, False]
    assert sweep.pareto_front([(5, 5.0), (5, 5.0)]) == [True, True]          # equal points: both on it
    assert sweep.pareto_front([(5, 5.0), (5, 6.0), (6, 5.0)]) == [True, False, False]   # ties in one coordinate
    # per board: a point is compared with its own board's points only; non-fitting rows never marked
    recs = [{"board": b, "fits": f, "resources": {"lut": x}, "latency_us": y}
            for b, f, x, y in [("icebreaker", True, 100, 50.0), ("icebreaker", True, 300, 60.0),
                               ("ulx3s", True, 300, 60.0), ("ulx3s", False, 10, 1.0)]]
    sweep.mark_pareto(recs)
    assert [r["pareto"] for r in recs] == [True, False, True, False]


def test_parse_points_and_order():
    assert sweep.parse_lanes_list("2,4,4/1/8,auto") == [2, 4, (4, 1, 8), "auto"]
    assert sweep.parse_boards("icebreaker,ecp5-25k") == ["icebreaker", "ulx3s"]
    pts = sweep.make_points(["icebreaker", "ulx3s"], ["rom", "auto"], [2, (4, 1)])
    assert [(p.board, p.store, p.lanes_label) for p in pts][:4] == [
        ("icebreaker", "rom", "2"), ("icebreaker", "rom", "4/1"), ("icebreaker", "auto", "2"),
        ("icebreaker", "auto", "4/1")]
    assert pts[1].key == "icebreaker-rom-4_1" and len(pts) == 8


@pytest.mark.parametrize("args,needle", [
    (["--lanes", "4", "--board", "nosuch"], "unknown board 'nosuch'"),
    (["--lanes", "4", "--board", "mps2-an386"], "is an MCU board"),
    (["--lanes", "4", "--board", "icebreaker,up5k"], "--board names icebreaker twice"),
    (["--lanes", "4,x", "--board", "icebreaker"], "--lanes: 'x' is not a point"),
    (["--lanes", "4,0", "--board", "icebreaker"], "--lanes must be a positive integer, not 0"),
    (["--lanes", "4,4", "--board", "icebreaker"], "--lanes names the point 4 twice"),
    (["--lanes", "4/1/8", "--board", "icebreaker"], "the model has 2 layers"),
    (["--lanes", "4", "--board", "icebreaker", "--store", "rom,flash"], "--store: 'flash' is not a store"),
    (["--lanes", "4", "--board", "icebreaker", "-n", "0"], "-n must be a positive integer, not 0"),
    (["--lanes", "4", "--board", "icebreaker", "--workers", "0"], "--workers must be a positive integer, not 0"),
    (["--lanes", "4", "--board", "icebreaker", "--fifo-depth", "auto"], "--fifo-depth auto is emit's search"),
    (["--lanes", "4", "--board", "icebreaker", "--fifo-depth", "-3"], "--fifo-depth must be a non-negative"),
    (["--lanes", "4"], "the following arguments are required: --board"),
])
def test_bad_options_one_line_exit_2(capsys, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "sweep", MLP, *args)
    one_line_error(code, err, needle)
    assert list(tmp_path.iterdir()) == []             # no build/ folder either


def test_bad_model_and_frames_one_line_exit_2(capsys, tmp_path, monkeypatch, small):
    monkeypatch.chdir(tmp_path)
    mp, _ = saved(tmp_path, small)
    (tmp_path / "text.pt").write_text("hello")
    for model, extra, needle in [(tmp_path / "nope.pt", [], "no such file"),
                                 (tmp_path / "text.pt", [], "not a model file"),
                                 (mp, [], "no test set to benchmark on"),       # a random model records no dataset
                                 (mp, ["--input", tmp_path / "missing.npy"], "no such file")]:
        code, _, err = run_cli(capsys, "sweep", model, "--lanes", "1", "--board", "icebreaker", *extra)
        one_line_error(code, err, needle)
    assert not (tmp_path / "build").exists()


def test_lost_point_in_this_process_is_reported_and_exits_1(capsys, tmp_path, monkeypatch, small):
    """One worker (no cluster): the points run here, each up to three times. A point whose job raises
    on every try is a LOST row, in the summary and sweep.json; the other point still counts."""
    mp, xp = saved(tmp_path, small)
    calls = []
    real = sweep.run_point

    def flaky(model, board, store, lanes, *rest):
        calls.append(lanes)
        if lanes == 2:
            raise ToolError("worker died")
        return real(model, board, store, lanes, *rest)      # ram on the ECP5: refused at once, cheaply

    monkeypatch.setattr(sweep, "run_point", flaky)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "sweep", mp, "--input", xp, "--lanes", "1,2", "--board", "ulx3s",
                                "--store", "ram", "--workers", "1", "--out", out, "--work", tmp_path / "work")
    assert code == 1, err
    assert calls == [1, 2, 2, 2]                       # the failing point: tried three times
    doc = json.loads((out / "sweep.json").read_text())
    st = [p["status"] for p in doc["points"]]
    assert st == ["refused", "lost"]
    assert "RAM store" in doc["points"][0]["reason"]      # lanes 1: a store word cannot hold a threshold
    assert "worker died" in doc["points"][1]["reason"] and doc["lost"] == ["point 1: ToolError: worker died"]
    assert "1 lost" in doc["summary"] and "1 lost" in stdout and "lost: point 1" in stdout
    md = (out / "sweep.md").read_text()
    assert "| ulx3s | ram | 2 | LOST |" in md and "worker died" in md
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "pareto.png", "sweep.csv", "sweep.json",
                                                     "sweep.md"]


def test_lost_point_on_two_dask_workers(small, tmp_path):
    """An embedded Dask cluster of 2 processes: the engine retries the failing job, then reports it."""
    model, x = small
    pts = sweep.make_points(["ulx3s"], ["ram"], [1, 2])           # ram on the ECP5: refused, no synthesis
    res = sweep.run_sweep(model, pts, x, work=tmp_path / "work", workers=2, fail_point=0)
    assert [r["status"] for r in res.records] == ["lost", "refused"]
    assert len(res.lost) == 1 and res.lost[0].startswith("point 0: ToolError: test hook")
    assert "1 lost" in res.summary() and "2 workers" in res.summary()


@pytest.mark.synth
@pytest.mark.cocotb
@pytest.mark.skipif(not os.environ.get("ONESPIKE_EXTENDED"),
                    reason="two syntheses and benches (about 40 s) beyond the suite's 10-minute budget on 2 cores; "
                           "runs with ONESPIKE_EXTENDED=1")
def test_two_point_sweep_on_two_workers(capsys, tmp_path, small):
    from codegen.fpga import synth

    for tool in ("yosys", "nextpnr-ice40"):
        try:
            synth.find_tool(tool)
        except Exception as e:  # noqa: BLE001 -- UserError: the tool is missing
            pytest.skip(str(e))
    mp, xp = saved(tmp_path, small)
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "sweep", mp, "--input", xp, "-n", 5, "--lanes", "2,1", "--board",
                                "icebreaker", "--workers", 2, "--out", out, "--work", tmp_path / "work", "-q")
    assert code == 0, err + stdout
    for f in sweep.FILES:
        assert (out / f).is_file(), f
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "sweep.json").read_text())
    pts = doc["points"]
    assert [(p["board"], p["store"], p["lanes"]) for p in pts] == [("icebreaker", "auto", "2"),
                                                                    ("icebreaker", "auto", "1")]
    for p in pts:
        assert p["status"] == "ok" and p["fits"], p["reason"]
        assert p["parity"]["matched"] == p["parity"]["total"] == 5 and p["parity"]["passed"]
        assert p["resources"]["lut"] > 100 and p["fmax_mhz"] > 5 and p["cycles"]["frames"] == 5
        assert p["latency_us"] == pytest.approx(p["cycles"]["median"] / p["fmax_mhz"], rel=1e-3)
        assert p["synth_report"]["fits"] and p["store_resolved"] == ["rom", "rom"]
    # the Pareto mark is the pure function's verdict on the measured points
    want = sweep.pareto_front([(p["resources"]["lut"], p["latency_us"]) for p in pts])
    assert [p["pareto"] for p in pts] == want and any(want)
    rows = list(csv.DictReader(io.StringIO((out / "sweep.csv").read_text())))
    assert [r["lanes"] for r in rows] == ["2", "1"] and [r["pareto"] == "True" for r in rows] == want
    md = (out / "sweep.md").read_text()
    body = [l for l in md.splitlines() if l.startswith("| icebreaker")]
    assert len(body) == 2 and all("| 5/5 |" in l for l in body)
    assert [("★" in l) for l in body] == want
    assert "2 points (2 fit) on 2 workers" in stdout and str(out / "pareto.png") in stdout
    man = json.loads((out / "manifest.json").read_text())
    assert man["target"] == "sweep" and sorted(e["name"] for e in man["files"]) == sorted(sweep.FILES)
