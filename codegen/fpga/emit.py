"""``codegen emit --target fpga``: Verilog of the whole event-driven pipeline (rtl/network.py), its tables, and an estimate.

Every layer kind of the spec is supported: dense, conv2d and avg-pool layers run on
:class:`rtl.conv.ConvEngine` s (dense is its 1x1 case, an avg-pool a conv with identity weights),
max-pool on :class:`rtl.pool.MaxPoolEngine`; an event FIFO sits in front of every engine. Before
anything is generated the emitter

1. computes an **estimate** (no HDL is elaborated; the engines of ``rtl.network.Network(model, lanes,
   fifo_depth)`` are constructed to read their parameters): every memory of the design (weights,
   biases, accumulators, thresholds, decode and encode tables, event FIFOs, max-pool phase words)
   with its depth and width, where Yosys is expected to put it on the board (block RAM, distributed
   RAM or soft logic, following Yosys's memory library shapes, costs and geometry rules; ROM bits
   that are equal in every word are dropped, as Yosys does, so the table contents are read), the
   multipliers (lane multipliers and constant multiplies of the index and address arithmetic) and the
   DSP blocks Yosys maps them to, and cycles per inference from the golden model's phases on the
   first test images of ``model.meta["dataset"]`` (or the worst case, every neuron spiking, when no
   dataset is available),
2. refuses, when a board is selected, a model that needs more block RAMs, DSPs or SPRAMs than the
   board has (one line naming both numbers, and the largest lane count that would fit, or that none does).

Weights go to initialised block RAM (``store="rom"``) or, per layer, to a RAM store loaded at run
time that Yosys maps to iCE40 SPRAM (``"ram"``); ``store="auto"`` (:func:`resolve_store`) uses
SPRAM only where the board has it and block RAM is not enough (docs/fpga-target.md, "Weights in SPRAM").

Files (deterministic: same model and flags give byte-identical files; no timestamps):

* ``<sym>.v``: ``amaranth.back.verilog.convert(Network(model, lanes, fifo_depth), name=<sym>)``
  without source attributes. Ports: ``clk``, ``rst`` (synchronous, active high), pixel stream
  ``i__payload[7:0]``/``i__valid``/``i__ready``, result stream ``o__payload``/``o__valid``/``o__ready``
  (``o__payload`` = ``{logits[n-1], ..., logits[0], cls}``, see :func:`rtl.layouts.result_layout`).
  The memories are initialised inside the Verilog.
* ``<sym>_pins.v``: ``<sym>_pins``, a wrapper with 23 pins for boards with few I/Os (iCE40UP5K-SG48
  has 39): the same pixel stream in, the result serialised as bytes (``res[7:0]``, ``res_valid``,
  ``res_ready``, ``res_last``), least significant byte first (the first byte holds ``cls``); with a
  RAM store 34 pins (also ``ld[7:0]``, ``ld_valid``, ``ld_ready``, ``loaded``).
* ``weights.bin`` (only with a RAM store): the load image, ``Network(...).load_image()``, to send
  once after configuration on ``load__payload/valid/ready`` (the top then also has ``loaded``); the
  RAM stores have no initialiser in ``<sym>.v``.
* the integer tables as ``$readmemh`` files, as in ``--target lut`` (:mod:`codegen.lut`):
  ``encode.mem``, ``decode.mem``, ``input_decode.mem``, ``L<i>_<kind>_{weight,bias,theta}.mem``
  (dense and conv2d: weight, bias and, if they fire, theta; avg-pool: theta; max-pool: none).
* ``estimate.json`` / ``estimate.txt``: the estimate above.
* ``manifest.json``: model sha256, board, lanes, store (per layer; the load image's size, byte order
  and segments), ports, spec, tool versions and every file's sha256.
"""
from __future__ import annotations

import json

import numpy as np

from runtime.spec import SCHEMA_VERSION, IntModel
from runtime.errors import UserError

from ..lut import layer_summary, mem_lines, tables, tool_versions, write_with_manifest
from rtl.pins import LOAD_PINS, PINS, pins_verilog

