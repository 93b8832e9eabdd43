"""UartTx / UartRx / Uart (rtl.uart) in amaranth.sim against a reference waveform and a bit-banger."""
import bisect
import math
from types import SimpleNamespace

import numpy as np
import pytest
from amaranth import Elaboratable, Module

from rtl.sim import make_simulator, run_bounded
from rtl.uart import Uart, UartRx, UartTx, baud_error, divisor_for

from conftest import refused


def frame_bits(byte, stop=1):
    """8N1: start bit, 8 data bits LSB first, stop bit."""
    return [0] + [(byte >> k) & 1 for k in range(8)] + [stop]


def assert_same_wave(got, ref):
    """The two line waveforms are equal cycle for cycle (naming the first differing cycle)."""
    assert len(got) == len(ref), (len(got), len(ref))
    bad = [c for c, (g, r) in enumerate(zip(got, ref)) if g != r]
    assert not bad, f"line differs from the reference at cycles {bad[:8]}"


def assert_bytes(got, expected):
    """The received bytes (ignoring their cycles) are ``expected``."""
    assert [b for _, b in got] == list(expected)


# ---------------------------------------------------------------------------------------- TX

def run_tx(schedule, d, n_cycles):
    """Offer each ``(byte, earliest_cycle)`` on ``i`` from that cycle on (``valid`` held until
    taken); return the ``tx`` level of every cycle and the cycles in which bytes were taken."""
    dut = UartTx(d)
    trace, accepts = [], []

    async def bench(ctx):
        k = 0
        for c in range(n_cycles):
            offer = k < len(schedule) and c >= schedule[k][1]
            ctx.set(dut.i.valid, offer)
            if offer:
                ctx.set(dut.i.payload, schedule[k][0])
            _, _, tx, ready = await ctx.tick().sample(dut.tx, dut.i.ready)
            trace.append(int(tx))
            if offer and ready:
                accepts.append(c)
                k += 1

    sim = make_simulator(dut)
    sim.add_testbench(bench)
    run_bounded(sim, n_cycles + 10)
    return trace, accepts


def tx_reference(schedule, d, n_cycles):
    """The cycles the bytes must be taken in and the line they must make: idle high, a byte taken
    in cycle ``a`` on the line in cycles ``a + 1 .. a + 10 d``, the next taken in its last one."""
    accepts, ref = [], [1] * n_cycles
    for byte, earliest in schedule:
        a = earliest if not accepts else max(earliest, accepts[-1] + 10 * d)
        accepts.append(a)
        for j, bit in enumerate(b for b in frame_bits(byte) for _ in range(d)):
            if a + 1 + j < n_cycles:
                ref[a + 1 + j] = bit
    return accepts, ref


@pytest.mark.parametrize("d", [4, 5, 16])
def test_tx_back_to_back_matches_the_reference_waveform(d):
    data = [0x00, 0xFF, 0x55, 0xAA, 0x01, 0x80, 0x3C, 0xC3]
    schedule = [(b, 3) for b in data]               # all offered from cycle 3: back to back
    n = 3 + 10 * d * len(data) + 2 * d
    trace, accepts = run_tx(schedule, d, n)
    ref_accepts, ref = tx_reference(schedule, d, n)
    assert accepts == ref_accepts == [3 + 10 * d * k for k in range(len(data))]
    assert_same_wave(trace, ref)


def test_tx_with_gaps_matches_the_reference_waveform():
    d = 6
    rng = np.random.default_rng(1)
    schedule, t = [], 0
    for b in rng.integers(0, 256, 12):
        t += int(rng.integers(0, 25 * d))      # sometimes before the previous byte is out
        schedule.append((int(b), t))
    n = t + 10 * d * len(schedule) + 3 * d
    trace, accepts = run_tx(schedule, d, n)
    ref_accepts, ref = tx_reference(schedule, d, n)
    assert accepts == ref_accepts
    assert any(a > e for a, (_, e) in zip(accepts, schedule))   # some byte waited
    assert any(a == e for a, (_, e) in zip(accepts[1:], schedule[1:]))  # some found it idle
    assert_same_wave(trace, ref)


