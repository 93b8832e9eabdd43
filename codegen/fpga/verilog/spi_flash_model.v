// A simulation model of the board's SPI configuration flash, for the board-top bench
// (codegen/fpga/board_sim.py): READ (0x03, 24-bit address) in SPI mode 0; any other command
// (the release from power-down, 0xAB) is taken and ignored. Like tests/test_rtl_spiflash.py's model
// it looks at the pins once per clock cycle: it samples COPI on a rising SCK and drives the next
// data bit, MSB first, after a falling SCK. Bytes outside the image read 0xFF (erased flash).
// Not synthesisable on purpose: it never goes into a bitstream.
module onespike_spi_flash #(
    parameter integer BASE = 0,           // flash address of the image's first byte
    parameter integer SIZE = 1,           // bytes in the image
    parameter IMAGE = ""                  // $readmemh file of the image, one byte a line
) (
    input  wire clk,
    input  wire cs_n,
    input  wire sck,
    input  wire copi,
    output reg  cipo
);
    reg [7:0] mem [0:SIZE-1];
    initial begin
        if (IMAGE != "") $readmemh(IMAGE, mem);
        cipo = 1'b0;
    end
    reg        prev_sck = 1'b0;
    reg [31:0] bits = 32'd0;
    reg [5:0]  nbits = 6'd0;
    reg [7:0]  cmd = 8'd0;
    reg [23:0] addr = 24'd0;
    reg [2:0]  out_bit = 3'd7;
    wire [7:0] byte_at = (addr >= BASE && addr < BASE + SIZE) ? mem[addr - BASE] : 8'hFF;
    always @(posedge clk) begin
        prev_sck <= sck;
        if (cs_n) begin
            nbits <= 6'd0;
            out_bit <= 3'd7;
        end else begin
            if (sck && !prev_sck && (nbits < 6'd8 || (cmd == 8'h03 && nbits < 6'd32))) begin
                bits <= {bits[30:0], copi};
                nbits <= nbits + 6'd1;
                if (nbits == 6'd7) cmd <= {bits[6:0], copi};
                if (nbits == 6'd31) begin
                    addr <= {bits[22:0], copi};
                    out_bit <= 3'd7;
                end
            end
            if (!sck && prev_sck && cmd == 8'h03 && nbits == 6'd32) begin
                cipo <= byte_at[out_bit];
                if (out_bit == 3'd0) addr <= addr + 24'd1;
                out_bit <= out_bit - 3'd1;
            end
        end
    end
endmodule
