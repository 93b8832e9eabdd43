"""Running Cortex-M firmware: under QEMU (semihosting file I/O), and under Unicorn with instruction counts.

* ``run_qemu``: the firmware under ``qemu-system-arm`` with semihosting file I/O.
* ``run_unicorn``: the same ELF under the Unicorn engine, counting the instructions executed between
  the two ``os_mark`` calls that bracket each inference (a repeatable counter), and the peak stack
  (stack painting). Unicorn does not report ``IT`` instructions to hooks; counts are taken from
  basic blocks disassembled with Capstone, which do include them.

A detector's firmware brackets inference and decode (``NAME_detect``) and writes each image's
detections after its logits; both runners return them (``run_qemu_detections``,
``UnicornRun.detections``) and ``compare_qemu`` checks them against the golden model exactly.
"""
from __future__ import annotations

import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from boards import registry
from runtime.errors import ToolError, UserError

from .firmware import Firmware
from . import timing
from .toolchain import need, run_tool, tool_error


def _images_file(images: np.ndarray) -> bytes:
    return struct.pack("<I", len(images)) + np.ascontiguousarray(images).tobytes()


def _parse(raw: bytes, n: int, k: int, max_detections: int = 0) -> tuple[np.ndarray, np.ndarray, list | None]:
    """(logits, classes, detections or None) of the firmware's out.bin."""
    if max_detections:
        from .host import parse_detections

        a, dets, off = np.empty((n, k + 1), dtype=np.int64), [], 0
        for i in range(n):
            if off + 4 * (k + 1) > len(raw):
                raise ToolError(f"the firmware wrote {len(raw)} bytes, too few for {n} images (a codegen bug, please report it)")
            a[i] = np.frombuffer(raw, dtype="<i4", count=k + 1, offset=off)
            d, off = parse_detections(raw, off + 4 * (k + 1), max_detections, "the firmware")
            dets.append(d)
        if off != len(raw):
            raise ToolError(f"the firmware wrote {len(raw)} bytes, expected {off} (a codegen bug, please report it)")
        return a[:, :k], a[:, k], dets
    if len(raw) != 4 * (k + 1) * n:
        raise ToolError(f"the firmware wrote {len(raw)} bytes, expected {4 * (k + 1) * n} (a codegen bug, please report it)")
    a = np.frombuffer(raw, dtype="<i4").reshape(n, k + 1).astype(np.int64)
    return a[:, :k], a[:, k], None


def run_qemu(fw: Firmware, images: np.ndarray, n_logits: int, timeout: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """Logits and classes of the firmware under QEMU (a detector's detections: :func:`run_qemu_detections`)."""
    logits, classes, _ = run_qemu_detections(fw, images, n_logits, timeout)
    return logits, classes


def run_qemu_detections(fw: Firmware, images: np.ndarray, n_logits: int, timeout: int = 600):
    """(logits, classes, detections): detections per image int64 (n, 6) for a detector's firmware, else None."""
    if fw.board.qemu_machine is None:
        raise UserError(f"board {fw.board.name} cannot be emulated; emulated boards: "
                        f"{', '.join(b.name for b in registry.emulated())}")
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
        return _parse(out.read_bytes(), len(images), n_logits, fw.max_detections)


def compare_outputs(g, logits: np.ndarray, classes: np.ndarray, detections: list | None) -> tuple[int, str | None]:
    """Firmware outputs against a golden result: logits, class and a detector's detections, exactly.
    Matched images and the first mismatch as a line, or None."""
    from .host import detection_mismatch

    n = len(g.classes)
    ok = np.all(logits == g.logits, axis=1) & (classes == g.classes)
    det_diff = [None] * n
    if g.detections is not None:
        if detections is None:
            raise ToolError("the firmware of a detector wrote no detections (a codegen bug, please report it)")
        det_diff = [detection_mismatch(e, d) for e, d in zip(g.detections, detections)]
        ok &= np.array([d is None for d in det_diff], dtype=bool)
    if ok.all():
        return n, None
    i = int(np.flatnonzero(~ok)[0])
    if (logits[i] != g.logits[i]).any():
        j = int(np.flatnonzero(logits[i] != g.logits[i])[0])
        return int(ok.sum()), (f"first mismatch: image {i}, layer readout (logits), neuron {j}: "
                               f"expected {int(g.logits[i, j])}, got {int(logits[i, j])}")
    if classes[i] != g.classes[i]:
        return int(ok.sum()), f"first mismatch: image {i}, class: expected {int(g.classes[i])}, got {int(classes[i])}"
    return int(ok.sum()), f"first mismatch: image {i}: {det_diff[i]}"


def compare_qemu(model, fw: Firmware, images: np.ndarray) -> tuple[int, str | None]:
    """The firmware under QEMU against the golden model (logits and class; a detector's detections too):
    matched images and the first mismatch as a line (image, neuron, expected, actual; or image, detection), or None."""
    from runtime import golden

    g = golden.run(model, images, keep_phases=False)
    lq, cq, dq = run_qemu_detections(fw, images, model.num_classes)
    return compare_outputs(g, lq, cq, dq)


@dataclass
class UnicornRun:
    logits: np.ndarray
    classes: np.ndarray
    instructions: list[int]  # per inference (a detector: inference + decode)
    stack_peak_bytes: int
    detections: list | None = None  # a detector: per image int64 (n, 6)
    cycles: list[int] | None = None  # per inference: the Cortex-M4 cycle ESTIMATE (codegen/c/timing.py)


def run_unicorn(fw: Firmware, images: np.ndarray, n_logits: int) -> UnicornRun:
    """Run the ELF under Unicorn; count instructions per inference (between os_mark(1) and os_mark(2);
    a detector's firmware brackets inference and decode)."""
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
    # paint the free RAM below the stack top, never .bss (start-up zeroes it: it would read as stack)
    paint_lo = max(sp - min(64 << 10, ram_size // 2), _round_up(syms.get("_ebss", 0), 4))
    uc.mem_write(paint_lo, b"\xa5" * (sp - paint_lo))
    uc.reg_write(A.UC_ARM_REG_SP, sp)

    files: dict[int, object] = {}
    tmp = tempfile.TemporaryDirectory()
    tdir = Path(tmp.name)
    (tdir / "images.bin").write_bytes(_images_file(images))
    state = {"counting": False, "counts": [], "cycles": [], "exit": None}
    md = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS)
    counter = timing.Counter(md)  # instructions and the Cortex-M4 cycle estimate (codegen/c/timing.py)

    def on_block(uc_, addr, size, _):
        if state["counting"]:
            counter.block(addr, size, bytes(uc_.mem_read(addr, size)))

    def on_mark(uc_, addr, size, _):
        what = uc_.reg_read(A.UC_ARM_REG_R0)
        if what == 1:
            state["counting"] = True
            counter.reset()
        elif what == 2:
            state["counting"] = False
            # the block that called os_mark(2) was counted up to the call: exclude os_mark itself
            state["counts"].append(counter.instructions)
            state["cycles"].append(counter.cycles)

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
    logits, classes, dets = _parse(raw, len(images), n_logits, fw.max_detections)
    return UnicornRun(logits, classes, state["counts"], (sp - paint_lo) - untouched, dets, state["cycles"])


def _round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _symbols(elf: Path) -> dict[str, int]:
    nm = need("arm-none-eabi-nm", "binutils-arm-none-eabi")
    out = run_tool([nm, str(elf)], Path(elf).parent / "nm.log")
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
