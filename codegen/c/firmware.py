"""Cortex-M firmware of generated C: the fit check, the build, section sizes and the static stack bound.

* ``check_fit``: the model's tables and buffers (a detector's decode buffers and detections too)
  against the board's flash and RAM, before compiling.
* ``build_firmware``: arm-none-eabi-gcc (C99, -Wall -Wextra -Werror) with the board's start-up
  code and linker script, ``-fstack-usage -fcallgraph-info=su`` for the static stack bound.
* ``sizes``, ``static_stack``: flash and RAM per section; the deepest call chain's stack.

Running the firmware (QEMU, Unicorn) is :mod:`codegen.c.emulators`.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from boards.kinds import MCU_DIR, McuBoard
from runtime.errors import UserError
from runtime.spec import IntModel

from . import emit as emit_c
from .toolchain import need, run_tool, tool_error

COMMON = MCU_DIR / "common"
CODE_RESERVE = 8 << 10  # flash for kernels, start-up and firmware code (measured: 3-5 KiB at -O2)
STACK_RESERVE = 1 << 10
DETECT_CODE_RESERVE = 2 << 10  # a detector's decode (os_detect, NAME_detect: measured about 2 KiB at -O2)


def firmware_ram(model: IntModel, mem: emit_c.Memory) -> int:
    """RAM of the parity firmware before compiling: the model's buffers (a detector's decode buffers
    included), the stack reserve, and fw_main's buffers: a classifier's logits; a detector's
    detections. Both read the image into the model's input buffer (NAME_input), and a detector writes
    the readout map from the model's own, so neither is a second buffer."""
    ram = mem.ram_buffers + STACK_RESERVE
    if mem.max_detections:
        return ram + mem.max_detections * (emit_c.OS_DETECTION_T_BYTES + 28) + 4
    return ram + 4 * (model.num_classes + 1)


def check_fit(model: IntModel, b: McuBoard) -> emit_c.Memory:
    mem = emit_c.plan_memory(model)
    flash = mem.flash_tables + CODE_RESERVE + (DETECT_CODE_RESERVE if mem.max_detections else 0)
    ram = firmware_ram(model, mem)
    if flash > b.flash_bytes or ram > b.ram_bytes:
        raise UserError(
            f"model does not fit {b.name}: needs {flash / 1024:.1f} KiB flash (board has {b.flash_bytes / 1024:.0f} KiB) "
            f"and {ram / 1024:.1f} KiB RAM (board has {b.ram_bytes / 1024:.0f} KiB)")
    return mem


@dataclass
class Firmware:
    elf: Path
    board: McuBoard
    opt: str
    src: Path
    sizes: dict = field(default_factory=dict)
    max_detections: int = 0  # a detector's firmware: each record carries up to this many detections


def build_firmware(model: IntModel, name: str, b: McuBoard, work: Path, opt: str = "-O2") -> Firmware:
    """Generated C for ``model`` plus the board's start-up code and the parity firmware."""
    mem = check_fit(model, b)
    sym = emit_c.c_symbol(name)
    # the image is read straight into the network's input buffer (NAME_input, encoded in place)
    defs = detect_defines(model, sym) or [f"-DOS_INPUT_BUF={sym}_input"]
    return build_elf(emit_c.generate(model, name), [f"{sym}_model.c", "onespike.c"], f"{sym}_infer",
                     int(np.prod(model.input_shape)), model.num_classes, b, Path(work) / f"{b.name}{opt}", opt, sym,
                     extra_defs=defs, max_detections=mem.max_detections)


def detect_defines(model: IntModel, sym: str) -> list[str]:
    """fw_main.c's defines of a detector's entry points (none for a classifier)."""
    if not emit_c.is_detector(model):
        return []
    return [f"-DOS_DETECT={sym}_detect", f"-DOS_READOUT={sym}_readout", f"-DOS_INPUT_BUF={sym}_input",
            f"-DOS_MAX_DETECTIONS={int(model.head.max_detections)}"]