# ---------------------------------------------------------------------------------------- RX

def bitbang(frames, d, rate=1.0, lead=5, idle_bits=0.0, tail_bits=3.0):
    """The ``rx`` level of every cycle for ``frames`` (bytes, or lists of bit levels) sent with bit
    period ``d / rate`` cycles (``rate`` > 1: a fast sender), ``idle_bits`` of idle line after
    each frame. A cycle gets the level the line has at its start. Returns the waveform and the
    first cycle of each frame's start bit and stop bit."""
    T = d / rate
    times, levels, starts, stops = [0.0], [1], [], []
    t = float(lead)
    for f in frames:
        bits = f if isinstance(f, list) else frame_bits(f)
        starts.append(math.ceil(t))
        for k, b in enumerate(bits):
            if k == 9:
                stops.append(math.ceil(t))
            times.append(t)
            levels.append(b)
            t += T
        times.append(t)
        levels.append(1)
        t += idle_bits * T
    n = math.ceil(t + tail_bits * T)
    wave = [levels[bisect.bisect_right(times, c) - 1] for c in range(n)]
    return wave, starts, stops


def run_rx(wave, d, ready=lambda c: True, error_bits=4):
    """Drive ``rx`` with ``wave`` (and ``o.ready`` with ``ready(cycle)``); record the bytes taken
    ``(cycle, byte)``, the cycles of ``error`` and ``overrun`` pulses, the final ``errors``, and
    whether ``o`` kept every untaken byte (valid held, payload stable)."""
    dut = UartRx(d, error_bits=error_bits)
    res = SimpleNamespace(got=[], error=[], overrun=[], errors=None, first_valid=[], held=True)

    async def bench(ctx):
        prev = None                         # (valid, ready, payload) of the previous cycle
        for c, level in enumerate(wave):
            r = bool(ready(c))
            ctx.set(dut.rx, level)
            ctx.set(dut.o.ready, r)
            _, _, valid, payload, err, ovr = await ctx.tick().sample(
                dut.o.valid, dut.o.payload, dut.error, dut.overrun)
            valid, payload = int(valid), int(payload)
            if valid and r:
                res.got.append((c, payload))
            if valid and not (prev and prev[0]):
                res.first_valid.append(c)
            if prev and prev[0] and not prev[1] and (not valid or payload != prev[2]):
                res.held = False
            if err:
                res.error.append(c)
            if ovr:
                res.overrun.append(c)
            prev = (valid, r, payload)
        res.errors = ctx.get(dut.errors)

    sim = make_simulator(dut)
    sim.add_testbench(bench)
    run_bounded(sim, len(wave) + 10)
    return res


def latency(d):
    """Cycles from the first cycle of a stop bit on the pin to ``o.valid`` (rtl.uart: ``s + 3``)."""
    return (d - 1) // 2 + 3


@pytest.mark.parametrize("d", [4, 7, 16])
@pytest.mark.parametrize("rate", [0.98, 1.0, 1.02])
def test_rx_receives_a_bit_banged_stream(d, rate):
    rng = np.random.default_rng(d)
    data = [0x00, 0xFF, 0x55, 0xAA] + [int(b) for b in rng.integers(0, 256, 8)]
    wave, _, stops = bitbang(data, d, rate)         # frames back to back, no idle bit
    res = run_rx(wave, d)
    assert_bytes(res.got, data)
    assert res.error == [] and res.overrun == [] and res.errors == 0
    if rate == 1.0:     # exact timing: each byte is taken the cycle o.valid rises
        assert [c for c, _ in res.got] == [s + latency(d) for s in stops]


@pytest.mark.parametrize("d", [4, 7, 16])
def test_rx_ignores_glitches_shorter_than_half_a_bit(d):
    s = (d - 1) // 2                # the longest low that is not a start: < d / 2
    wave = [1] * 3 * d
    for g in range(1, s + 1):
        wave += [0] * g + [1] * 12 * d
    res = run_rx(wave, d)
    assert res.got == [] and res.error == [] and res.first_valid == []
    # ... while a low of half a bit (rounded up) is a start bit, here of an all-ones byte.
    res = run_rx([1] * 3 * d + [0] * (s + 1) + [1] * 12 * d, d)
    assert_bytes(res.got, [0xFF])


