"""Cortex-M builds of generated C: firmware, QEMU runs, instruction counts, sizes and stack.

* ``check_fit``: the model's tables and buffers against the board's flash and RAM, before compiling.
* ``build_firmware``: arm-none-eabi-gcc (C99, -Wall -Wextra -Werror) with the board's start-up
  code and linker script, ``-fstack-usage -fcallgraph-info=su`` for the static stack bound.
* ``run_qemu``: the firmware under ``qemu-system-arm`` with semihosting file I/O.
* ``run_unicorn``: the same ELF under the Unicorn engine, counting the instructions executed between
  the two ``os_mark`` calls that bracket each inference (a repeatable counter), and the peak stack
  (stack painting). Unicorn does not report ``IT`` instructions to hooks; counts are taken from
  basic blocks disassembled with Capstone, which do include them.
"""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from boards import MCU_BOARDS, MCU_DIR, McuBoard
from runtime.errors import ToolError, UserError
from runtime.spec import IntModel

from . import emit_c
from .c_target import tool_error

COMMON = MCU_DIR / "common"
CODE_RESERVE = 8 << 10  # flash for kernels, start-up and firmware code (measured: 3-5 KiB at -O2)
STACK_RESERVE = 1 << 10


def board(name: str | None) -> McuBoard:
    if name is None:
        name = "mps2-an386"
    if name not in MCU_BOARDS:
        raise UserError(f"unknown board {name!r}; known MCU boards: {', '.join(sorted(MCU_BOARDS))}")
    return MCU_BOARDS[name]


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise UserError(f"{tool} not found: install the Debian package {package} (scripts/setup.sh does)")
    return path


def check_fit(model: IntModel, b: McuBoard) -> emit_c.Memory:
    mem = emit_c.plan_memory(model)
    flash = mem.flash_tables + CODE_RESERVE
    ram = mem.ram_buffers + STACK_RESERVE + int(np.prod(model.input_shape)) + 4 * (model.num_classes + 1)
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


def build_firmware(model: IntModel, name: str, b: McuBoard, work: Path, opt: str = "-O2") -> Firmware:
    """Generated C for ``model`` plus the board's start-up code and the parity firmware."""
    check_fit(model, b)
    sym = emit_c.c_symbol(name)
    return build_elf(emit_c.generate(model, name), [f"{sym}_model.c", "onespike.c"], f"{sym}_infer",
                     int(np.prod(model.input_shape)), model.num_classes, b, Path(work) / f"{b.name}{opt}", opt, sym)


def build_elf(files: dict[str, bytes], sources: list[str], infer: str, input_size: int, n_logits: int, b: McuBoard,
              src: Path, opt: str, stem: str) -> Firmware:
    """Compile ``files`` (their ``sources``) with the firmware main for board ``b`` into ``src/stem.elf``."""
    cc = need("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    src = Path(src).resolve()
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for fn, data in files.items():
        (src / fn).write_bytes(data)
    elf = src / f"{stem}.elf"
    cfiles = [src / f for f in sources] + [COMMON / "startup.c", COMMON / "semihost.c", COMMON / "fw_main.c"]
    defs = [f"-DOS_INFER={infer}", f"-DOS_INPUT_SIZE={input_size}", f"-DOS_N_LOGITS={n_logits}"]
    cmd = ([cc] + list(b.cpu_flags) + ["-std=c99", "-Wall", "-Wextra", "-Werror", opt, "-ffunction-sections", "-fdata-sections",
                                        "-fstack-usage", "-fcallgraph-info=su", "-I", str(src), "-I", str(COMMON)] + defs
           + [str(f) for f in cfiles]
           + ["-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs", "-Wl,--gc-sections", "-L", str(b.folder),
              "-T", str(COMMON / "sections.ld"), "-Wl,-Map," + str(src / f"{stem}.map"), "-o", str(elf), "-lgcc"])
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=src)
    if r.returncode != 0:
        raise tool_error("arm-none-eabi-gcc on the generated C (a codegen bug, please report it)", cmd, r,
                         src / "compile.log")
    fw = Firmware(elf, b, opt, src)
    fw.sizes = sizes(fw)
    return fw


