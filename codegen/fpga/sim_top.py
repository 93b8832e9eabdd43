"""The design the simulators run: ``rtl.top.FlatTop`` (the network plus its debug spike-event port) as
Verilog with flat port names, written once per design digest (the model's tables, the parameters and
the RTL sources), so that an unchanged design is neither converted nor rebuilt again."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from runtime.errors import UserError
from runtime.spec import IntModel

TOP_FILE = "onespike_top.v"
DESC_FILE = "onespike_top.json"
LOAD_FILE = "load.bin"     # the store image of a design with "ram" layers
_PKG_ROOT = Path(__file__).resolve().parents[2]     # holds codegen/, rtl/, runtime/
_TOP_VERSION = 3       # bump when write_top's output changes for the same model and RTL


def _hash_array(h, a) -> None:
    if a is None:
        h.update(b"none")
        return
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())


def _lanes(model: IntModel, lanes) -> list[int]:
    """Lanes per layer from one integer or a list (UserError if neither)."""
    if isinstance(lanes, (int, np.integer)) and not isinstance(lanes, bool):
        lanes = [int(lanes)] * len(model.layers)
    try:
        lanes = [int(x) for x in lanes]
    except (TypeError, ValueError):
        raise UserError(f"lanes must be a positive integer or one per layer, not {lanes!r}") from None
    if len(lanes) != len(model.layers) or min(lanes) < 1:
        raise UserError(f"lanes must be a positive integer or one per layer ({len(model.layers)}), not {lanes!r}")
    return lanes


def _store(model: IntModel, store) -> list[str]:
    """Store kind per layer from one string or a list (UserError if neither)."""
    if isinstance(store, str):
        store = [store] * len(model.layers)
    store = list(store)
    if len(store) != len(model.layers) or any(s not in ("rom", "ram") for s in store):
        raise UserError(f"store must be 'rom' or 'ram', or one per layer ({len(model.layers)}), not {store!r}")
    return store


def design_digest(model: IntModel, lanes=8, fifo_depth: int = 16, store="rom") -> str:
    """Digest of everything the Verilog depends on: the model's tables, the parameters and the RTL sources."""
    import amaranth

    h = hashlib.sha256()
    h.update(repr((model.Q, model.T, model.F, tuple(model.input_shape), model.input_Q, model.input_T,
                   _lanes(model, lanes), int(fifo_depth), amaranth.__version__, _TOP_VERSION,
                   _store(model, store))).encode())
    for a in (model.decode, model.encode, model.input_decode):
        _hash_array(h, a)
    for l in model.layers:
        h.update(repr((l.kind, tuple(l.in_shape), tuple(l.out_shape), l.kernel, l.stride, l.padding, l.readout)).encode())
        for a in (l.weight, l.bias, l.theta):
            _hash_array(h, a)
    for src in sorted((_PKG_ROOT / "rtl").glob("*.py")):
        h.update(src.name.encode())
        h.update(src.read_bytes())
    return h.hexdigest()


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (keeps the mtime, so simulators skip rebuilds)."""
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# Yosys' write_verilog makes every `always @*` block read a dummy register declared `reg D = 0;`
# so that the block runs at time zero. Under `iverilog -g2012` (cocotb's runner) a declaration
# initializer raises no event, so blocks whose inputs never change (an FSM state that is the same
# before and after reset) keep X outputs; an explicit change after time-zero start-up fixes that.
_TRIGGER = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+ ) = 0;$", re.M)


def _time_zero_fix(text: str) -> str:
    return _TRIGGER.sub(lambda m: f"{m.group(0)}\n{m.group(1)}initial #0 {m.group(2)} = 1'h1;", text)


# Amaranth writes a memory's initial contents as one assignment per word inside an ``initial`` block;
# Verilator turns each into a C++ statement (the Fashion-MNIST CNN's build: 55 s, of which 20 s are
# the tables). For the simulators only, a long block becomes ``$readmemh`` of a file beside the Verilog
# (the same values, word for word; ``<sym>.v`` from ``codegen emit`` keeps its initialisers).
_MEM_INIT = re.compile(r"^(?P<ind>[ \t]*)initial begin\n(?P<body>(?:[ \t]*[A-Za-z_][\w$]*\[\d+\] = \d+'h[0-9a-fA-F]+;\n)+)"
                       r"[ \t]*end\n", re.M)
_MEM_WORD = re.compile(r"^[ \t]*([A-Za-z_][\w$]*)\[(\d+)\] = \d+'h([0-9a-fA-F]+);$")
MEM_FILE_MIN_WORDS = 64


def _mem_files(text: str, out: Path) -> tuple[str, dict[str, str]]:
    """``text`` with every long memory initialiser read from a ``memN.hex`` file in ``out`` (absolute
    path), and those files' contents. Blocks that are not one memory's words 0..n-1 stay as they are."""
    files: dict[str, str] = {}

    def swap(m):
        words = [_MEM_WORD.match(l) for l in m.group("body").splitlines()]
        name = words[0].group(1)
        if len(words) < MEM_FILE_MIN_WORDS or any(w.group(1) != name or int(w.group(2)) != i for i, w in enumerate(words)):
            return m.group(0)
        fn = f"mem{len(files)}.hex"
        files[fn] = "\n".join(w.group(3) for w in words) + "\n"
        return f'{m.group("ind")}initial $readmemh("{(out / fn).absolute()}", {name});\n'

    return _MEM_INIT.sub(swap, text), files


def _flat_top(model: IntModel, lanes, fifo_depth: int, store="rom"):
    from rtl.top import FlatTop

    try:
        return FlatTop(model, _lanes(model, lanes), fifo_depth, _store(model, store))
    except ValueError as e:
        raise UserError(f"cannot build the FPGA top: {e}") from None


def write_top(model: IntModel, lanes=8, out_dir: str | Path = "build/fpga_sim/top", fifo_depth: int = 16,
              store="rom") -> Path:
    """Convert the network (with its debug event port) to Verilog; returns the ``.v`` path.

    Writes ``onespike_top.v`` (module ``onespike_top``, ports described in ``rtl/top.py``) and
    ``onespike_top.json`` (port widths, the layer each debug slot observes, the Verilog's SHA-256)
    into ``out_dir``, and with ``"ram"`` layers ``load.bin``, the store image the bench sends on
    ``load_*`` before the first frame. Files that already hold the same text are left untouched.
    """
    from amaranth.back import verilog

    from rtl.top import TOP_NAME

    top = _flat_top(model, lanes, fifo_depth, store)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text, mem_files = _mem_files(_time_zero_fix(verilog.convert(top, name=TOP_NAME, ports=top.ports)), out)
    for fn, contents in mem_files.items():
        _write_if_changed(out / fn, contents)
    image = top.core.net.load_image()
    if image and not ((out / LOAD_FILE).is_file() and (out / LOAD_FILE).read_bytes() == image):
        (out / LOAD_FILE).write_bytes(image)
    v = out / TOP_FILE
    _write_if_changed(v, text)
    desc = dict(top.describe(), verilog_sha256=hashlib.sha256(text.encode()).hexdigest())
    _write_if_changed(out / DESC_FILE, json.dumps(desc, indent=1) + "\n")
    return v
