"""The few-pin wrapper (rtl.pins): ResultSerialiser in amaranth.sim against a cycle model, the
ports of the generated ``<sym>_pins`` Verilog, and the wrapper under Icarus around a stub network."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Module

from rtl.pins import LOAD_PINS, PINS, PinWrapper, ResultSerialiser, pins_verilog
from conftest import refused
from rtl.sim import make_simulator, run_bounded, stream_get, stream_put

WIDTHS = [1, 8, 9, 17, 44, 130]


def serialiser_top(payload_bits: int):
    """A :class:`ResultSerialiser` in a module with an explicit ``sync`` domain, so a testbench can
    drive the domain's reset (the serialiser holds ``shift`` on that reset)."""
    m = Module()
    m.domains.sync = cd = ClockDomain("sync")
    m.submodules.ser = ser = ResultSerialiser(payload_bits)
    return m, ser, cd.rst


class SerialiserModel:
    """The old hand-written wrapper's always block, one clock edge per :meth:`step`."""

    def __init__(self, payload_bits):
        self.nb = -(-payload_bits // 8)
        self.mask = (1 << max(1, (self.nb - 1).bit_length())) - 1
        self.busy, self.count, self.shift = 0, 0, 0     # Amaranth's initial values

    def outputs(self):
        """(i.ready, o.valid, o.data, o.last)"""
        return (1 - self.busy, self.busy, self.shift & 0xFF, int(self.count == self.nb - 1))

    def step(self, rst, i_valid, i_payload, o_ready):
        if rst:
            self.busy, self.count = 0, 0
        elif not self.busy:
            if i_valid:
                self.shift, self.busy, self.count = i_payload, 1, 0
        elif o_ready:
            if self.count == self.nb - 1:
                self.busy = 0
            self.shift >>= 8
            self.count = (self.count + 1) & self.mask


@pytest.mark.parametrize("payload_bits", WIDTHS)
def test_serialiser_cycle_exact(payload_bits):
    """Random (protocol-free) inputs, random back-pressure and random resets: every output in every
    cycle equals the cycle model of the old Verilog."""
    top, ser, rst = serialiser_top(payload_bits)
    model = SerialiserModel(payload_bits)
    rng = np.random.default_rng(payload_bits)
    cycles = 1500
    seen = {"cycles": 0, "words": 0, "bytes": 0, "resets": 0, "mid_word_resets": 0}
    errors = []     # recorded, not raised inside the simulator

    def rand_word():
        return int.from_bytes(rng.bytes(-(-payload_bits // 8)), "little") & ((1 << payload_bits) - 1)

    async def drive(ctx):
        for _ in range(cycles):
            ctx.set(rst, int(rng.random() < 0.03))
            ctx.set(ser.i.valid, int(rng.random() < 0.4))
            ctx.set(ser.i.payload, rand_word())
            ctx.set(ser.o.ready, int(rng.random() < 0.7))
            await ctx.tick()

    async def check(ctx):
        sampled = (rst, ser.i.valid, ser.i.payload, ser.i.ready, ser.o.valid, ser.o.ready, ser.o.payload)
        async for _, _, r, i_valid, i_payload, i_ready, o_valid, o_ready, o_payload in ctx.tick().sample(*sampled):
            got = (int(i_ready), int(o_valid), int(o_payload.data), int(o_payload.last))
            if got != model.outputs() and len(errors) < 5:
                errors.append(f"cycle {seen['cycles']}: (i.ready, o.valid, data, last) {got}, "
                              f"expected {model.outputs()}")
            seen["cycles"] += 1
            seen["words"] += int(i_valid and i_ready and not r)
            seen["bytes"] += int(o_valid and o_ready and not r)
            seen["resets"] += int(r)
            seen["mid_word_resets"] += int(r and o_valid)
            model.step(int(r), int(i_valid), int(i_payload), int(o_ready))

    sim = make_simulator(top)
    sim.add_testbench(drive)
    sim.add_process(check)
    run_bounded(sim, cycles + 10)
    assert not errors
    assert seen["cycles"] >= cycles - 1
    # The run exercised loads, bytes and resets, some of them in the middle of a word.
    assert seen["words"] > 20 and seen["bytes"] > 20 and seen["resets"] > 10
    assert seen["mid_word_resets"] > 2 or model.nb == 1


@pytest.mark.parametrize("payload_bits", [1, 9, 44, 130])
def test_serialiser_stream(payload_bits):
    """Words sent with gaps come back as nb bytes each, least significant first, ``last`` on exactly the
    final one; ``i.ready`` is low whenever a byte is offered. A reset in the middle of a word drops
    the rest of it, and the next word leaves whole."""
    top, ser, rst = serialiser_top(payload_bits)
    nb = -(-payload_bits // 8)
    rng = np.random.default_rng(100 + payload_bits)
    words = [int.from_bytes(rng.bytes(nb), "little") & ((1 << payload_bits) - 1) for _ in range(40)]
    words[:3] = [(1 << payload_bits) - 1, 0, 1]      # extremes: all ones (the pad stays 0), zero, one
    got, busy_violations = [], []

    async def produce(ctx):
        for w in words:
            await stream_put(ctx, ser.i, w, rng, 0.3)

    async def consume(ctx):
        for _ in words:
            bs, last = [], 0
            while not last:
                p = await stream_get(ctx, ser.o, rng, 0.4)
                bs.append(int(p.data))
                last = int(p.last) or len(bs) > nb    # a missing last: stop, the length check fails
            got.append(bs)

    async def watch(ctx):
        async for _, _, i_ready, o_valid in ctx.tick().sample(ser.i.ready, ser.o.valid):
            if i_ready == o_valid:
                busy_violations.append((int(i_ready), int(o_valid)))

    sim = make_simulator(top)
    sim.add_testbench(produce)
    sim.add_testbench(consume)
    sim.add_process(watch)
    run_bounded(sim, 60 * nb * len(words), lambda: len(got) == len(words))
    assert not busy_violations
    assert all(len(bs) == nb for bs in got)
    assert [int.from_bytes(bytes(bs), "little") for bs in got] == words

    # Reset in the middle of a word (nb > 2: after one byte), then a fresh word.
    if nb < 3:
        return
    top, ser, rst = serialiser_top(payload_bits)
    first, second = words[3], words[4]
    out, idle = [], []

    async def bench(ctx):
        await stream_put(ctx, ser.i, first)
        out.append(int((await stream_get(ctx, ser.o)).data))
        ctx.set(rst, 1)
        await ctx.tick()
        ctx.set(rst, 0)
        idle.append((ctx.get(ser.o.valid), ctx.get(ser.i.ready), ctx.get(ser.o.payload.last)))
        await stream_put(ctx, ser.i, second)
        for _ in range(nb):
            p = await stream_get(ctx, ser.o)
            out.append((int(p.data), int(p.last)))
        await ctx.tick()
        idle.append((ctx.get(ser.o.valid), ctx.get(ser.i.ready), ctx.get(ser.o.payload.last)))

    sim = make_simulator(top)
    sim.add_testbench(bench)
    run_bounded(sim, 20 * nb)
    assert idle == [(0, 1, 0), (0, 1, 0)]      # after reset, after the word: idle, ready, count 0 / nb
    assert out[0] == first & 0xFF
    assert out[1:] == [((second >> (8 * k)) & 0xFF, int(k == nb - 1)) for k in range(nb)]


def test_rejects_bad_arguments():
    for bad in (0, -3, 2.0, True, "8"):
        refused(ResultSerialiser, bad, match=r"^Payload width must be a positive integer, not ")
        refused(PinWrapper, "net", bad, match=r"^Payload width must be a positive integer, not ")
    for bad in ("not-an-identifier", "", "9net", 7):
        refused(PinWrapper, bad, 8, match=r"^Network module name must be a Verilog identifier, not ")


# ------------------------------------------------------------------------------------ Verilog

PORTS = {"clk": ("input", 1), "rst": ("input", 1), "pix": ("input", 8), "pix_valid": ("input", 1),
         "pix_ready": ("output", 1), "res": ("output", 8), "res_valid": ("output", 1),
         "res_ready": ("input", 1), "res_last": ("output", 1)}
LD_PORTS = {"ld": ("input", 8), "ld_valid": ("input", 1), "ld_ready": ("output", 1), "loaded": ("output", 1)}


def module_text(v: str, name: str) -> str:
    m = re.search(rf"^module {re.escape(name)}\s*\((.*?)^endmodule", v, re.M | re.S)
    assert m, f"no module {name}"
    return m.group(0)


def module_ports(v: str, name: str) -> dict:
    """``{port: (direction, width)}`` of module ``name`` (port list plus its declarations)."""
    body = module_text(v, name)
    names = [p.strip() for p in re.match(r"module \S+\s*\(([^)]*)\);", body).group(1).split(",")]
    ports = {}
    for n in names:
        d = re.search(rf"^\s*(input|output)\s*(?:\[(\d+):0\])?\s*{re.escape(n)}\s*;", body, re.M)
        assert d, f"no declaration of port {n}"
        ports[n] = (d.group(1), int(d.group(2)) + 1 if d.group(2) else 1)
    return ports


def instance_connections(v: str, top: str, sym: str) -> dict:
    """``{network port: connected expression}`` of the instance of ``sym`` inside ``top``."""
    body = module_text(v, top)
    m = re.search(rf"^\s*{re.escape(sym)}\s+(\S+)\s*\((.*?)\);", body, re.M | re.S)
    assert m, f"no instance of {sym} in {top}"
    return dict(re.findall(r"\.(\w+)\(([^()]*)\)", m.group(2)))


@pytest.mark.parametrize("payload_bits,load", [(44, False), (44, True), (8, False), (9, False), (130, True)])
def test_pins_verilog_ports(payload_bits, load):
    v = pins_verilog("net", payload_bits, load)
    assert v == pins_verilog("net", payload_bits, load)          # deterministic
    want = {**PORTS, **(LD_PORTS if load else {})}
    assert module_ports(v, "net_pins") == want
    assert sum(w for _, w in want.values()) == PINS + (LOAD_PINS if load else 0)
    # The network is a black box instantiated by name, with named port connections.
    assert not re.search(r"^module net\s*\(", v, re.M)
    conn = instance_connections(v, "net_pins", "net")
    net_ports = {"clk", "rst", "i__payload", "i__valid", "i__ready", "o__payload", "o__valid", "o__ready"}
    if load:
        net_ports |= {"load__payload", "load__valid", "load__ready", "loaded"}
    assert set(conn) == net_ports
    assert {k: conn[k] for k in ("clk", "rst", "i__payload", "i__valid", "i__ready")} == {
        "clk": "clk", "rst": "rst", "i__payload": "pix", "i__valid": "pix_valid", "i__ready": "pix_ready"}
    if load:
        assert {k: conn[k] for k in ("load__payload", "load__valid", "load__ready", "loaded")} == {
            "load__payload": "ld", "load__valid": "ld_valid", "load__ready": "ld_ready", "loaded": "loaded"}
    # o__payload lands on a wire of the payload width.
    body = module_text(v, "net_pins")
    w = re.search(rf"^\s*wire\s*(?:\[(\d+):0\])?\s*{re.escape(conn['o__payload'])}\s*;", body, re.M)
    assert w and (int(w.group(1)) + 1 if w.group(1) else 1) == payload_bits
    # Header comment.
    nb = -(-payload_bits // 8)
    head = v.split("/* Generated by Amaranth")[0]
    assert head.startswith("// Generated by onespike codegen (fpga target). Do not edit.\n")
    assert f"net_pins: net with {PINS + (LOAD_PINS if load else 0)} pins" in head
    assert f"{payload_bits} bits) leaves as {nb} bytes, least significant first" in head and "res_last" in head
    assert ("ld/ld_valid/ld_ready" in head and "loaded goes high" in head) == load
    assert "src =" not in v


def test_pins_verilog_differs_by_argument():
    a = pins_verilog("net", 44)
    assert pins_verilog("net", 45) != a and pins_verilog("net", 44, True) != a
    assert re.search(r"^module other_pins\s*\(", pins_verilog("other", 44), re.M)


# ------------------------------------------------------------------------------------ Icarus

STUB = """module net(input clk, input rst, input [7:0] i__payload, input i__valid, output i__ready,
  output [{hi}:0] o__payload, output o__valid, input o__ready{ld_ports});
  // Offers word k = {{k * 0x9E3779B97F4A7C15 mod 2^64, repeated}}[{hi}:0] when ``go``, holding it until
  // taken, and logs every word it hands over. Pass-through pins answer as functions of their inputs.
  reg [63:0] k = 0;
  reg [7:0] gap = 0;
  wire go = gap[1:0] != 0;
  wire [63:0] h = k * 64'h9E3779B97F4A7C15;
  assign o__payload = {{4{{h}}}};
  assign o__valid = go && k < {n};
  assign i__ready = i__valid ^ i__payload[0];
  {ld_assign}
  integer f;
  initial f = $fopen("words.txt", "w");
  always @(posedge clk) begin
    gap <= gap * 5 + 3;
    if (!rst && o__valid && o__ready) begin
      $fwrite(f, "%0h\\n", o__payload);
      k <= k + 1;
    end
  end
endmodule
"""

TB = """`timescale 1ns/1ps
module tb;
  reg clk = 0, rst = 1, res_ready = 0, pix_valid = 0, ld_valid = 0;
  reg [7:0] pix = 0, ld = 0;
  wire [7:0] res;
  wire res_valid, res_last, pix_ready, ld_ready, loaded;
  integer f, t, cyc = 0, bad = 0;
  net_pins dut(.clk(clk), .rst(rst), {ld_conn} .pix(pix), .pix_valid(pix_valid), .pix_ready(pix_ready),
               .res(res), .res_valid(res_valid), .res_ready(res_ready), .res_last(res_last));
  always #5 clk = ~clk;
  initial begin f = $fopen("bytes.txt", "w"); t = $fopen("trace.txt", "w"); end
  always @(negedge clk) begin   // new inputs, then what the next rising edge will see
    rst = cyc < 2 || cyc % {period} == 0;
    res_ready = ($random & 3) != 0;
    pix = $random; pix_valid = $random; ld = $random; ld_valid = $random;
    #1;
    if (pix_ready !== (pix_valid ^ pix[0])) bad = bad + 1;
    {ld_check}
    // per cycle: rst, the network's o stream as it sees it, res_ready; the wrapper's outputs
    $fwrite(t, "%0d %0d %0h %0d %0d %0d %0h %0d\\n", rst, dut.net.o__valid, dut.net.o__payload, dut.net.o__ready,
            res_ready, res_valid, res, res_last);
    if (rst) $fwrite(f, "R\\n");   // a reset ends the word being sent
    else if (res_valid && res_ready) $fwrite(f, "%02h%s", res, res_last ? "\\n" : " ");
    cyc = cyc + 1;
    if ((dut.net.k == {n} && !res_valid) || cyc > 20000) begin
      $fwrite(f, "bad %0d\\n", bad); $fclose(f); $fclose(t); $finish;
    end
  end
endmodule
"""


@pytest.mark.skipif(shutil.which("iverilog") is None or shutil.which("vvp") is None, reason="needs Icarus Verilog")
@pytest.mark.parametrize("payload_bits,load", [(44, True), (1, False), (9, False), (178, False)])
def test_pins_verilog_icarus(tmp_path, payload_bits, load):
    """The generated wrapper (default iverilog flags, as the golden-model test) around a stub network,
    with random back-pressure and resets: in every cycle ``res``, ``res_valid``, ``res_last`` and the
    network's ``o__ready`` equal the cycle model of the old wrapper; every word the stub hands over
    leaves as nb bytes, LSB first, ``res_last`` on the final one (a reset may cut a word short); the
    pass-through pins are wired the right way round."""
    n = 60
    nb = -(-payload_bits // 8)
    (tmp_path / "net_pins.v").write_text(pins_verilog("net", payload_bits, load))
    ld_ports = ",\n  input [7:0] load__payload, input load__valid, output load__ready, output loaded" if load else ""
    ld_assign = "assign load__ready = load__valid ^ load__payload[1]; assign loaded = load__payload[2];" if load else ""
    (tmp_path / "stub.v").write_text(STUB.format(hi=payload_bits - 1, n=n, ld_ports=ld_ports, ld_assign=ld_assign))
    ld_conn = ".ld(ld), .ld_valid(ld_valid), .ld_ready(ld_ready), .loaded(loaded)," if load else ""
    ld_check = ("if (ld_ready !== (ld_valid ^ ld[1]) || loaded !== ld[2]) bad = bad + 1;" if load else "")
    period = max(29, 8 * nb) + 1        # cycles between resets: a few words apart
    (tmp_path / "tb.v").write_text(TB.format(n=n, ld_conn=ld_conn, ld_check=ld_check, period=period))
    subprocess.run(["iverilog", "-o", "sim", "tb.v", "stub.v", "net_pins.v"], cwd=tmp_path, check=True,
                   capture_output=True)
    subprocess.run(["vvp", "-n", "sim"], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    *rows, tail = (tmp_path / "bytes.txt").read_text().splitlines()
    assert tail == "bad 0"

    model = SerialiserModel(payload_bits)
    trace = [line.split() for line in (tmp_path / "trace.txt").read_text().splitlines()]
    resets = 0
    for c, (r, o_valid, o_payload, o_ready, res_ready, res_valid, res, res_last) in enumerate(trace):
        r, o_valid, o_ready, res_ready, res_valid, res_last = map(int, (r, o_valid, o_ready, res_ready, res_valid,
                                                                        res_last))
        want_ready, want_valid, want_res, want_last = model.outputs()
        assert (o_ready, res_valid, int(res, 16), res_last) == (want_ready, want_valid, want_res, want_last), c
        resets += r and c > 1
        model.step(r, o_valid, int(o_payload, 16), res_ready)
    assert resets >= 3 and len(trace) > 100

    # Word level: the words handed over, each cut short only by a reset.
    words = [int(w, 16) for w in (tmp_path / "words.txt").read_text().split()]
    mask = (1 << payload_bits) - 1
    assert words == [sum(((k * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)) << (64 * j) for j in range(4)) & mask
                     for k in range(len(words))]
    assert all(row.endswith("R") or len(row.split()) == nb for row in rows)
    whole = [int.from_bytes(bytes(int(t, 16) for t in row.split()), "little") for row in rows if not row.endswith("R")]
    assert len(whole) > n // 2 and set(whole) <= set(words)
