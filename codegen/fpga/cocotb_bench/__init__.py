"""cocotb benches run inside a Verilog simulator by ``codegen.fpga.sim`` (see docs/fpga-verify.md)."""
