"""Read a block of SPI flash into a byte stream once after configuration (the weight image on a board)."""
from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SpiFlashReader"]


class SpiFlashReader(wiring.Component):
    """Stream ``length`` bytes of a SPI NOR flash from ``offset`` (command ``0x03``, SPI mode 0).

    On the iCEBreaker the FPGA's configuration flash (W25Q128JV) holds the bitstream at 0; the weight
    image (``weights.bin`` of ``codegen emit --target fpga``) is written at ``offset`` with
    ``iceprog -o 1M weights.bin`` and read by this unit into :class:`~rtl.network.Network`'s
    ``load`` port. The sequence is: release from power-down (``0xAB``, then ``wake_cycles`` idle
    cycles with ``cs_n`` high, tRES1 = 3 us), then ``0x03`` with the 24-bit address and ``length``
    data bytes, most significant bit first. ``sck`` runs at a quarter of the clock at most (one
    register per half period, ``div`` clock cycles each) and stops, low, while ``o`` is not
    ready (mode 0 allows any pause).

    ``done`` is reset-less, like :class:`~rtl.loader.StoreLoader`'s: a logic reset after the read
    does not read again; a reset during it starts over.

    Parameters
    ----------
    length : int
        Bytes to read (>= 1).
    offset : int
        Flash byte address of the first (24-bit).
    div : int
        Clock cycles per SCK half period (>= 1).
    wake_cycles : int
        Idle cycles after the wake-up command (3 us at the clock frequency or more).

    Members
    -------
    o : ``Out(stream.Signature(unsigned(8)))``
    done : ``Out(1)``
    cs_n, sck, copi : ``Out(1)``; cipo : ``In(1)``
        The flash pins (``copi`` = flash DI / IO0, ``cipo`` = flash DO / IO1).
    """

    def __init__(self, length: int, offset: int = 0x100000, div: int = 1, wake_cycles: int = 64):
        for name, v, lo, hi in (("Length", length, 1, 1 << 24), ("Offset", offset, 0, (1 << 24) - 1),
                                ("Divider", div, 1, 1 << 16), ("Wake-up cycles", wake_cycles, 0, 1 << 24)):
            if not (isinstance(v, int) and lo <= v <= hi):
                raise ValueError(f"{name} must be an integer in {lo}..{hi}, not {v!r}")
        if offset + length > 1 << 24:
            raise ValueError(f"Offset {offset:#x} + length {length} is beyond the 16 MiB a 24-bit address reaches")
        self.length, self.offset, self.div, self.wake_cycles = length, offset, div, wake_cycles
        super().__init__({
            "o": Out(stream.Signature(unsigned(8))),
            "done": Out(1),
            "cs_n": Out(1, init=1), "sck": Out(1), "copi": Out(1), "cipo": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        done = Signal(reset_less=True)
        sr_out = Signal(32)                     # bits still to send, MSB first
        sr_in = Signal(8)
        nbits = Signal(range(33))               # bits left in the current transfer
        left = Signal(range(self.length + 1))   # data bytes still to read
        tick = Signal(range(self.div))          # clock cycles into the current SCK half period
        wait = Signal(range(self.wake_cycles + 1))
        have = Signal()                         # a read byte waits in sr_in for o.ready
        half = tick == self.div - 1
        m.d.comb += [self.done.eq(done), self.copi.eq(sr_out[31]),
                     self.o.payload.eq(sr_in), self.o.valid.eq(have)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += have.eq(0)

        def shift(next_state):
            """Clock the ``nbits`` left, one per SCK period: SCK rises (the flash samples copi), and
            at its fall we take cipo (the flash changes it only after a falling edge) and shift."""
            with m.If(nbits == 0):
                m.next = next_state
            with m.Else():
                m.d.sync += tick.eq(Mux(half, 0, tick + 1))
                with m.If(half):
                    m.d.sync += self.sck.eq(~self.sck)
                    with m.If(self.sck):
                        m.d.sync += [sr_out.eq(sr_out << 1), sr_in.eq(Cat(self.cipo, sr_in[:7])),
                                     nbits.eq(nbits - 1)]

        with m.FSM():
            with m.State("START"):
                with m.If(~done):
                    m.d.sync += [self.cs_n.eq(0), sr_out.eq(0xAB << 24), nbits.eq(8)]
                    m.next = "WAKE"
            with m.State("WAKE"):
                shift("WAKE_END")
            with m.State("WAKE_END"):
                m.d.sync += [self.cs_n.eq(1), wait.eq(self.wake_cycles)]
                m.next = "WAIT"
            with m.State("WAIT"):
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 0):
                    m.d.sync += [self.cs_n.eq(0), sr_out.eq((0x03 << 24) | self.offset), nbits.eq(32),
                                 left.eq(self.length)]
                    m.next = "CMD"
            with m.State("CMD"):
                shift("BYTE")
            with m.State("BYTE"):
                with m.If(left == 0):
                    m.d.sync += [self.cs_n.eq(1), done.eq(1)]
                    m.next = "START"
                with m.Elif(~have | (self.o.valid & self.o.ready)):
                    m.d.sync += [nbits.eq(8), left.eq(left - 1)]
                    m.next = "READ"
            with m.State("READ"):
                with m.If(nbits == 0):
                    m.d.sync += have.eq(1)
                shift("BYTE")
        return m
