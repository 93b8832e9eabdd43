"""Board tops for the FPGA boards: the device protocol over the board's FTDI UART (:class:`BoardTop`).

:class:`BoardCore` is the whole design on plain pins (a :class:`~amaranth.lib.wiring.Component`,
simulated as is by tests/test_board_build.py)::

    rx --> UartRx --> ProtoDevice.i    ProtoDevice.pixels --> Network.i
                                       Network.o --> ProtoDevice.result
    tx <-- UartTx <-- ProtoDevice.o
    flash (cs_n, sck, copi, cipo) <--> SpiFlashReader --> Network.load   (only with a "ram" store)
    led_heartbeat, led_busy, led_error, loaded

:class:`BoardTop` puts it on an amaranth-boards platform (``ICEBreakerPlatform``,
``ULX3S_25F_Platform``): the design runs in the ``sync`` domain of the platform's default clock,
i.e. the board oscillator (12 MHz on the iCEBreaker, 25 MHz on the ULX3S; no PLL), with the
platform's power-on reset (or, with another ``clock_hz``, a PLL's output, the design in reset until
it locks: an SB_PLL40_PAD on the iCEBreaker, :func:`ice40_pll`; an EHXPLLL on the ULX3S, :func:`ecp5_pll`); the UART is the board's ``uart`` resource (the FTDI's second channel on
both boards), the LEDs are the board's.

Behaviour
    *INFO* (docs/protocol.md): the model's name and sha256 (the model file's), the board name, the
    clock in Hz, ``flags = CYCLES`` (RESULT.cycles counts clock cycles from the first pixel to the
    result), result kind LOGITS (a classifier) or MAP (a detector: the raw readout map, the host
    decodes it), the default 100 ms timeout.

    *Weights in SPRAM* (a ``"ram"`` store, iCEBreaker only): after configuration the
    :class:`~rtl.spiflash.SpiFlashReader` reads the load image (``Network.load_image()``,
    ``weights.bin``) from the configuration flash at :data:`FLASH_OFFSET` (1 MiB; written with
    ``iceprog -o 1M weights.bin``) into the network's ``load`` port, SCK at half the clock. Until
    ``loaded`` every received byte is dropped (a request sent then gets no reply; the host's
    timeout and retry cover it): the MNIST MLP's 108,544-byte image (lanes 4) takes at least
    1.74 M cycles, 145 ms at 12 MHz (estimated from the reader's 16 cycles a byte; simulated only
    for a small model, tests/test_board_build.py).

    *LEDs*: ``led_heartbeat`` toggles every 2**23 cycles at 12 MHz (about 0.7 s; 2**24 at 25 MHz);
    ``led_busy`` is on while a frame is in the network or a reply is being sent (and during the
    flash load); ``led_error`` goes on with any ERROR reply, UART framing error or receive overrun (a byte
    lost because the network did not take the previous pixel in time) and stays on
    until the next good request. iCEBreaker: heartbeat = the green LED (LEDG, pin 37), error = the
    red LED (LEDR, pin 11), busy = the break-off PMOD section's ``led_g 1`` resource (FPGA pin 27;
    amaranth-boards' ``break_off_pmod``). ULX3S: LED0 heartbeat, LED1 busy, LED2 error, LED7 ``loaded``.
"""
from __future__ import annotations

from amaranth import ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out

from boards import protocol as P

from .network import Network
from .protocol import ProtoDevice
from .spiflash import SpiFlashReader
from .uart import UartRx, UartTx, divisor_for

__all__ = ["BOARD_CLOCKS", "BoardCore", "BoardTop", "DEFAULT_BAUD", "FLASH_OFFSET", "board_info", "ecp5_pll",
           "ice40_pll", "make_pll", "platform_for"]

DEFAULT_BAUD = 115200
#: Flash byte address of the load image of a "ram" store (``iceprog -o 1M weights.bin``).
FLASH_OFFSET = 0x100000
#: The board oscillators the tops run at (Hz).
BOARD_CLOCKS = {"icebreaker": 12_000_000, "ulx3s": 25_000_000}