def sizes(fw: Firmware) -> dict:
    """Flash and RAM per section (arm-none-eabi-size -A) and the static stack bound."""
    size = need("arm-none-eabi-size", "binutils-arm-none-eabi")
    out = _run_tool([size, "-A", str(fw.elf)], fw.src / "size.log")
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


def _run_tool(cmd: list[str], log: Path) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise tool_error(Path(cmd[0]).name, cmd, r, log)
    return r.stdout


def _images_file(images: np.ndarray) -> bytes:
    return struct.pack("<I", len(images)) + np.ascontiguousarray(images).tobytes()


def _parse(raw: bytes, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    if len(raw) != 4 * (k + 1) * n:
        raise ToolError(f"the firmware wrote {len(raw)} bytes, expected {4 * (k + 1) * n} (a codegen bug, please report it)")
    a = np.frombuffer(raw, dtype="<i4").reshape(n, k + 1).astype(np.int64)
    return a[:, :k], a[:, k]


def run_qemu(fw: Firmware, images: np.ndarray, n_logits: int, timeout: int = 600) -> tuple[np.ndarray, np.ndarray]:
    if fw.board.qemu_machine is None:
        raise UserError(f"board {fw.board.name} cannot be emulated; emulated boards: "
                        f"{', '.join(sorted(n for n, b in MCU_BOARDS.items() if b.qemu_machine))}")
    qemu = need("qemu-system-arm", "qemu-system-arm")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "images.bin").write_bytes(_images_file(images))
        cmd = [qemu, "-M", fw.board.qemu_machine, "-cpu", "cortex-m4", "-nographic", "-monitor", "none", "-serial", "none",
               "-semihosting-config", "enable=on,target=native", "-kernel", str(fw.elf)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise tool_error("QEMU", cmd, None, fw.src / "qemu.log",
                             f"the firmware did not finish {len(images)} images within {timeout} s") from None
        out = Path(tmp) / "out.bin"
        if r.returncode != 0 or not out.exists():
            raise tool_error("QEMU running the generated firmware (a codegen bug, please report it)", cmd, r,
                             fw.src / "qemu.log")
        return _parse(out.read_bytes(), len(images), n_logits)


@dataclass
class UnicornRun:
    logits: np.ndarray
    classes: np.ndarray
    instructions: list[int]  # per inference
    stack_peak_bytes: int


def run_unicorn(fw: Firmware, images: np.ndarray, n_logits: int) -> UnicornRun:
    """Run the ELF under Unicorn; count instructions per inference (between os_mark(1) and os_mark(2))."""
    import capstone
    import unicorn
    from unicorn import arm_const as A

    elf = fw.elf.read_bytes()
    syms = _symbols(fw.elf)
    uc = unicorn.Uc(unicorn.UC_ARCH_ARM, unicorn.UC_MODE_THUMB | unicorn.UC_MODE_MCLASS)
    b = fw.board
    flash_base = b.flash_origin & ~0xFFFF
    uc.mem_map(flash_base, _round_up(b.flash_bytes + (b.flash_origin - flash_base), 1 << 16))
    ram_size = _round_up(b.ram_bytes, 1 << 16)
    uc.mem_map(b.ram_origin, ram_size)
    uc.mem_map(0xE0000000, 1 << 20)  # system control space (CPACR writes)
    for vaddr, data in _load_segments(elf):
        uc.mem_write(vaddr, data)
    sp = struct.unpack("<I", uc.mem_read(b.flash_origin, 4))[0]
    paint_lo = sp - min(64 << 10, ram_size // 2)
    uc.mem_write(paint_lo, b"\xa5" * (sp - paint_lo))
    uc.reg_write(A.UC_ARM_REG_SP, sp)

    files: dict[int, object] = {}
    tmp = tempfile.TemporaryDirectory()
    tdir = Path(tmp.name)
    (tdir / "images.bin").write_bytes(_images_file(images))
    state = {"counting": False, "count": 0, "counts": [], "exit": None}
    md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS)
    block_cache: dict[tuple[int, int], int] = {}

    def on_block(uc_, addr, size, _):
        if state["counting"]:
            key = (addr, size)
            n = block_cache.get(key)
            if n is None:
                n = sum(1 for _ in md.disasm_lite(bytes(uc_.mem_read(addr, size)), addr))
                block_cache[key] = n
            state["count"] += n

    def on_mark(uc_, addr, size, _):
        what = uc_.reg_read(A.UC_ARM_REG_R0)
        if what == 1:
            state["counting"], state["count"] = True, 0
        elif what == 2:
            state["counting"] = False
            # the block that called os_mark(2) was counted up to the call: exclude os_mark itself
            state["counts"].append(state["count"])

    def on_intr(uc_, intno, _):
        pc = uc_.reg_read(A.UC_ARM_REG_PC)
        insn = struct.unpack("<H", uc_.mem_read(pc, 2))[0]
        if insn != 0xBEAB:
            uc_.emu_stop()
            state["exit"] = f"unexpected exception {intno} at {pc:#x}"
            return
        op = uc_.reg_read(A.UC_ARM_REG_R0)
        arg = uc_.reg_read(A.UC_ARM_REG_R1)
        words = lambda k: struct.unpack(f"<{k}I", uc_.mem_read(arg, 4 * k))  # noqa: E731
        ret = 0
        if op == 0x01:  # OPEN
            p, mode, ln = words(3)
            path = bytes(uc_.mem_read(p, ln)).decode()
            fd = len(files) + 3
            files[fd] = open(tdir / path, "rb" if mode < 4 else "wb")
            ret = fd
        elif op == 0x02:  # CLOSE
            files.pop(words(1)[0]).close()
        elif op == 0x05:  # WRITE
            fd, p, ln = words(3)
            files[fd].write(bytes(uc_.mem_read(p, ln)))
        elif op == 0x06:  # READ
            fd, p, ln = words(3)
            data = files[fd].read(ln)
            uc_.mem_write(p, data)
            ret = ln - len(data)
        elif op == 0x04:  # WRITE0
            pass
        elif op in (0x18, 0x20):  # EXIT, EXIT_EXTENDED
            state["exit"] = words(2)[1] if op == 0x20 else 0
            uc_.emu_stop()
        else:
            state["exit"] = f"unsupported semihosting call {op:#x}"
            uc_.emu_stop()
        uc_.reg_write(A.UC_ARM_REG_R0, ret & 0xFFFFFFFF)
        uc_.reg_write(A.UC_ARM_REG_PC, (pc + 2) | 1)

    uc.hook_add(unicorn.UC_HOOK_BLOCK, on_block)
    mark = syms["os_mark"] & ~1
    uc.hook_add(unicorn.UC_HOOK_CODE, on_mark, begin=mark, end=mark)
    uc.hook_add(unicorn.UC_HOOK_INTR, on_intr)
    entry = syms["Reset_Handler"]
    try:
        uc.emu_start(entry | 1, 0xFFFFFFFF)
    except unicorn.UcError as e:
        state["exit"] = f"{e} at pc {uc.reg_read(A.UC_ARM_REG_PC):#x}"
    finally:
        for f in files.values():
            f.close()
    if state["exit"] != 0:
        tmp.cleanup()
        raise ToolError(f"the firmware under Unicorn did not exit cleanly: {state['exit']} (a codegen bug, please report it)")
    raw = (tdir / "out.bin").read_bytes()
    tmp.cleanup()
    painted = bytes(uc.mem_read(paint_lo, sp - paint_lo))
    untouched = len(painted) - len(painted.lstrip(b"\xa5"))
    logits, classes = _parse(raw, len(images), n_logits)
    return UnicornRun(logits, classes, state["counts"], (sp - paint_lo) - untouched)


def _round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _symbols(elf: Path) -> dict[str, int]:
    nm = need("arm-none-eabi-nm", "binutils-arm-none-eabi")
    out = _run_tool([nm, str(elf)], Path(elf).parent / "nm.log")
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = int(parts[0], 16)
    return syms


def _load_segments(elf: bytes):
    """PT_LOAD segments of a 32-bit little-endian ELF: (load address, bytes), .bss zero-filled."""
    e_phoff, = struct.unpack_from("<I", elf, 28)
    e_phentsize, e_phnum = struct.unpack_from("<HH", elf, 42)
    for i in range(e_phnum):
        p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz = struct.unpack_from("<6I", elf, e_phoff + i * e_phentsize)
        if p_type == 1 and p_filesz:
            yield p_paddr, elf[p_offset:p_offset + p_filesz]
