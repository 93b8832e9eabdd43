"""Byte stream -> the RAM stores of the engines (``store="ram"``), once after configuration."""
from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["StoreLoader"]


class StoreLoader(wiring.Component):
    """Split a byte stream into the words of several RAM stores, one store after another.

    The image is the concatenation, in segment order, of every store's words in address order,
    each word little-endian (``width // 8`` bytes; :func:`image` builds it from the words). On
    a board it comes from SPI flash; in a testbench the bench sends it before the first frame.

    ``done`` is a *reset-less* flag: it is cleared only by configuration (FPGA initial values), so a
    reset after a complete load keeps the stores (iCE40 SPRAM keeps its contents across a logic
    reset) and the loader then takes no more bytes. A reset during the load restarts it at byte 0
    (the engines' write addresses restart with it): send the image again from its start.

    Parameters
    ----------
    segments : list of (width, depth)
        Word width in bits (a multiple of 8) and word count of each store.

    Members
    -------
    i : ``In(stream.Signature(unsigned(8)))``
        The image bytes. ``ready`` is low while a word waits for its store and after the load.
    o{j} : ``Out(stream.Signature(unsigned(width_j)))``
        The words of store ``j``.
    done : ``Out(1)``
        Every word of every store is written.

    Cycles: ``width // 8 + 1`` per word when the stores are always ready (the engines are).
    """

    def __init__(self, segments):
        segments = [(int(w), int(d)) for w, d in segments]
        if not segments:
            raise ValueError("A store loader needs at least one segment")
        for w, d in segments:
            if w < 8 or w % 8 or d < 1:
                raise ValueError(f"Store segments need a width that is a positive multiple of 8 and a "
                                 f"positive depth, not ({w}, {d})")
        self.segments = segments
        self.total_bytes = sum(w // 8 * d for w, d in segments)
        super().__init__({
            "i": In(stream.Signature(unsigned(8))),
            "done": Out(1),
            **{f"o{j}": Out(stream.Signature(unsigned(w))) for j, (w, _) in enumerate(segments)},
        })

    @staticmethod
    def image(words_per_store, widths) -> bytes:
        """The byte image of ``words_per_store[j]`` (unsigned ints of ``widths[j]`` bits)."""
        out = bytearray()
        for words, w in zip(words_per_store, widths):
            for v in words:
                out += int(v).to_bytes(w // 8, "little")
        return bytes(out)

    def elaborate(self, platform):
        m = Module()
        n = len(self.segments)
        widths = [w for w, _ in self.segments]
        seg = Signal(range(n + 1))
        word = Signal(range(max(d for _, d in self.segments) + 1))
        nbyte = Signal(range(max(widths) // 8 + 1))
        buf = Signal(max(widths))
        full = Signal()
        done = Signal(reset_less=True)
        m.d.comb += [self.done.eq(done), self.i.ready.eq(~done & ~full)]

        last_byte = Array(Const(w // 8 - 1, nbyte.shape()) for w in widths)[seg]
        last_word = Array(Const(d - 1, word.shape()) for _, d in self.segments)[seg]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += buf.word_select(nbyte, 8).eq(self.i.payload)
            with m.If(nbyte == last_byte):
                m.d.sync += [nbyte.eq(0), full.eq(1)]
            with m.Else():
                m.d.sync += nbyte.eq(nbyte + 1)

        for j, (w, _) in enumerate(self.segments):
            o = getattr(self, f"o{j}")
            m.d.comb += [o.payload.eq(buf[:w]), o.valid.eq(full & (seg == j))]
        target_ready = Array(getattr(self, f"o{j}").ready for j in range(n))[seg]
        with m.If(full & target_ready):
            m.d.sync += full.eq(0)
            with m.If(word == last_word):
                m.d.sync += word.eq(0)
                with m.If(seg == n - 1):
                    m.d.sync += done.eq(1)
                with m.Else():
                    m.d.sync += seg.eq(seg + 1)
            with m.Else():
                m.d.sync += word.eq(word + 1)
        return m
