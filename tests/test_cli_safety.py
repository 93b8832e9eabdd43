"""Nothing lost, nothing crashes: output-folder safety and hostile inputs from the fuzzing campaign (issue 9).

Each case: a one-line ``codegen: error:``, exit 2, no traceback, no file lost, nothing left behind."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from codegen import cli, outputs
from runtime import modelfile
from conftest import one_line_error

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "models" / "mnist-mlp.pt"


def run_cli(capsys, *args):
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:          # argparse's own errors (invalid choice)
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err





def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ output folders


@pytest.mark.parametrize("target", ["lut", "c"])
def test_emit_refuses_a_folder_holding_other_files(capsys, tmp_path, target):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "sub").mkdir()
    (out / "sub" / "data.csv").write_text("1,2")
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "emit", MLP, "--target", target, "-o", out)
    one_line_error(code, err, str(out), "did not write")
    assert snapshot(tmp_path) == before


def test_emit_never_touches_its_input(capsys, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    model = proj / "model.pt"
    model.write_bytes(MLP.read_bytes())
    before = snapshot(tmp_path)
    for o in (proj, tmp_path):
        code, _, err = run_cli(capsys, "emit", model, "--target", "lut", "-o", o)
        one_line_error(code, err, "input")
    code, _, err = run_cli(capsys, "emit", model, "--target", "lut", "-o", proj, "--force")
    one_line_error(code, err, "input")
    assert snapshot(tmp_path) == before


def test_emit_refuses_an_existing_file_a_path_under_a_file_and_the_working_directory(capsys, tmp_path, monkeypatch):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, "emit", MLP, "--target", "lut", "-o", f)
    one_line_error(code, err, "not a folder")
    code, _, err = run_cli(capsys, "emit", MLP, "--target", "lut", "-o", f / "sub")
    one_line_error(code, err, "is a file")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "emit", MLP, "--target", "lut", "-o", ".")
    one_line_error(code, err, "working directory")
    assert snapshot(tmp_path) == before            # no hidden .notes.txt.old.* either


def test_emit_refuses_a_place_it_cannot_write(capsys, tmp_path):
    code, _, err = run_cli(capsys, "emit", MLP, "--target", "lut", "-o", "/proc/onespike-out")
    one_line_error(code, err, "cannot write")
    code, _, err = run_cli(capsys, "run", MLP, "--dataset", "mnist", "-n", "5", "--report", "/proc/onespike-out")
    one_line_error(code, err, "--report", "cannot write")


def test_earlier_output_is_replaced_only_when_unmodified_or_forced(capsys, tmp_path):
    out = tmp_path / "lut"
    assert run_cli(capsys, "emit", MLP, "--target", "lut", "-o", out)[0] == 0
    first = snapshot(out)
    assert run_cli(capsys, "emit", MLP, "--target", "lut", "-o", out)[0] == 0   # its own output: replaced
    assert snapshot(out) == first
    (out / "decode.mem").write_text("edited by hand\n")
    code, _, err = run_cli(capsys, "emit", MLP, "--target", "lut", "-o", out)
    one_line_error(code, err, "modified", "decode.mem (changed)", "--force")
    (out / "extra.txt").write_text("mine")
    code, _, err = run_cli(capsys, "emit", MLP, "--target", "lut", "-o", out)
    one_line_error(code, err, "extra.txt (not written by codegen)")
    assert (out / "extra.txt").read_text() == "mine"
    assert run_cli(capsys, "emit", MLP, "--target", "lut", "-o", out, "--force")[0] == 0
    assert snapshot(out) == first
    code, _, err = run_cli(capsys, "emit", MLP, "--target", "c", "-o", out, "--force")  # another kind: never
    one_line_error(code, err, "'lut' output", "never replaced")
    assert snapshot(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lut"]              # no temp folders left


def test_a_failed_write_leaves_the_earlier_output_and_no_temp_folder(capsys, tmp_path, monkeypatch):
    out = tmp_path / "lut"
    assert run_cli(capsys, "emit", MLP, "--target", "lut", "-o", out)[0] == 0
    first = snapshot(out)
    real = Path.write_bytes
    calls = []

    def failing(self, data):
        calls.append(self)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", failing)
    code, _, err = run_cli(capsys, "emit", MLP, "--target", "lut", "-o", out)
    one_line_error(code, err, "No space left on device")
    monkeypatch.undo()
    assert snapshot(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lut"]


def test_run_report_folder_is_safe(capsys, tmp_path):
    f = tmp_path / "r.txt"
    f.write_text("x")
    code, _, err = run_cli(capsys, "run", MLP, "--dataset", "mnist", "-n", "5", "--report", f, "-q")
    one_line_error(code, err, "--report", "not a folder")
    r = tmp_path / "r"
    assert run_cli(capsys, "run", MLP, "--dataset", "mnist", "-n", "5", "--report", r, "-q")[0] == 0
    assert run_cli(capsys, "run", MLP, "--dataset", "mnist", "-n", "5", "--report", r, "-q")[0] == 0
    assert (r / "manifest.json").is_file() and (r / "report.json").is_file()
    code, _, err = run_cli(capsys, "emit", MLP, "--target", "lut", "-o", r)
    one_line_error(code, err, "'run' output")


def test_convert_output_file_is_safe(capsys, tmp_path):
    """convert -o: never a folder, the input or a foreign file; an earlier model from the same ANN is
    replaced, one from another ANN only with --force. All refused before the conversion starts."""
    ann = ROOT / "models" / "mnist-mlp.ann.pt"
    base = ["convert", ann, "--dataset", "mnist", "-q", "-o"]
    notes = tmp_path / "notes.txt"
    notes.write_text("keep")
    (tmp_path / "dir").mkdir()
    for out, needle in ((notes, "not a one-spike model; not replaced"), (tmp_path / "dir", "is a folder"),
                        (ann, "input"), (notes / "m.pt", "is a file")):
        code, _, err = run_cli(capsys, *base, out)
        one_line_error(code, err, needle)
    assert notes.read_text() == "keep"
    m = modelfile.load(MLP)
    m.meta["source_ann_sha256"] = "0" * 64
    other = tmp_path / "other.pt"
    modelfile.save(m, other)                         # converted from another ANN (no source recorded)
    code, _, err = run_cli(capsys, *base, other)
    one_line_error(code, err, "made from another input", "--force")
    judge = cli._judge_model(ann)
    assert judge(other) == "same-kind"
    m.meta["source_ann_sha256"] = modelfile.file_sha256(ann)
    mine = tmp_path / "mine.pt"
    modelfile.save(m, mine)
    assert judge(mine) == "regenerate"
    assert outputs.check_file(mine, [ann], judge, kind="one-spike model") == mine.resolve()
    with pytest.raises(Exception, match="not a one-spike model"):
        outputs.check_file(notes, [ann], judge, force=True, kind="one-spike model")


def test_check_dir_unit(tmp_path):
    assert outputs.check_dir(tmp_path / "new" / "deeper", "lut") == (tmp_path / "new" / "deeper").resolve()
    assert not (tmp_path / "new").exists()            # checking writes nothing
    (tmp_path / "empty").mkdir()
    outputs.check_dir(tmp_path / "empty", "lut")


# ------------------------------------------------------------------ options


@pytest.mark.parametrize("args, needle", [
    (["run", MLP, "--dataset", "mnist", "--batch", "0"], "--batch must be a positive integer, not 0"),
    (["run", MLP, "--dataset", "mnist", "--batch", "-1"], "--batch must be a positive integer, not -1"),
    (["emit", MLP, "--target", "c", "--count-images", "-3"], "--count-images must be a non-negative integer, not -3"),
    (["emit", MLP, "--target", "c", "--store", "rom"], "--store applies to the fpga target"),
    (["emit", MLP, "--target", "lut", "--lanes", "4"], "--lanes applies to the fpga target"),
    (["emit", MLP, "--target", "fpga", "--lanes", "0"], "--lanes must be a positive integer, not 0"),
    (["emit", MLP, "--target", "fpga", "--lanes", "4,0"], "--lanes must be a positive integer, not 0"),
    (["emit", MLP, "--target", "fpga", "--lanes", "x"],
     "--lanes must be a positive integer, one per layer (comma-separated) or auto, not 'x'"),
    (["emit", MLP, "--target", "fpga", "--lanes", "auto"], "--lanes auto needs --board"),
    (["emit", MLP, "--target", "fpga", "--lanes", "1,2,3"], "--lanes must be one integer or one per layer (2), not 3 values"),
    (["verify", MLP, "--target", "fpga", "--lanes", "auto"], "--lanes auto applies to codegen emit --board"),
    (["emit", MLP, "--target", "fpga", "--lanes", "4", "--fifo-depth", "auto"], "--fifo-depth auto goes with --lanes auto"),
    (["emit", MLP, "--target", "fpga", "--fifo-depth", "-1"], "--fifo-depth must be a non-negative integer or auto, not '-1'"),
    (["emit", MLP, "--target", "lut", "--fifo-depth", "4"], "--fifo-depth applies to the fpga target"),
    (["verify", MLP, "--target", "fpga", "--fifo-depth", "auto"], "--fifo-depth auto applies to codegen emit --board"),
    (["verify", MLP, "--target", "fpga", "--sim", "icarus", "--bulk"], "--bulk runs the compiled Verilator harness"),
    (["verify", MLP, "--target", "fpga", "--sim", "icarus", "--workers", "2"], "--workers and --cluster split the frames over the compiled"),
    (["verify", MLP, "--target", "fpga", "--workers", "2"], "use them with --sim verilator"),
    (["verify", MLP, "--target", "fpga", "--sim", "verilator", "--bulk", "--workers", "0"], "--workers must be a positive integer, not 0"),
    (["emit", MLP, "--target", "fpga", "--synth"], "--synth needs --board"),
    (["emit", MLP, "--target", "fpga", "--board", "nosuch"], "nosuch"),
    (["emit", MLP, "--target", "c", "--board", "nosuch"], "unknown board 'nosuch'"),
    (["emit", MLP, "--target", "lut", "--board", "ulx3s"], "--board applies to the c and fpga targets"),
    (["run", MLP, "--dataset", "mnist", "--input", MLP], "not both"),
    (["emit", MLP, "--target", "nosuch"], "invalid choice"),
])
def test_bad_options_are_refused_before_anything_is_written(capsys, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *args)
    one_line_error(code, err, needle)
    assert list(tmp_path.iterdir()) == []             # no build/ folder either


def test_verbose_after_the_subcommand(capsys, tmp_path):
    code, _, err = run_cli(capsys, "inspect", tmp_path / "nope.pt", "-v")
    assert code == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("codegen: error: ")


def test_input_with_zero_images(capsys, tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((0, 1, 28, 28), np.uint8))
    code, _, err = run_cli(capsys, "run", MLP, "--input", p, "--report", tmp_path / "r")
    one_line_error(code, err, "0 images")
    t = tmp_path / "t.npy"
    t.write_text("1 2 3\n")
    code, _, err = run_cli(capsys, "run", MLP, "--input", t, "--report", tmp_path / "r")
    line = one_line_error(code, err, "not a .npy file")
    assert "allow_pickle" not in line
    o = tmp_path / "o.npy"
    np.save(o, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, _, err = run_cli(capsys, "run", MLP, "--input", o, "--report", tmp_path / "r")
    line = one_line_error(code, err, "Python objects")
    assert "allow_pickle" not in line
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ hostile model files


def _model_dict():
    return modelfile.to_dict(modelfile.load(MLP))


def _saved(tmp_path, d, name="m.pt"):
    p = tmp_path / name
    torch.save(d, p)
    return p


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.update(input_shape=784), "input_shape must be a list [C, H, W], not 784"),
    (lambda d: d.update(input_shape=None), "input_shape must be a list [C, H, W], not None"),
    (lambda d: d.update(meta=[1, 2]), "meta must be a dict, not list"),
    (lambda d: d.update(meta="hello"), "meta must be a dict, not str"),
    (lambda d: d["layers"][0].update(stride=1.7), "layer 0 stride must be an integer, not 1.7"),
    (lambda d: d["layers"][0].update(kernel=True), "layer 0 kernel must be an integer, not True"),
    (lambda d: d.update(decode=None), "decode table must hold T + 1 = 17 entries, not none"),
    (lambda d: d.update(decode=-d["decode"]), "decode table must hold positive entries"),
    (lambda d: d["layers"][0].update(weight=d["layers"][0]["weight"].reshape(-1)), "weights must be a 2-D array"),
    (lambda d: d["layers"][0].update(in_shape=[1, 20000, 20000]), "exceeds the limit of 1024 per side"),
    (lambda d: d.update(input_shape=[1, 20000, 20000]), "exceeds the limit of 1024 per side"),
    (lambda d: d.update(layers=d["layers"] * 40), "more than the limit of 64"),
])
def test_malformed_model_fields(capsys, tmp_path, mutate, needle):
    d = _model_dict()
    mutate(d)
    code, _, err = run_cli(capsys, "inspect", _saved(tmp_path, d))
    line = one_line_error(code, err, needle)
    if "decode" in needle:
        assert "F=" not in line and "fraction bits" not in line      # not blamed on F
    if "2-D" in needle:
        assert "bias" not in line


def test_huge_declared_input_is_refused_before_any_backend_allocates(capsys, tmp_path):
    """A 7 KB file declaring a 20000x20000 input (a max-pool then a small conv readout)."""
    d = _model_dict()
    n = 20000
    d["input_shape"] = [1, n, n]
    d["layers"] = [
        {"kind": "maxpool", "name": "p", "in_shape": [1, n, n], "out_shape": [1, n // 2, n // 2], "weight": None,
         "bias": None, "theta": None, "kernel": 2, "stride": 2, "padding": 0, "readout": False},
        {"kind": "conv2d", "name": "c", "in_shape": [1, n // 2, n // 2], "out_shape": [1, n // 2 - 2, n // 2 - 2],
         "weight": torch.ones(1, 1, 3, 3, dtype=torch.int8), "bias": torch.zeros(1, dtype=torch.int64), "theta": None,
         "kernel": 3, "stride": 1, "padding": 0, "readout": True}]
    p = _saved(tmp_path, d)
    assert p.stat().st_size < 20_000
    for args in (["inspect", p], ["emit", p, "--target", "fpga", "--board", "icebreaker", "-o", tmp_path / "f"],
                 ["emit", p, "--target", "c", "-o", tmp_path / "c"]):
        code, _, err = run_cli(capsys, *args)
        one_line_error(code, err, "20000x20000", "limit of 1024")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.pt"]


def test_non_model_files_get_the_right_message(capsys, tmp_path):
    cases = []
    rnd = tmp_path / "random.pt"
    rnd.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes().replace(b"PK", b"pk"))
    cases.append((rnd, "unknown bytes"))
    js = tmp_path / "model.json"
    js.write_text('{"Q": 1.2}\n')
    cases.append((js, "a text file"))
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    cases.append((raw, "a raw pickle, not a torch.save archive"))
    raw_code = tmp_path / "raw_code.pt"
    raw_code.write_bytes(pickle.dumps({"a": np.zeros(2)}, protocol=4))
    cases.append((raw_code, "refused: a raw pickle that carries code"))
    cases.append((Path("/dev/zero"), "not a regular file"))
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    cases.append((empty, "empty"))
    for path, needle in cases:
        code, _, err = run_cli(capsys, "inspect", path)
        line = one_line_error(code, err, needle)          # one line: no torch warnings before it
        if "pickle" not in needle:
            assert "pickled code" not in line, line


def test_named_pipe_does_not_block(capsys, tmp_path):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    code, _, err = run_cli(capsys, "inspect", fifo)     # would block forever if opened
    one_line_error(code, err, "not a regular file")


def test_progress_bars_only_on_a_terminal_or_when_asked(capsys, tmp_path, monkeypatch):
    args = ["run", MLP, "--dataset", "mnist", "-n", "5", "--report"]
    monkeypatch.delenv("ONESPIKE_PROGRESS", raising=False)
    code, _, err = run_cli(capsys, *args, tmp_path / "a")
    assert code == 0 and err == ""                      # captured stderr is not a terminal
    monkeypatch.setenv("ONESPIKE_PROGRESS", "1")
    code, _, err = run_cli(capsys, *args, tmp_path / "b")
    assert code == 0 and "golden model" in err
    code, _, err = run_cli(capsys, *args, tmp_path / "c", "-q")
    assert code == 0 and err == ""


def test_bench_c_refuses_bad_values_and_a_folder_of_someone_elses_files(tmp_path, monkeypatch, capsys):
    """scripts/bench_c.py: one-line errors, exit 2, before any work; a foreign --out is left untouched."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("bench_c", Path(__file__).resolve().parent.parent / "scripts" / "bench_c.py")
    bench_c = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_c)
    own = tmp_path / "own"
    (own / "mnist-mlp" / "mps2-an386-O2").mkdir(parents=True)
    (own / "mnist-mlp" / "mps2-an386-O2" / "keep.c").write_text("mine")
    (own / "bench_c.md").write_text("mine")
    for args, needle in ((["--count", "0"], "--count must be at least 1"), (["--models", "bogus"], "unknown model bogus"),
                         (["--out", str(own)], "already holds files this script did not write")):
        argv = ["bench_c.py", *args] + ([] if "--out" in args else ["--out", str(tmp_path / "new")])
        monkeypatch.setattr(sys, "argv", argv)
        assert bench_c.main() == 2, args
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, (args, err)
    assert (own / "bench_c.md").read_text() == "mine" and (own / "mnist-mlp" / "mps2-an386-O2" / "keep.c").read_text() == "mine"
    assert not (tmp_path / "new").exists()
