"""``codegen emit --target c``: the generated C, the board's start-up files, and a build report.

The report (``report.json`` and ``report.txt`` next to the code) holds, for the board, the
arm-none-eabi-gcc builds at -O2 and -Os: flash and RAM per section, the static stack bound from
GCC's call graph, the peak stack measured by stack painting, and instructions per inference counted
under Unicorn on the first test images of the model's dataset (their outputs are checked against
the golden model too). For a detector the counted frame is inference + decode (``NAME_detect``) and
the detections are compared with the golden model's as well.
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime import golden
from runtime.errors import UserError
from runtime.spec import IntModel

from boards import registry

from ..frontend import datasets
from ..lut import layer_summary, tool_versions, write_with_manifest
from . import emit as emit_c
from . import emulators, firmware, toolchain

OPTS = ("-O2", "-Os")


def makefile(model: IntModel, name: str, b) -> str:
    sym = emit_c.c_symbol(name)
    det = firmware.detect_defines(model, sym)
    det_line = (" \\\n\t" + " ".join(det)) if det else ""
    return f"""# Builds the semihosting parity firmware for {b.name}. Generated; deterministic.
CC = arm-none-eabi-gcc
OPT ?= -O2
CFLAGS = {' '.join(b.cpu_flags)} -std=c99 -Wall -Wextra -Werror $(OPT) -ffunction-sections -fdata-sections \\
	-DOS_INFER={sym}_infer -DOS_INPUT_SIZE={int(np.prod(model.input_shape))} -DOS_N_LOGITS={model.num_classes}{det_line}
SRC = {sym}_model.c onespike.c startup.c semihost.c fw_main.c

{sym}.elf: $(SRC) {sym}_model.h onespike.h semihost.h sections.ld memory.ld
	$(CC) $(CFLAGS) $(SRC) -nostartfiles --specs=nano.specs --specs=nosys.specs -Wl,--gc-sections \\
		-L. -T sections.ld -o $@ -lgcc

clean:
	rm -f {sym}.elf
"""


def emit_with_report(model: IntModel, model_sha256: str, name: str, out: Path, board_name: str | None,
                     n_count: int = 10, progress: bool = False) -> dict:
    """Generate the C folder for ``board_name`` with its report; ``n_count`` = 0 skips instruction counting.

    ``progress``: a tqdm bar on stderr over the firmware builds and the instruction counts."""
    if isinstance(n_count, bool) or not isinstance(n_count, int) or n_count < 0:
        raise UserError(f"--count-images must be an integer 0 or more, not {n_count!r}")
    b = registry.mcu(board_name)
    mem = firmware.check_fit(model, b)  # refuse before generating anything
    toolchain.need("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    files = emit_c.generate(model, name)
    for fn in ("startup.c", "semihost.c", "semihost.h", "fw_main.c", "sections.ld"):
        files[fn] = (firmware.COMMON / fn).read_bytes()
    files["memory.ld"] = (b.folder / "memory.ld").read_bytes()
    files["Makefile"] = makefile(model, name, b).encode()

    images, skipped = None, None
    ds = model.meta.get("dataset")
    if n_count == 0:
        skipped = "--count-images 0"
    elif not ds:
        skipped = "the model records no dataset"
    else:
        images = _test_images(model, ds, n_count)
        if tuple(images.shape[1:]) != tuple(model.input_shape):
            skipped = f"{ds} test images are {tuple(images.shape[1:])}, the model takes {tuple(model.input_shape)}"
            images = None
        else:
            images = images[:n_count]
    builds = {}
    steps = len(OPTS) * (2 if images is not None else 1)
    bar = tqdm(total=steps, desc=f"emit c ({b.name})", unit="step", disable=not progress, leave=False, file=sys.stderr)
    # kept when a tool fails, for its log (named in the error); removed otherwise
    tmp = Path(tempfile.mkdtemp(prefix="onespike-c-"))
    try:
        gold = golden.run(model, images, keep_phases=False) if images is not None else None
        for opt in OPTS:
            bar.set_postfix_str(f"build {opt}")
            fw = firmware.build_firmware(model, name, b, tmp, opt=opt)
            bar.update()
            entry = {"sizes": fw.sizes}
            if images is not None:
                bar.set_postfix_str(f"count {opt}, {len(images)} images")
                run = emulators.run_unicorn(fw, images, model.num_classes)
                bar.update()
                matched, _ = emulators.compare_outputs(gold, run.logits, run.classes, run.detections)
                ok = matched == len(images)
                ins = run.instructions
                entry["instructions_per_inference"] = {
                    "images": len(ins), "median": statistics.median(ins), "min": min(ins), "max": max(ins),
                    "counter": "Unicorn 2 basic blocks, disassembled with Capstone (IT instructions included)",
                    "dataset": ds, "outputs_equal_golden": ok}
                if gold.detections is not None:
                    entry["instructions_per_inference"].update(
                        includes_decode=True, detections_compared=int(sum(len(d) for d in gold.detections)))
                cyc = run.cycles
                entry["cycles_per_inference_estimate"] = {
                    "median": statistics.median(cyc), "min": min(cyc), "max": max(cyc),
                    "model": "Cortex-M4 TRM instruction timings, zero wait states (codegen/c/timing.py): an estimate"}
                entry["stack_peak_bytes_measured"] = run.stack_peak_bytes
            builds[opt] = entry
    finally:
        bar.close()
    shutil.rmtree(tmp, ignore_errors=True)
    sops = float(gold.sops.sum(1).mean()) if images is not None else None
    report = {
        "model": {"name": name, "sha256": model_sha256}, "board": {"name": b.name, "description": b.description,
                                                                    "flash_bytes": b.flash_bytes, "ram_bytes": b.ram_bytes},
        "estimate_before_build": {"flash_tables_bytes": mem.flash_tables, "ram_buffers_bytes": mem.ram_buffers,
                                  **({"detect_ram_bytes": mem.detect_ram, "max_detections": mem.max_detections}
                                     if mem.max_detections else {})},
        "builds": builds, "synaptic_ops_per_inference": sops, "tools": tool_versions(), "layers": layer_summary(model),
    }
    if skipped:
        report["instruction_count_skipped"] = skipped
    files["report.json"] = (json.dumps(report, indent=2, sort_keys=True) + "\n").encode()
    files["report.txt"] = (format_text(report) + "\n").encode()
    manifest = {
        "target": "c", "board": b.name, "model": {"name": name, "sha256": model_sha256, "symbol": emit_c.c_symbol(name)},
        "tools": tool_versions(),
    }
    write_with_manifest(out, files, manifest)
    return report


def _test_images(model: IntModel, ds: str, n: int) -> np.ndarray:
    """The first ``n`` test images of the model's dataset: an IDX dataset, or for a detector a
    detection dataset (codegen.frontend.voc) resized to the model's input."""
    if emit_c.is_detector(model):
        from ..frontend import voc

        if voc.is_detection_dataset(ds):
            C, H, W = model.input_shape
            if C in (1, 3):
                return voc.load(ds, "test", (W, H), channels=C, classes=list(model.head.classes)).images[:n]
    images, _ = datasets.load(ds, "test")
    return images[:n]


