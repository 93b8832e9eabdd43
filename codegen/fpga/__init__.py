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
import importlib

_API = {  # name -> module (imported on first use: the cocotb bench, a submodule, stays light)
    "FIFO_DEPTH": ".store",
    "FIRE_DRAIN_OVERHEAD": ".cycles",
    "LOAD_PINS": "rtl.pins",
    "MAX_DESIGN_BITS": ".fit",
    "MAX_LANES": ".store",
    "Mem": ".memories",
    "N_COUNT": ".store",
    "PINS": "rtl.pins",
    "PIXEL_LATENCY": ".cycles",
    "POOL_DRAIN_OVERHEAD": ".cycles",
    "READOUT_DRAIN_OVERHEAD": ".cycles",
    "STORES": ".store",
    "check_design_size": ".fit",
    "check_fifo_depth": ".store",
    "check_fit": ".fit",
    "check_lanes": ".store",
    "cycle_estimate": ".cycles",
    "design_bits": ".fit",
    "elaborated_memories": ".memories",
    "emit": ".emit",
    "engine_multipliers": ".multipliers",
    "estimate": ".fit",
    "fits": ".fit",
    "format_text": ".report",
    "get_board": ".store",
    "golden_phases": ".cycles",
    "inspect_network": ".design",
    "largest_fitting_lanes": ".fit",
    "layer_cycles": ".cycles",
    "map_memory": ".memories",
    "mapping": ".fit",
    "memories": ".memories",
    "mul_dsps": ".multipliers",
    "multipliers": ".multipliers",
    "network": ".design",
    "payload_bits": ".memories",
    "pins_verilog": "rtl.pins",
    "pixel_stream_end": ".cycles",
    "ram_refusal": ".store",
    "resolve_store": ".store",
    "result_bits": ".design",
    "rtlil": ".design",
    "strip_store_init": ".design",
    "symbol": ".store",
    "varying_bits": ".memories",
    "verilog": ".design",
    "weight_words": ".memories",
}

__all__ = ["FIFO_DEPTH", "FIRE_DRAIN_OVERHEAD", "LOAD_PINS", "MAX_DESIGN_BITS", "MAX_LANES", "Mem", "N_COUNT", "PINS",
           "PIXEL_LATENCY", "POOL_DRAIN_OVERHEAD", "READOUT_DRAIN_OVERHEAD", "STORES", "check_design_size",
           "check_fifo_depth", "check_fit", "check_lanes", "cycle_estimate", "design_bits", "elaborated_memories",
           "emit", "engine_multipliers", "estimate", "fits", "format_text", "get_board", "golden_phases",
           "inspect_network", "largest_fitting_lanes", "layer_cycles", "map_memory", "mapping", "memories",
           "mul_dsps", "multipliers", "network", "payload_bits", "pins_verilog", "pixel_stream_end", "ram_refusal",
           "resolve_store", "result_bits", "rtlil", "strip_store_init", "symbol", "varying_bits", "verilog",
           "weight_words"]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    mod = _API[name]
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
