"""``codegen emit --target lut``: exact tables, deterministic bytes, a truthful manifest."""
import hashlib
import io
import json
from pathlib import Path

import numpy as np

from codegen import cli
from codegen import lut
from runtime import modelfile

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted((ROOT / "models").glob("*.pt"))
MODELS = [p for p in MODELS if not p.name.endswith(".ann.pt")]


def read_mem(path: Path, bits: int, signed: bool) -> np.ndarray:
    vals = [int(line, 16) for line in path.read_text().split()]
    digits = len(path.read_text().split()[0])
    width = 4 * digits
    out = np.array(vals, dtype=object)
    if signed:
        out = np.array([v - (1 << width) if v >> (width - 1) else v for v in vals], dtype=object)
    return out.astype(np.int64)


def test_emit_is_exact_and_deterministic(tmp_path):
    assert MODELS, "shipped models exist"
    for mp in MODELS:
        a, b = tmp_path / f"{mp.stem}-a", tmp_path / f"{mp.stem}-b"
        assert cli.main(["emit", str(mp), "--target", "lut", "-o", str(a)]) == 0
        assert cli.main(["emit", str(mp), "--target", "lut", "-o", str(b)]) == 0
        names = sorted(p.name for p in a.iterdir())
        assert names == sorted(p.name for p in b.iterdir())
        for n in names:
            assert (a / n).read_bytes() == (b / n).read_bytes(), n
        m = modelfile.load(mp)
        man = json.loads((a / "manifest.json").read_text())
        assert man["model"]["sha256"] == hashlib.sha256(mp.read_bytes()).hexdigest()
        assert man["spec"]["T"] == m.T and man["spec"]["F"] == m.F
        for f in man["files"]:
            assert hashlib.sha256((a / f["name"]).read_bytes()).hexdigest() == f["sha256"]
        assert "time" not in (a / "manifest.json").read_text().lower().replace("timestep", "")
        tabs = lut.tables(m)
        npz = np.load(io.BytesIO((a / "tables.npz").read_bytes()))
        for name, (arr, bits, signed) in tabs.items():
            back = read_mem(a / f"{name}.mem", bits, signed)
            assert np.array_equal(back, np.asarray(arr, dtype=np.int64).ravel()), name
            assert np.array_equal(npz[name], arr), name
        assert np.array_equal(npz["L0_dense_weight" if m.layers[0].kind == "dense" else "L0_conv2d_weight"], m.layers[0].weight)


def test_mem_format_is_twos_complement_hex():
    vals = np.array([-5, 0, 7, -128, 127])
    text = lut.mem_lines(vals, 8).decode()
    assert text.split() == ["fb", "00", "07", "80", "7f"]


def test_model_file_round_trip_and_determinism(tmp_path):
    for mp in MODELS:
        m = modelfile.load(mp)
        modelfile.save(m, tmp_path / "a.pt")
        modelfile.save(modelfile.load(tmp_path / "a.pt"), tmp_path / "b.pt")
        assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
        m2 = modelfile.load(tmp_path / "b.pt")
        assert (m2.Q, m2.T, m2.F) == (m.Q, m.T, m.F)
        for l1, l2 in zip(m.layers, m2.layers):
            for attr in ("weight", "bias", "theta"):
                x, y = getattr(l1, attr), getattr(l2, attr)
                assert (x is None and y is None) or np.array_equal(x, y)