def format_text(rep: dict) -> str:
    b = rep["board"]
    lines = [f"model {rep['model']['name']} on {b['name']} ({b['description']}): "
             f"{b['flash_bytes'] // 1024} KiB flash, {b['ram_bytes'] // 1024} KiB RAM"]
    for opt, e in rep["builds"].items():
        s = e["sizes"]
        secs = ", ".join(f"{k} {v}" for k, v in s["sections"].items())
        lines.append(f"  {opt}: flash {s['flash_bytes']} B, RAM {s['ram_bytes']} B (+ stack); sections: {secs}")
        stack = f"static bound {s['stack_bytes_static']} B" if s.get("stack_bytes_static") is not None else "static bound n/a"
        if "stack_peak_bytes_measured" in e:
            stack += f", measured peak {e['stack_peak_bytes_measured']} B"
        lines.append(f"       stack: {stack}")
        ins = e.get("instructions_per_inference")
        if rep.get("instruction_count_skipped"):
            lines.append(f"       instruction count skipped ({rep['instruction_count_skipped']})")
        elif ins:
            what = "instructions per frame (inference + decode)" if ins.get("includes_decode") else "instructions per inference"
            dets = f", {ins['detections_compared']} detections compared" if ins.get("includes_decode") else ""
            lines.append(f"       {what}: median {ins['median']:,.0f} (min {ins['min']:,}, max {ins['max']:,}) "
                         f"over {ins['images']} {ins['dataset']} test images{dets}; outputs equal golden: {ins['outputs_equal_golden']}")
            cyc = e.get("cycles_per_inference_estimate")
            if cyc:
                lines.append(f"       estimated cycles (Cortex-M4 timing model, zero wait states): median {cyc['median']:,.0f}; "
                             f"{168e6 / cyc['median']:.1f} {'frames' if ins.get('includes_decode') else 'inferences'} per second at 168 MHz")
    if rep.get("synaptic_ops_per_inference"):
        lines.append(f"  synaptic operations per inference (same images): {rep['synaptic_ops_per_inference']:,.0f}")
    return "\n".join(lines)