from .design import hdl_versions, inspect_network, result_bits, verilog
from .fit import check_design_size, check_fit, design_bits, estimate, fit_design, fit_lanes
from .report import format_text
from .store import FIFO_DEPTH, N_COUNT, check_fifo_depth, check_lanes, get_board, symbol


def emit(model: IntModel, model_sha256: str, name: str, out_dir, board: str | None = None, lanes=8,
         fifo_depth=FIFO_DEPTH, n_images: int = N_COUNT, store="auto", progress: bool = False) -> dict:
    """Write the fpga target into ``out_dir`` (atomically) and return the manifest.

    ``board``: a name from :data:`boards.registry.FPGA_BOARDS` (refuse what does not fit it) or None (estimate
    for every board, refuse nothing). ``lanes``: output channels updated per cycle in every dense, conv2d and
    avg-pool engine (an int), one per layer (a list), or ``"auto"`` (with a board: :func:`fit_lanes`, the
    lanes per layer that fit it, the slowest layer first). ``fifo_depth``: the event FIFO in front of
    every engine, or ``"auto"`` with ``lanes="auto"`` (:func:`fit_design`: the depth and lanes of the
    lowest estimated latency that fit).
    ``store``: where the weights go, as :func:`resolve_store` (``"auto"``: block RAM, or SPRAM where
    the board has it and block RAM is not enough).
    ``progress``: a tqdm bar on stderr over the stages (estimate, Verilog, tables, write).
    """
    import sys

    from tqdm import tqdm

    auto_fifo = isinstance(fifo_depth, str) and fifo_depth == "auto"
    fifo_depth = FIFO_DEPTH if auto_fifo else check_fifo_depth(fifo_depth)
    b = get_board(board) if board is not None else None
    if auto_fifo and not (isinstance(lanes, str) and lanes == "auto"):
        raise UserError("--fifo-depth auto goes with --lanes auto (it picks both for the board)")
    if isinstance(lanes, str) and lanes == "auto":
        if b is None:
            raise UserError("--lanes auto needs --board (it picks the lanes per layer that fit the board)")
        if auto_fifo:
            found = fit_design(model, b, store, n_images)
            if found is not None:
                found, fifo_depth = found
        else:
            found = fit_lanes(model, b, fifo_depth, store, n_images)
        if found is None:   # even one lane per engine does not fit: the refusal names the numbers
            check_fit(model, estimate(model, b, 1, fifo_depth, 0, store=store), b, store)
        lanes = found
    lanes = check_lanes(lanes, len(model.layers))
    with tqdm(total=4, desc="emit fpga: estimate", unit="stage", file=sys.stderr, disable=not progress,
              leave=False) as bar:
        return _emit(model, model_sha256, name, out_dir, b, lanes, fifo_depth, n_images, store, bar)