def build_elf(files: dict[str, bytes], sources: list[str], infer: str, input_size: int, n_logits: int, b: McuBoard,
              src: Path, opt: str, stem: str, extra_defs: list[str] = (), max_detections: int = 0,
              include_dirs=(), libs=()) -> Firmware:
    """Compile ``files`` (their ``sources``) with the firmware main for board ``b`` into ``src/stem.elf``.

    ``extra_defs``/``max_detections``: a detector's firmware (see fw_main.c and :func:`detect_defines`);
    ``include_dirs``/``libs``: a baseline's headers and static libraries (CMSIS-NN)."""
    cc = need("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    src = Path(src).resolve()
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for fn, data in files.items():
        (src / fn).write_bytes(data)
    elf = src / f"{stem}.elf"
    cfiles = [src / f for f in sources] + [COMMON / "startup.c", COMMON / "semihost.c", COMMON / "fw_main.c"]
    defs = [f"-DOS_INFER={infer}", f"-DOS_INPUT_SIZE={input_size}", f"-DOS_N_LOGITS={n_logits}"] + list(extra_defs)
    cmd = ([cc] + list(b.cpu_flags) + ["-std=c99", "-Wall", "-Wextra", "-Werror", opt, "-ffunction-sections", "-fdata-sections",
                                        "-fstack-usage", "-fcallgraph-info=su", "-I", str(src), "-I", str(COMMON)]
           + [a for d in include_dirs for a in ("-I", str(d))] + defs
           + [str(f) for f in cfiles]
           + ["-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs", "-Wl,--gc-sections", "-L", str(b.folder),
              "-T", str(COMMON / "sections.ld"), "-Wl,-Map," + str(src / f"{stem}.map"), "-o", str(elf)]
           + [str(x) for x in libs] + ["-lgcc"])
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=src)
    if r.returncode != 0:
        raise tool_error("arm-none-eabi-gcc on the generated C (a codegen bug, please report it)", cmd, r,
                         src / "compile.log")
    fw = Firmware(elf, b, opt, src, max_detections=int(max_detections))
    fw.sizes = sizes(fw)
    return fw


def sizes(fw: Firmware) -> dict:
    """Flash and RAM per section (arm-none-eabi-size -A) and the static stack bound."""
    size = need("arm-none-eabi-size", "binutils-arm-none-eabi")
    out = run_tool([size, "-A", str(fw.elf)], fw.src / "size.log")
    sections = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = int(parts[1])
    flash_secs = [s for s in (".isr_vector", ".text", ".rodata", ".ARM.exidx", ".data") if s in sections]
    ram_secs = [s for s in (".data", ".bss") if s in sections]
    return {
        "sections": {k: sections[k] for k in sorted(sections) if k in flash_secs + ram_secs},
        "flash_bytes": sum(sections[s] for s in flash_secs),
        "ram_bytes": sum(sections[s] for s in ram_secs),
        "stack_bytes_static": static_stack(fw.src),
        "board_flash_bytes": fw.board.flash_bytes, "board_ram_bytes": fw.board.ram_bytes,
    }


def static_stack(src: Path, root: str = "Reset_Handler") -> int | None:
    """Worst-case stack from GCC's call graph (-fcallgraph-info=su): the deepest path from ``root``."""
    nodes: dict[str, int] = {}
    edges: dict[str, set] = {}
    for ci in src.glob("*.ci"):
        text = ci.read_text()
        for m in re.finditer(r'node:\s*\{\s*title:\s*"([^"]+)"\s*label:\s*"([^"]*)"', text):
            title, label = m.group(1), m.group(2)
            sm = re.search(r"(\d+) bytes", label)
            key = title.split(":")[-1]
            # a declaration seen from another file has no size: keep the defining file's figure
            nodes[key] = max(nodes.get(key, 0), int(sm.group(1)) if sm else 0)
        for m in re.finditer(r'edge:\s*\{\s*sourcename:\s*"([^"]+)"\s*targetname:\s*"([^"]+)"', text):
            edges.setdefault(m.group(1).split(":")[-1], set()).add(m.group(2).split(":")[-1])
    if root not in nodes:
        return None

    def depth(n, seen):
        if n in seen:
            return 0  # recursion would be unbounded; the kernels have none
        return nodes.get(n, 0) + max((depth(t, seen | {n}) for t in edges.get(n, ())), default=0)

    return depth(root, frozenset())
