"""SpiFlashReader against a behavioural SPI NOR flash model (mode 0: 0xAB wake-up, 0x03 read)."""
import numpy as np
import pytest

from enginebench import WithReset
from rtl.spiflash import SpiFlashReader
from rtl.sim import make_simulator, run_bounded, stream_get


def flash_model(dut, memory, log):
    """A flash: samples copi on SCK rising edges, drives cipo after falling edges, resets on CS high."""
    async def process(ctx):
        prev_sck, prev_cs = 0, 1
        bits, nbits, cmd, addr, out_bit = 0, 0, None, 0, 7
        async for _, _, cs_n, sck, copi in ctx.tick().sample(dut.cs_n, dut.sck, dut.copi):
            if cs_n:
                if not prev_cs and cmd is not None:
                    log.append(("end", cmd))
                bits, nbits, cmd, addr = 0, 0, None, 0
            elif prev_cs:
                log.append(("select",))
            if not cs_n and sck and not prev_sck:                 # rising edge: the flash samples
                if cmd is None or (cmd == 0x03 and nbits < 32):
                    bits, nbits = (bits << 1) | copi, nbits + 1
                    if nbits == 8:
                        cmd = bits & 0xFF
                        log.append(("cmd", cmd))
                    elif cmd == 0x03 and nbits == 32:
                        addr, out_bit = bits & 0xFFFFFF, 7
                        log.append(("addr", addr))
            if not cs_n and not sck and prev_sck and cmd == 0x03 and nbits >= 32:   # falling edge: drive
                ctx.set(dut.cipo, (memory[addr] >> out_bit) & 1)
                if out_bit == 0:
                    addr, out_bit = addr + 1, 7
                else:
                    out_bit -= 1
            prev_sck, prev_cs = sck, cs_n
    return process


@pytest.mark.parametrize("div,stall", [(1, 0.0), (1, 0.5), (3, 0.3)])
def test_reads_the_block_at_the_offset(div, stall):
    rng = np.random.default_rng(div)
    memory = {a: int(v) for a, v in zip(range(0x1000, 0x1100), rng.integers(0, 256, 256))}
    n = 37
    dut = SpiFlashReader(n, offset=0x1003, div=div, wake_cycles=10)
    log, got, state = [], [], {}

    async def sink(ctx):
        for _ in range(n):
            got.append(int(await stream_get(ctx, dut.o, rng, stall)))
        for _ in range(20):
            await ctx.tick()
        state["done"], state["cs_n"] = ctx.get(dut.done), ctx.get(dut.cs_n)

    sim = make_simulator(dut)
    sim.add_process(flash_model(dut, memory, log))
    sim.add_testbench(sink)
    run_bounded(sim, 50_000, lambda: "done" in state)
    assert got == [memory[0x1003 + i] for i in range(n)]
    assert [e for e in log if e[0] in ("cmd", "addr")] == [("cmd", 0xAB), ("cmd", 0x03), ("addr", 0x1003)]
    assert state == {"done": 1, "cs_n": 1}


def test_reset_during_the_read_starts_over_and_after_it_reads_nothing():
    memory = {a: (a * 7) & 0xFF for a in range(0, 64)}
    n = 16
    dut = SpiFlashReader(n, offset=4, div=1, wake_cycles=4)
    top = WithReset(dut)
    log, got = [], []

    async def pulse(ctx):
        ctx.set(top.cd.rst, 1)
        await ctx.tick()
        ctx.set(top.cd.rst, 0)

    async def bench(ctx):
        for _ in range(5):
            got.append(int(await stream_get(ctx, dut.o)))
        await pulse(ctx)
        got.clear()
        for _ in range(n):
            got.append(int(await stream_get(ctx, dut.o)))
        for _ in range(10):
            await ctx.tick()
        await pulse(ctx)
        for _ in range(200):
            await ctx.tick()
            assert ctx.get(dut.cs_n) == 1 and ctx.get(dut.o.valid) == 0

    sim = make_simulator(top)
    sim.add_process(flash_model(dut, memory, log))
    sim.add_testbench(bench)
    run_bounded(sim, 20_000)
    assert got == [memory[4 + i] for i in range(n)]
    assert [e for e in log if e[0] == "cmd"] == [("cmd", 0xAB), ("cmd", 0x03)] * 2


def test_bad_parameters():
    with pytest.raises(ValueError, match="Length must be"):
        SpiFlashReader(0)
    with pytest.raises(ValueError, match="beyond the 16 MiB"):
        SpiFlashReader(100, offset=(1 << 24) - 10)
