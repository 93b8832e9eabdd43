"""cocotb benches run inside a Verilog simulator by ``codegen.fpga_sim`` (see docs/fpga-verify.md)."""
