"""Board definitions. MCU boards: linker-script memory maps and start-up code under boards/mcu/;
FPGA boards (device resources, Yosys/nextpnr arguments): boards/fpga.py."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MCU_DIR = Path(__file__).resolve().parent / "mcu"


@dataclass(frozen=True)
class McuBoard:
    name: str
    description: str
    cpu_flags: tuple[str, ...]
    flash_bytes: int
    ram_bytes: int
    qemu_machine: str | None  # runs under qemu-system-arm -M <machine>
    flash_origin: int
    ram_origin: int

    @property
    def folder(self) -> Path:
        return MCU_DIR / self.name


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