def ice40_pll(fin_hz: int, fout_hz: int) -> dict:
    """SB_PLL40 parameters (simple feedback) that make exactly ``fout_hz`` from ``fin_hz``, as
    ``icepll`` computes them (PFD 10..133 MHz, VCO 533..1066 MHz, output 16..275 MHz); ValueError
    (one line) when none does. 12 MHz -> 18 MHz: DIVR 0, DIVF 47, DIVQ 5, FILTER_RANGE 1."""
    for divr in range(16):
        pfd = fin_hz / (divr + 1)
        if not 10e6 <= pfd <= 133e6:
            continue
        for divq in range(1, 7):
            divf1 = fout_hz * (1 << divq) * (divr + 1) / fin_hz
            if divf1 != int(divf1) or not 1 <= divf1 <= 128:
                continue
            vco = pfd * divf1
            if 533e6 <= vco <= 1066e6 and 16e6 <= fout_hz <= 275e6:
                rng = next(k for k, hi in enumerate((17e6, 26e6, 44e6, 66e6, 101e6, 1e12), 1) if pfd < hi)
                return {"DIVR": divr, "DIVF": int(divf1) - 1, "DIVQ": divq, "FILTER_RANGE": rng}
    raise ValueError(f"the iCE40 PLL cannot make exactly {fout_hz / 1e6:g} MHz from {fin_hz / 1e6:g} MHz "
                     f"(16..275 MHz, e.g. 18, 24, 30 MHz)")


