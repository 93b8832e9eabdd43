"""What a board is described by: :class:`McuBoard` (a microcontroller: CPU flags, flash and RAM, the
memory map of its linker script, the QEMU machine that emulates it) and :class:`FpgaBoard` (an FPGA:
its device's resources and the Yosys/nextpnr invocation).

The block-RAM description of an FPGA board (``bram_configs``, ``bram_cost``, ``lutram``,
``logic_cost_*``) follows Yosys's own memory library files (``share/yosys/ice40/brams.txt``,
``ecp5/brams.txt``, ``ecp5/lutrams.txt``) and the default soft-logic costs of ``memory_libmap``, so
that :mod:`codegen.fpga.memories` can predict where each memory of the design goes before synthesis.
The boards themselves are listed in :mod:`boards.registry`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MCU_DIR = Path(__file__).resolve().parent / "mcu"


@dataclass(frozen=True)
class McuBoard:
    """A microcontroller board: its CPU flags, flash and RAM, memory map and the QEMU machine, if any."""

    kind = "mcu"   # (a class attribute, not a field)
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


@dataclass(frozen=True)
class FpgaBoard:
    """An FPGA board: its device's resources and how Yosys and nextpnr are run for it."""

    kind = "fpga"  # (a class attribute, not a field)
    name: str
    description: str
    family: str                     # "ice40" | "ecp5"
    device: str                     # short device name used on the command line
    part: str                       # vendor part number
    package: str                    # nextpnr package name
    clock_mhz: float                # board oscillator (the nextpnr target frequency)
    luts: int                       # LUT4
    ffs: int
    io: int                         # user I/O pins of the package
    bram_name: str
    bram_count: int
    bram_bits: int                  # bits per block (incl. parity bits)
    # (depth, width) shapes of one block in simple-dual-port use (one read and one write port);
    # ECP5's 512x36 is the PDPW16KD mode of the same DP16KD block.
    bram_configs: tuple[tuple[int, int], ...]
    bram_cost: float                # Yosys memory_libmap cost of one block
    bram_byte: int                  # write-enable granularity Yosys pads RAM words to (ROMs: 1)
    dsp_name: str
    dsp_count: int
    dsp_a_max: int                  # widest operands of one DSP multiplier (mul2dsp)
    dsp_b_max: int
    dsp_y_min: int                  # narrower products stay in LUTs (mul2dsp DSP_Y_MINWIDTH)
    spram_name: str | None = None
    spram_count: int = 0
    spram_bits: int = 0
    spram_shape: tuple[int, int] | None = None      # (depth, width) of one SPRAM block
    lutram: tuple[int, int, float] | None = None   # (depth, width, cost) of one distributed-RAM cell
    lutram_name: str | None = None
    logic_cost_rom: float = 1 / 16  # Yosys memory_libmap defaults: cost per bit left to soft logic
    logic_cost_ram: float = 1.0
    yosys_synth: str = ""           # the Yosys synthesis command (the top is appended)
    # Yosys commands run before synthesis. iCE40: delete the all-zero initialiser Amaranth writes for
    # the RAM weight stores (memories named spram_store), else Yosys cannot map them to SPRAM (which
    # has no initial contents); a design without such a memory selects nothing.
    yosys_prepare: tuple[str, ...] = ()
    nextpnr: str = ""               # nextpnr binary
    nextpnr_args: tuple[str, ...] = ()

    @property
    def bram_total_bits(self) -> int:
        return self.bram_count * self.bram_bits

    @property
    def spram_total_bits(self) -> int:
        return self.spram_count * self.spram_bits

    def nextpnr_command(self, json_path: str, report_path: str, log_path: str, freq_mhz: float | None = None,
                        seed: int = 1) -> list[str]:
        """nextpnr arguments: place and route ``json_path``, write the JSON ``--report``."""
        freq = self.clock_mhz if freq_mhz is None else freq_mhz
        return [self.nextpnr, *self.nextpnr_args, "--json", json_path, "--freq", f"{freq:g}", "--seed", str(seed),
                "--timing-allow-fail", "--report", report_path, "-l", log_path]

    def summary(self) -> dict:
        return {
            "name": self.name, "description": self.description, "family": self.family, "device": self.device,
            "part": self.part, "package": self.package, "clock_mhz": self.clock_mhz, "luts": self.luts, "ffs": self.ffs,
            "io": self.io, "bram": {"cell": self.bram_name, "count": self.bram_count, "bits_each": self.bram_bits},
            "spram": {"cell": self.spram_name, "count": self.spram_count, "bits_each": self.spram_bits,
                      "shape": None if self.spram_shape is None else f"{self.spram_shape[0]}x{self.spram_shape[1]}"},
            "dsp": {"cell": self.dsp_name, "count": self.dsp_count, "operands": f"{self.dsp_a_max}x{self.dsp_b_max}"},
            "lutram": None if self.lutram is None else {"cell": self.lutram_name, "depth": self.lutram[0],
                                                        "width": self.lutram[1]},
        }