def _emit(model, model_sha256, name, out_dir, b, lanes, fifo_depth, n_images, store, bar) -> dict:
    def stage(next_desc):
        bar.update(1)
        bar.set_description_str(f"emit fpga: {next_desc}")

    # A design far beyond every board is refused from its engines' parameters, before the estimate
    # (which reads every table word, for every lane count it tries) and long before the Verilog.
    quick = design_bits(model, lanes, fifo_depth, "rom")
    check_design_size(quick["total"], quick)
    est = estimate(model, b, lanes, fifo_depth, n_images, store=store)
    if b is not None:
        check_fit(model, est, b, store)  # before generating anything
    check_design_size(est["memory_bits"]["total"], est["memory_bits"])
    stage("Verilog")
    st = est["store"]
    ram = "ram" in st
    sym = symbol(name)
    files: dict[str, bytes] = {}
    files[f"{sym}.v"] = verilog(model, sym, lanes, fifo_depth, st).encode()
    stage("tables")
    payload = result_bits(model)
    files[f"{sym}_pins.v"] = pins_verilog(sym, payload, ram).encode()
    store_info = {"layers": st}
    if ram:
        net = inspect_network(model, lanes, fifo_depth, st)
        image = net.load_image()
        files["weights.bin"] = image
        segs, off = [], 0
        for k, e in enumerate(net.engines):
            if getattr(e, "store", "rom") != "ram":
                continue
            nbytes = e.store_depth * e.lanes
            segs.append({"layer": k, "offset": off, "bytes": nbytes, "words": e.store_depth, "word_bits": e.lanes * 8,
                         "weight_words": e.weight_depth, "threshold_words": e.store_depth - e.weight_depth,
                         "bias_folded_into_thresholds": bool(e.fold_bias)})
            off += nbytes
        assert off == len(image)
        store_info["image"] = {
            "file": "weights.bin", "bytes": len(image), "segments": segs,
            "byte_order": ("segments in layer order, each store's words in address order, every word little-endian "
                           "(word_bits / 8 bytes); weight word: lane l's int8 (two's complement) in bits 8l..8l+7; "
                           "threshold word: one threshold minus the neuron's bias, sign-extended to the word, "
                           "row-major (neuron, phase) with each row padded to a power of two "
                           "(rtl.loader.StoreLoader, rtl.conv.ConvEngine.store_words)"),
            "when": ("once after configuration, on load__payload/load__valid/load__ready, before the first frame "
                     "is accepted; a reset keeps a complete load, a reset during the load restarts it at byte 0"),
        }
    tabs = tables(model)
    for tname, (arr, bits, signed) in tabs.items():
        files[f"{tname}.mem"] = mem_lines(arr, bits if signed else bits + 1)
    files["estimate.json"] = (json.dumps(est, indent=2, sort_keys=True) + "\n").encode()
    files["estimate.txt"] = (format_text(est, name) + "\n").encode()
    n_px = int(np.prod(model.input_shape))
    manifest = {
        "target": "fpga", "board": b.name if b is not None else None, "lanes": lanes, "fifo_depth": fifo_depth,
        "model": {"name": name, "sha256": model_sha256, "symbol": sym},
        "top": {
            "module": sym, "file": f"{sym}.v",
            "ports": {"clk": "clock", "rst": "synchronous reset, active high",
                      "i__payload": "[7:0] pixel, C*H*W per frame in (H, W, C) order (camera order)", "i__valid": "in", "i__ready": "out",
                      "o__payload": (f"[{payload - 1}:0] {{last, value (signed, {model.layers[-1].acc_bits} bits), "
                                     f"index}}: one logit of the readout map per transfer (flat (C, H, W) index), "
                                     f"rows in order as they complete, last on the frame's final logit"
                                     if model.task == "detect" else
                                     f"[{payload - 1}:0] {{logits[{model.num_classes - 1}..0] (signed, "
                                     f"{model.layers[-1].acc_bits} bits each), cls}}, cls in the low bits"),
                      "o__valid": "out", "o__ready": "in",
                      **({"load__payload": "[7:0] byte of weights.bin, in file order", "load__valid": "in",
                          "load__ready": "out (low after the load)",
                          "loaded": "out: the whole image is in the stores (frames wait until then)"} if ram else {})},
            "pixels_per_frame": n_px,
        },
        "store": store_info,
        "pins_wrapper": {"module": f"{sym}_pins", "file": f"{sym}_pins.v", "pins": PINS + (LOAD_PINS if ram else 0),
                         "result_bytes": -(-payload // 8),
                         **({"load_pins": "ld[7:0], ld_valid, ld_ready, loaded"} if ram else {})},
        "spec": {"schema_version": SCHEMA_VERSION, "Q": model.Q, "T": model.T, "F": model.F, "input_Q": model.input_Q,
                 "input_T": model.input_T, "input_shape": list(model.input_shape)},
        "tools": {**tool_versions(), **hdl_versions()},
        "layers": layer_summary(model),
        "tables": {t: {"entries": int(np.size(arr)), "bits": bits, "signed": signed}
                   for t, (arr, bits, signed) in sorted(tabs.items())},
    }
    stage("write")
    write_with_manifest(out_dir, files, manifest)
    bar.update(1)
    return manifest