def ecp5_pll(fin_hz: int, fout_hz: int) -> dict:
    """EHXPLLL parameters (CLKOP fed back) that make exactly ``fout_hz`` from ``fin_hz``, searched in
    ``ecppll``'s ranges (PFD 3.125..400 MHz, VCO 400..800 MHz, output 3.125..400 MHz; CLKI_DIV 1..128,
    CLKFB_DIV 1..80, CLKOP_DIV 1..128; ``fout = fin / CLKI_DIV * CLKFB_DIV``, ``VCO = fout *
    CLKOP_DIV``): the smallest CLKI_DIV, then the VCO nearest 600 MHz, ``CLKOP_CPHASE = CLKOP_DIV // 2``
    (what ``ecppll`` writes for 12 -> 16 MHz: 3, 4, 37, 18); ValueError (one line) when none does.
    25 MHz -> 50 MHz: CLKI_DIV 1, CLKFB_DIV 2, CLKOP_DIV 12, CLKOP_CPHASE 6."""
    if 3.125e6 <= fout_hz <= 400e6:
        for idiv in range(1, 129):
            pfd = fin_hz / idiv
            if not 3.125e6 <= pfd <= 400e6:
                continue
            fbdiv = fout_hz * idiv / fin_hz
            if fbdiv != int(fbdiv) or not 1 <= fbdiv <= 80:
                continue
            odivs = [o for o in range(1, 129) if 400e6 <= fout_hz * o <= 800e6]
            if odivs:
                odiv = min(odivs, key=lambda o: abs(fout_hz * o - 600e6))
                return {"CLKI_DIV": idiv, "CLKFB_DIV": int(fbdiv), "CLKOP_DIV": odiv, "CLKOP_CPHASE": odiv // 2}
    raise ValueError(f"the ECP5 PLL cannot make exactly {fout_hz / 1e6:g} MHz from {fin_hz / 1e6:g} MHz "
                     f"(3.125..400 MHz, e.g. 30, 40, 50 MHz)")


def make_pll(board: str, fin_hz: int, fout_hz: int) -> dict:
    """The PLL parameters of ``board`` (:func:`ice40_pll` or :func:`ecp5_pll`)."""
    return ice40_pll(fin_hz, fout_hz) if board == "icebreaker" else ecp5_pll(fin_hz, fout_hz)


def platform_for(board: str):
    """The amaranth-boards platform of a board name (``icebreaker``, ``ulx3s``)."""
    if board == "icebreaker":
        from amaranth_boards.icebreaker import ICEBreakerPlatform

        return ICEBreakerPlatform()
    if board == "ulx3s":
        from amaranth_boards.ulx3s import ULX3S_25F_Platform

        return ULX3S_25F_Platform()
    raise ValueError(f"no board top for {board!r} (icebreaker, ulx3s)")


def board_info(model, name: str, sha256: str, board: str, clock_hz: int,
               timeout_ms: int = P.DEFAULT_TIMEOUT_MS) -> P.Info:
    """The INFO a board top answers for ``model`` (an IntModel)."""
    import numpy as np

    detect = model.task == "detect"
    return P.Info(name=name, sha256=sha256, input_shape=tuple(int(v) for v in model.input_shape),
                  task=P.Task.DETECT if detect else P.Task.CLASSIFY,
                  result_kind=P.ResultKind.MAP if detect else P.ResultKind.LOGITS,
                  n_outputs=int(np.prod(model.layers[-1].out_shape)), board=board, clock_hz=int(clock_hz),
                  timeout_ms=timeout_ms, max_detections=int(model.head.max_detections) if detect else 0,
                  flags=P.Flag.CYCLES)


class BoardCore(wiring.Component):
    """The board design on plain pins (see the module's documentation).

    Parameters
    ----------
    model : runtime.spec.IntModel
    lanes, store, fifo_depth
        :class:`~rtl.network.Network`'s (``store``: "rom", "ram" or one per layer, resolved).
    info : boards.protocol.Info
        What INFO answers (:func:`board_info`); ``info.clock_hz`` is the clock the design runs at.
    baud : int
        The UART rate (:func:`~rtl.uart.divisor_for` must accept it at ``info.clock_hz``).
    flash_offset, flash_div, heartbeat_bit, timeout_cycles
        The load image's flash address; SpiFlashReader's ``div``; the heartbeat LED is bit
        ``heartbeat_bit`` of a free-running counter (default: about 0.7 s a half period); the
        protocol timeout (default from ``info``).
    """

    def __init__(self, model, lanes, store, info: P.Info, baud: int = DEFAULT_BAUD, fifo_depth: int = 16, *,
                 flash_offset: int = FLASH_OFFSET, flash_div: int = 1, heartbeat_bit: int | None = None,
                 timeout_cycles: int | None = None):
        self._MustUse__silence = True       # no "never used" warning when a check below refuses
        self.info = info
        self.divisor = divisor_for(info.clock_hz, baud)
        self.net = net = Network(model, lanes, fifo_depth, store)
        n = int(net.engines[-1].n_out)
        if info.input_size != net.encoder.n_pixels or info.n_outputs != n:
            raise ValueError(f"INFO (input {info.input_size}, {info.n_outputs} outputs) does not describe the "
                             f"network (input {net.encoder.n_pixels}, {n} outputs)")
        reorder = net.detect and int(model.layers[-1].out_shape[0]) > 1
        self.dev = ProtoDevice(info, net.engines[-1].acc_bits, timeout_cycles=timeout_cycles, reorder=reorder,
                               count_cycles=True)
        self.urx = UartRx(self.divisor)
        self.utx = UartTx(self.divisor)
        self.image = net.load_image()
        self.flash = None
        if self.image:
            wake = max(64, -(-info.clock_hz * 3 // 1_000_000) + 8)    # tRES1 = 3 us, with a margin
            self.flash = SpiFlashReader(len(self.image), flash_offset, flash_div, wake)
        if heartbeat_bit is None:
            heartbeat_bit = max(1, int(info.clock_hz * 0.7).bit_length() - 1)
        self.heartbeat_bit = heartbeat_bit
        super().__init__({
            "rx": In(1, init=1), "tx": Out(1, init=1),
            "led_heartbeat": Out(1), "led_busy": Out(1), "led_error": Out(1), "loaded": Out(1),
            "flash_cs_n": Out(1, init=1), "flash_sck": Out(1), "flash_copi": Out(1), "flash_cipo": In(1),
        })
        self._MustUse__silence = False

    def elaborate(self, platform):
        m = Module()
        m.submodules.net = net = self.net
        m.submodules.dev = dev = self.dev
        m.submodules.urx = urx = self.urx
        m.submodules.utx = utx = self.utx
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]
        wiring.connect(m, dev.pixels, net.i)
        wiring.connect(m, net.o, dev.result)
        wiring.connect(m, dev.o, utx.i)

        loaded = Signal()
        if self.flash is not None:
            m.submodules.flash = fl = self.flash
            wiring.connect(m, fl.o, net.load)
            m.d.comb += [loaded.eq(net.loaded), self.flash_cs_n.eq(fl.cs_n), self.flash_sck.eq(fl.sck),
                         self.flash_copi.eq(fl.copi), fl.cipo.eq(self.flash_cipo)]
        else:
            m.d.comb += loaded.eq(1)
        m.d.comb += self.loaded.eq(loaded)
        # received bytes go to the protocol once the weights are in; before that they are dropped
        m.d.comb += [dev.i.payload.eq(urx.o.payload), dev.i.valid.eq(urx.o.valid & loaded),
                     urx.o.ready.eq(dev.i.ready | ~loaded)]

        beat = Signal(self.heartbeat_bit + 1)
        m.d.sync += beat.eq(beat + 1)
        m.d.comb += self.led_heartbeat.eq(beat[-1])

        # busy: from a frame's first pixel to its result, and while a reply byte waits or is sent
        in_net = Signal()
        with m.If(dev.pixels.valid & dev.pixels.ready):
            m.d.sync += in_net.eq(1)
        res_last = net.o.payload.last if net.detect else 1
        with m.If(net.o.valid & net.o.ready & res_last):
            m.d.sync += in_net.eq(0)
        m.d.comb += self.led_busy.eq(in_net | dev.o.valid | ~utx.i.ready | ~loaded)

        # error: latched on an ERROR reply (a bad event) or a UART framing error, cleared by a good request
        err = Signal()
        ev = dev.rx.o
        with m.If(ev.valid & ev.ready):
            m.d.sync += err.eq(ev.payload.code != 0)
        with m.Elif(urx.error | urx.overrun):     # a framing error, or a byte lost: the network fell behind
            m.d.sync += err.eq(1)
        m.d.comb += self.led_error.eq(err)
        return m


class BoardTop(Elaboratable):
    """:class:`BoardCore` on an amaranth-boards platform (``platform.build(BoardTop(...))``).

    ``model``: an IntModel; ``lanes``, ``store``: resolved (:func:`codegen.fpga.resolve_store`);
    ``board``: ``icebreaker`` or ``ulx3s``; ``baud``: the UART rate; ``clock_hz``: the clock
    (default: the board oscillator, :data:`BOARD_CLOCKS`; another one that the board's PLL makes
    exactly, :func:`make_pll`: an SB_PLL40_PAD on the iCEBreaker's 12 MHz pad, an EHXPLLL on the
    ULX3S's 25 MHz clock, the design held in reset until the PLL locks); ``name``,
    ``sha256``: the model file's, for INFO; ``timeout_ms``: the protocol's inter-byte timeout."""

    def __init__(self, model, lanes, store, board: str, baud: int = DEFAULT_BAUD, clock_hz: int | None = None, *,
                 name: str = "model", sha256: str = "0" * 64, fifo_depth: int = 16,
                 timeout_ms: int = P.DEFAULT_TIMEOUT_MS):
        self._MustUse__silence = True       # no "never used" warning when a check below refuses
        if board not in BOARD_CLOCKS:
            raise ValueError(f"no board top for {board!r} (icebreaker, ulx3s)")
        osc = BOARD_CLOCKS[board]
        if clock_hz is None:
            clock_hz = osc
        self.pll = None
        if clock_hz != osc:
            self.pll = make_pll(board, osc, int(clock_hz))
        self.board, self.clock_hz, self.baud = board, int(clock_hz), int(baud)
        self.info = board_info(model, name, sha256, board, clock_hz, timeout_ms)
        self.core = BoardCore(model, lanes, store, self.info, baud, fifo_depth)
        if self.core.flash is not None and board != "icebreaker":
            raise ValueError("a RAM store (SPRAM) needs the iCEBreaker")
        self._MustUse__silence = False

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        if platform is None:
            return m
        def buf(name, direction, port):
            m.submodules[name] = b = io.Buffer(direction, port)
            return b

        if self.pll is not None:     # a PLL on the oscillator pad: the sync domain at clock_hz
            clk_in = platform.request(platform.default_clk, dir="-")
            m.domains.sync = cd = ClockDomain("sync")
            pll_clk, lock = Signal(name="pll_clk"), Signal(name="pll_lock")
            p = self.pll
            if self.board == "icebreaker":
                m.submodules.pll = Instance(
                    "SB_PLL40_PAD", p_FEEDBACK_PATH="SIMPLE", p_DIVR=p["DIVR"], p_DIVF=p["DIVF"],
                    p_DIVQ=p["DIVQ"], p_FILTER_RANGE=p["FILTER_RANGE"],
                    i_PACKAGEPIN=clk_in.io, i_RESETB=1, i_BYPASS=0, o_PLLOUTGLOBAL=pll_clk, o_LOCK=lock)
            else:                    # EHXPLLL as ecppll writes it: CLKOP fed back, the other outputs off
                m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_in)
                m.submodules.pll = Instance(
                    "EHXPLLL", a_FREQUENCY_PIN_CLKI=f"{BOARD_CLOCKS[self.board] / 1e6:g}",
                    a_FREQUENCY_PIN_CLKOP=f"{self.clock_hz / 1e6:g}", a_ICP_CURRENT="12", a_LPF_RESISTOR="8",
                    a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
                    p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                    p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
                    p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD", p_CLKI_DIV=p["CLKI_DIV"],
                    p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p["CLKOP_DIV"], p_CLKOP_CPHASE=p["CLKOP_CPHASE"],
                    p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=p["CLKFB_DIV"],
                    i_RST=0, i_STDBY=0, i_CLKI=clk_buf.i, i_CLKFB=pll_clk, o_CLKOP=pll_clk,
                    i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
                    i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=lock)
            m.d.comb += cd.clk.eq(pll_clk)
            platform.add_clock_constraint(pll_clk, self.clock_hz)
            m.submodules.rst_sync = ResetSynchronizer(~lock, domain="sync")
        uart = platform.request("uart", 0, dir="-")
        m.d.comb += [core.rx.eq(buf("uart_rx", "i", uart.rx).i), buf("uart_tx", "o", uart.tx).o.eq(core.tx)]
        if self.board == "icebreaker":
            if ("led_g", 1) not in platform.resources:
                platform.add_resources(platform.break_off_pmod)
            m.d.comb += [buf("led_heartbeat", "o", platform.request("led_g", 0, dir="-")).o.eq(core.led_heartbeat),
                         buf("led_error", "o", platform.request("led_r", 0, dir="-")).o.eq(core.led_error),
                         buf("led_busy", "o", platform.request("led_g", 1, dir="-")).o.eq(core.led_busy)]
            if core.flash is not None:
                fl = platform.request("spi_flash_1x", 0, dir="-")
                m.d.comb += [buf("flash_cs", "o", fl.cs).o.eq(~core.flash_cs_n),
                             buf("flash_clk", "o", fl.clk).o.eq(core.flash_sck),
                             buf("flash_copi", "o", fl.copi).o.eq(core.flash_copi),
                             core.flash_cipo.eq(buf("flash_cipo", "i", fl.cipo).i),
                             buf("flash_wp", "o", fl.wp).o.eq(0), buf("flash_hold", "o", fl.hold).o.eq(0)]
        else:
            for k, sig in ((0, core.led_heartbeat), (1, core.led_busy), (2, core.led_error), (7, core.loaded)):
                m.d.comb += buf(f"led_{k}", "o", platform.request("led", k, dir="-")).o.eq(sig)
        return m