def test_rx_framing_error_drops_the_byte_and_the_next_is_received():
    d = 8
    wave, _, stops = bitbang([frame_bits(0x3C, stop=0), 0xC3, 0x5A], d, idle_bits=1)
    res = run_rx(wave, d)
    assert_bytes(res.got, [0xC3, 0x5A])
    assert res.error == [stops[0] + latency(d)]     # one pulse, when the byte would have been valid
    assert res.errors == 1 and res.overrun == []
    assert [c for c, _ in res.got] == [s + latency(d) for s in stops[1:]]


def test_rx_error_counter_saturates():
    d = 4
    wave, _, _ = bitbang([frame_bits(k, stop=0) for k in range(5)] + [0x42], d, idle_bits=1)
    res = run_rx(wave, d, error_bits=2)
    assert len(res.error) == 5 and res.errors == 3
    assert_bytes(res.got, [0x42])


def test_rx_break_gives_one_framing_error_and_then_the_next_byte():
    d = 6
    lead = 4
    wave = [1] * lead + [0] * (30 * d) + [1] * (2 * d)      # the line held low for 30 bits
    after, _, stops = bitbang([0xA5], d, lead=0)
    res = run_rx(wave + after, d)
    assert res.error == [lead + 9 * d + latency(d)] and res.errors == 1
    assert res.got == [(len(wave) + stops[0] + latency(d), 0xA5)]


def test_rx_overrun_keeps_the_buffered_byte_and_drops_the_new_ones():
    d = 8
    wave, _, stops = bitbang([0x11, 0x22, 0x33], d)
    release = stops[2] + latency(d) + 5
    wave2, _, stops2 = bitbang([0x44], d, lead=0)
    res = run_rx(wave + wave2, d, ready=lambda c: c >= release)
    assert res.held                                       # 0x11 stayed on o until taken
    assert res.first_valid == [stops[0] + latency(d), len(wave) + stops2[0] + latency(d)]
    assert res.overrun == [stops[1] + latency(d), stops[2] + latency(d)]
    assert res.got == [(release, 0x11), (len(wave) + stops2[0] + latency(d), 0x44)]
    assert res.error == [] and res.errors == 0


def test_rx_buffered_byte_taken_as_the_next_completes_is_no_overrun():
    d = 8
    wave, _, stops = bitbang([0x11, 0x22], d)
    sample = stops[1] + latency(d) - 1                  # the cycle the stop bit of 0x22 is sampled
    res = run_rx(wave, d, ready=lambda c: c == sample or c > sample + d)
    assert res.overrun == [] and res.held
    assert res.got == [(sample, 0x11), (sample + d + 1, 0x22)]


# ------------------------------------------------------------------------------- loopback

class Loopback(Elaboratable):
    def __init__(self, d):
        self.uart = Uart(d)

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart = self.uart
        m.d.comb += self.uart.rx.eq(self.uart.tx)
        return m


def test_loopback_of_all_256_byte_values():
    d = 4
    data = [int(b) for b in np.random.default_rng(0).permutation(256)]
    top = Loopback(d)
    u = top.uart
    accepts, got, flags = [], [], []
    n = 10 * d * len(data) + 4 * d

    async def bench(ctx):
        k = 0
        ctx.set(u.o.ready, 1)
        for c in range(n):
            ctx.set(u.i.valid, k < len(data))
            if k < len(data):
                ctx.set(u.i.payload, data[k])
            _, _, ready, valid, payload, err, ovr = await ctx.tick().sample(
                u.i.ready, u.o.valid, u.o.payload, u.error, u.overrun)
            if k < len(data) and ready:
                accepts.append(c)
                k += 1
            if valid:
                got.append((c, int(payload)))
            if err or ovr:
                flags.append(c)

    sim = make_simulator(top)
    sim.add_testbench(bench)
    run_bounded(sim, n + 10)
    assert_bytes(got, data)
    assert flags == []
    assert accepts == [10 * d * k for k in range(256)]          # TX back to back from cycle 0
    # Each byte's start bit is on the line from a + 1, its stop bit from a + 1 + 9 d.
    assert [c for c, _ in got] == [a + 1 + 9 * d + latency(d) for a in accepts]


