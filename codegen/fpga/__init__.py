"""The FPGA backend: ``codegen emit --target fpga`` and its estimate, synthesis and simulation.

The stage, in the order the data flows:

* :mod:`.store` -- where the weights go (``--store``), the lane and FIFO options;
* :mod:`.design` -- the design (``rtl.network.Network``) as Verilog and RTLIL;
* the estimate, before any synthesis: :mod:`.memories` (the memory inventory and where Yosys maps
  each memory), :mod:`.multipliers` (multipliers and DSP blocks), :mod:`.cycles` (cycles per
  inference), :mod:`.fit` (the estimate on a board, the fit check), :mod:`.report` (its text);
* :mod:`.emit` -- the files of the target;
* :mod:`.synth` -- Yosys + nextpnr; :mod:`.sim` and :mod:`.cocotb_bench` -- the cocotb bench that
  checks the design against the golden model under Icarus or Verilator.

The names below are the package's API (``from codegen import fpga; fpga.emit(...)``).
"""
from .cycles import (FIRE_FRAME_OVERHEAD, FIRE_ROW_OVERHEAD, PIXEL_LATENCY, POOL_FRAME_OVERHEAD, POOL_MARKER,
                     READOUT_ROW_OVERHEAD, cycle_estimate, golden_phases, layer_cycles, row_schedule)
from rtl.pins import LOAD_PINS, PINS, pins_verilog

from .design import inspect_network, network, result_bits, rtlil, strip_store_init, verilog
from .emit import emit
from .fit import (FIFO_CANDIDATES, MAX_DESIGN_BITS, check_design_size, check_fit, design_bits, estimate,
                  fit_design, fit_lanes, fits, largest_fitting_lanes, mapping)
from .memories import Mem, elaborated_memories, map_memory, memories, payload_bits, varying_bits, weight_words
from .multipliers import engine_multipliers, mul_dsps, multipliers
from .report import format_text
from .store import (FIFO_DEPTH, MAX_LANES, N_COUNT, STORES, check_fifo_depth, check_lanes, get_board, lanes_text,
                    parse_lanes, ram_refusal, resolve_store, symbol)

__all__ = ["FIFO_CANDIDATES", "FIFO_DEPTH", "FIRE_FRAME_OVERHEAD", "FIRE_ROW_OVERHEAD", "LOAD_PINS", "MAX_DESIGN_BITS", "MAX_LANES",
           "Mem", "N_COUNT", "PINS", "PIXEL_LATENCY", "POOL_FRAME_OVERHEAD", "POOL_MARKER", "READOUT_ROW_OVERHEAD",
           "STORES", "check_design_size",
           "check_fifo_depth", "check_fit", "check_lanes", "cycle_estimate", "design_bits", "elaborated_memories",
           "emit", "engine_multipliers", "estimate", "fit_design", "fit_lanes", "fits", "format_text", "get_board", "golden_phases",
           "inspect_network", "lanes_text", "largest_fitting_lanes", "parse_lanes", "layer_cycles", "row_schedule", "map_memory", "mapping", "memories",
           "mul_dsps", "multipliers", "network", "payload_bits", "pins_verilog", "ram_refusal",
           "resolve_store", "result_bits", "rtlil", "strip_store_init", "symbol", "varying_bits", "verilog",
           "weight_words"]