# ------------------------------------------------------------------------ corrupted checks

def test_corrupted_expectations_fail():
    d = 4
    schedule = [(0x5A, 2)]
    n = 2 + 12 * d
    trace, _ = run_tx(schedule, d, n)
    _, ref = tx_reference(schedule, d, n)
    assert_same_wave(trace, ref)
    _, wrong = tx_reference([(0x5B, 2)], d, n)                  # a different byte
    with pytest.raises(AssertionError, match="differs from the reference"):
        assert_same_wave(trace, wrong)
    late = ref[:]
    late[2 + 1 + 10 * d - 1] = 0                                # the stop bit a cycle short
    with pytest.raises(AssertionError):
        assert_same_wave(trace, late)

    wave, _, _ = bitbang([0x5A], d)
    res = run_rx(wave, d)
    assert_bytes(res.got, [0x5A])
    with pytest.raises(AssertionError):
        assert_bytes(res.got, [0x5B])
    # The receiver does sample: a data bit flipped on the line changes the byte ...
    wave, starts, _ = bitbang([0x5A], d)
    mid = starts[0] + 1 * d + (d - 1) // 2                    # the middle of data bit 0
    flipped = wave[:mid - 1] + [1 - wave[mid]] * 3 + wave[mid + 2:]
    assert_bytes(run_rx(flipped, d).got, [0x5B])
    # ... and a sender 10 % slow is out of its tolerance.
    data = [0x55, 0xAA, 0x0F, 0xF0]
    wave, _, _ = bitbang(data, 16, rate=0.9)
    res = run_rx(wave, 16)
    assert [b for _, b in res.got] != data or res.error


# ------------------------------------------------------------------------------- helpers

def test_divisor_for_board_clocks():
    assert divisor_for(12_000_000, 115_200) == 104
    assert baud_error(12_000_000, 115_200) == pytest.approx(0.1603, abs=1e-3)
    assert divisor_for(12_000_000, 3_000_000) == 4
    assert baud_error(12_000_000, 3_000_000) == 0.0
    assert divisor_for(12_000_000, 921_600) == 13
    assert divisor_for(25_000_000, 115_200) == 217                # ULX3S
    assert baud_error(25_000_000, 115_200) == pytest.approx(0.0064, abs=1e-3)
    assert divisor_for(25_000_000, 1_000_000) == 25
    assert baud_error(25_000_000, 3_000_000, 8) == pytest.approx(4.1667, abs=1e-3)
    assert baud_error(12_000_000, 115_200, 105) < 0


@pytest.mark.parametrize("clock,baud,match", [
    (25_000_000, 3_000_000, r"divisor 8 gives 3125000 baud, \+4.17 % off \(more than 2 %\)"),
    (25_000_000, 2_000_000, r"more than 2 %"),
    (12_000_000, 4_000_000, r"needs 3.00 clock cycles per bit; the UART needs at least 4"),
    (12_000_000, 0, r"Baud rate must be a positive number, not 0"),
    (-1, 9600, r"Clock frequency must be a positive number, not -1"),
])
def test_divisor_for_refuses(clock, baud, match):
    with pytest.raises(ValueError, match=match) as info:
        divisor_for(clock, baud)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("cls", [UartTx, UartRx, Uart])
@pytest.mark.parametrize("bad", [3, 0, 4.0, True, None])
def test_bad_divisor(cls, bad):
    refused(cls, bad, match=rf"UART divisor \(clock cycles per bit\) must be an integer >= 4, not {bad!r}$")


def test_bad_error_bits():
    refused(lambda: UartRx(8, error_bits=0), match=r"error counter width must be an integer in 1\.\.32, not 0$")
