"""rtl.protocol (ProtoRx, ProtoTx, ProtoDevice) in amaranth.sim against the Python reference device
(boards.protocol.Device with tests/test_protocol.py's stub inference): the reply bytes must be equal,
byte for byte, for good frames, every error, garbage, timeouts and the good frame after each."""
import zlib

import numpy as np
import pytest
from amaranth import Elaboratable, Module
from amaranth.back import rtlil

from boards import protocol as P
from boards.protocol import ErrorCode, MsgType
from rtl.protocol import _CRC_TERMS, EVENT_LAYOUT, Op, ProtoDevice, ProtoRx, ProtoTx
from rtl.sim import make_simulator, run_bounded
from rtl.uart import UartRx, UartTx

from test_protocol import Cfg, stub_result

ACC = 20        # the fake network's logit width (sign-extended to int32 on the wire)
LAT = 7         # the fake network's latency: last pixel -> result valid, cycles
T = 40          # inter-byte timeout, cycles (the reference device's timeout_ms: one "ms" per cycle)

CLS = Cfg(kind="logits", shape=(1, 4, 5), n_out=10, timeout_ms=T, max_payload=20)
MAP = Cfg(kind="map", shape=(2, 2, 3), n_out=12, timeout_ms=T, max_payload=12, flags=P.Flag.CYCLES)


def _px(cfg, seed):
    return np.random.default_rng(seed).integers(0, 256, cfg.size, dtype=np.uint8).tobytes()


def _flip(frame: bytes, i: int) -> bytes:
    return frame[:i] + bytes([frame[i] ^ 0x5A]) + frame[i + 1:]


def crc_py(data: bytes) -> int:
    """The XOR network of rtl.protocol.crc32_byte, evaluated in Python."""
    reg = 0xFFFFFFFF
    for b in data:
        bits = reg | (b << 32)
        reg = sum((sum((bits >> k) & 1 for k in terms) & 1) << j for j, terms in enumerate(_CRC_TERMS))
    return reg ^ 0xFFFFFFFF


def test_crc_network_is_zlib():
    assert crc_py(b"123456789") == 0xCBF43926
    data = bytes(np.random.default_rng(1).integers(0, 256, 200, dtype=np.uint8))
    assert crc_py(data) == zlib.crc32(data)


# ---- the harness -----------------------------------------------------------------------------------

def schedule(*chunks):
    """[(gap, bytes), ...] -> [(gap, byte)]: the first byte of a chunk ``gap`` cycles after the
    previous byte was taken, the others back to back (gap 1)."""
    out = []
    for gap, data in chunks:
        out += [(gap if k == 0 else 1, b) for k, b in enumerate(data)]
    return out


def reference(cfg, sched, infer):
    """What boards.protocol.Device replies to the schedule (a byte's time: the sum of the gaps)."""
    dev, now, out = P.Device(cfg.info, infer), 0, b""
    for gap, b in sched:
        now += gap
        out += dev.feed(bytes([b]), now)
    return out + dev.tick(now + T + 1)


class Bench:
    """A ProtoDevice (``dev``), a byte driver, a fake network (the stub inference, ``LAT`` cycles
    after the frame's last pixel; a detector's map in ``order``) and a reply collector."""

    def __init__(self, cfg, dev, *, order=None, net_stall=0.0, out_stall=0.0, seed=0):
        self.cfg, self.dev = cfg, dev
        self.order = list(range(cfg.n_out)) if order is None else list(order)
        self.rng = np.random.default_rng(seed)
        self.net_stall, self.out_stall = net_stall, out_stall
        self.frames = []    # the network's frames: (pixels, cycles from first pixel to result valid)
        self.events = []    # ProtoRx's events: (code, type, detail, frame)
        self.got = bytearray()

    async def network(self, ctx):
        dev, cfg, t = self.dev, self.cfg, 0
        while True:
            px, t0 = [], None
            while len(px) < cfg.size:
                ready = not (self.net_stall and self.rng.random() < self.net_stall)
                ctx.set(dev.pixels.ready, ready)
                _, _, valid, b = await ctx.tick().sample(dev.pixels.valid, dev.pixels.payload)
                if valid and ready:
                    t0 = t if t0 is None else t0
                    px.append(b)
                t += 1
            ctx.set(dev.pixels.ready, 0)
            res = stub_result(cfg, bytes(px))
            for _ in range(LAT - 1):
                await ctx.tick()
                t += 1
            self.frames.append((bytes(px), t - t0))
            if cfg.kind == "logits":
                ctx.set(dev.result.payload.cls, res.cls)
                for k, v in enumerate(res.logits):
                    ctx.set(dev.result.payload.logits[k], int(v))
                ctx.set(dev.result.valid, 1)
                while True:
                    _, _, ready = await ctx.tick().sample(dev.result.ready)
                    t += 1
                    if ready:
                        break
                ctx.set(dev.result.valid, 0)
            else:
                for j, idx in enumerate(self.order):
                    ctx.set(dev.result.payload.index, int(idx))
                    ctx.set(dev.result.payload.value, int(res.logits[idx]))
                    ctx.set(dev.result.payload.last, j == len(self.order) - 1)
                    ctx.set(dev.result.valid, 1)
                    while True:
                        _, _, ready = await ctx.tick().sample(dev.result.ready)
                        t += 1
                        if ready:
                            break
                ctx.set(dev.result.valid, 0)

    async def monitor(self, ctx):
        rx = self.dev.rx
        async for _, _, valid, ready, ev in ctx.tick().sample(rx.o.valid, rx.o.ready, rx.o.payload):
            if valid and ready:
                self.events.append((ev.code, ev.type, ev.detail, ev.frame))

    def collector(self, o):
        async def run(ctx):
            while True:
                ready = not (self.out_stall and self.rng.random() < self.out_stall)
                ctx.set(o.ready, ready)
                _, _, valid, b = await ctx.tick().sample(o.valid, o.payload)
                if valid and ready:
                    self.got.append(b)
        return run

    def infer(self, count_cycles=True):
        """The reference's inference: the stub's result with the cycles the RTL counted, for the
        network frames whose request was good (checking that those pixels went to the network)."""
        net = [f for f, ev in zip(self.frames, [e for e in self.events if e[3]]) if ev[0] == 0]
        it = iter(net)

        def run(payload):
            px, cycles = next(it)
            assert px == payload, "the network did not get the frame's pixels"
            r = stub_result(self.cfg, payload)
            return P.Result(r.kind, r.cls, logits=r.logits, cycles=cycles if count_cycles else 0)
        return run


def run_stream(cfg, sched, *, order=None, reorder=False, net_stall=0.0, out_stall=0.0, pixel_fifo=0,
               count_cycles=True, seed=0):
    """The device on byte streams (no UART); returns (got, want) reply bytes."""
    want_len = len(reference(cfg, sched, lambda p: stub_result(cfg, p)))
    dev = ProtoDevice(cfg.info, ACC, timeout_cycles=T, reorder=reorder, pixel_fifo=pixel_fifo, count_cycles=count_cycles)
    bench = Bench(cfg, dev, order=order, net_stall=net_stall, out_stall=out_stall, seed=seed)
    done = []

    async def driver(ctx):
        for gap, b in sched:
            for _ in range(gap - 1):
                await ctx.tick()
            ctx.set(dev.i.payload, b)
            ctx.set(dev.i.valid, 1)
            await ctx.tick().until(dev.i.ready)
            ctx.set(dev.i.valid, 0)
        for _ in range(T + 2):
            await ctx.tick()
        while len(bench.got) < want_len:
            await ctx.tick()
        for _ in range(100):        # nothing more comes
            await ctx.tick()
        done.append(1)

    sim = make_simulator(dev)
    sim.add_testbench(driver)
    sim.add_testbench(bench.network, background=True)
    sim.add_testbench(bench.monitor, background=True)
    sim.add_testbench(bench.collector(dev.o), background=True)
    run_bounded(sim, 200_000, lambda: done)
    assert len(bench.frames) == sum(e[3] for e in bench.events)
    return bytes(bench.got), reference(cfg, sched, bench.infer(count_cycles)), bench


def assert_same(got, want):
    """Equal reply streams; on a difference, the replies of both side by side."""
    if got != want:
        def frames(s):
            p = P.Parser("host")
            return [m.decode() if isinstance(m, P.Message) else m for m in p.feed(s)]
        raise AssertionError(f"RTL replies differ from the reference:\n  got  {frames(got)}\n  want {frames(want)}\n"
                             f"  got  {got.hex()}\n  want {want.hex()}")


def session(cfg):
    """A host session with every kind of frame; each error followed by a good frame."""
    M = cfg.mid
    inf = [P.encode_request(MsgType.INFER, M, _px(cfg, s)) for s in range(6)]
    os_px = bytes(b"OSOS" * cfg.size)[:cfg.size]
    return schedule(
        (1, P.encode_request(MsgType.INFO_REQUEST, 0)),
        (3, P.encode_request(MsgType.INFO_REQUEST, M)),
        (1, inf[0]),
        (1, _flip(inf[1], 12 + 3)),                                  # bad CRC (a pixel): result dropped
        (2, inf[1]),
        (1, _flip(inf[2], len(inf[2]) - 1)),                         # bad CRC (the CRC itself)
        (1, inf[2]),
        (1, P.encode_request(MsgType.INFER, M ^ 1, _px(cfg, 9))),    # wrong model
        (1, P.encode_request(MsgType.INFER, 0, _px(cfg, 9))),        # wrong model (0 is for INFO only)
        (1, P.encode_request(MsgType.INFO_REQUEST, M ^ 0x100)),
        (1, inf[3]),
        (1, P.encode_request(MsgType.INFER, M, _px(cfg, 1)[:-1])),   # wrong length
        (1, P.encode_frame(MsgType.INFO_REQUEST, M, b"xy")),          # an INFO request with a payload
        (1, P.encode_frame(0x03, M, b"abc")),                         # unknown type
        (1, P.encode_frame(MsgType.INFO, M, b"")),                    # a reply type
        (1, P.encode_frame(MsgType.INFER, M, _px(cfg, 2), version=2)),  # bad version
        (1, b"\x00garbage O\x4f\x4fxOS\x4fS" + b"OSO"),               # garbage, false starts
        (1, inf[4]),
        (1, P.encode_request(MsgType.INFER, M, os_px)),               # pixels that look like magics
        (1, inf[0][:12 + cfg.size // 2]),                             # truncated in the payload: TIMEOUT
        (T + 1, inf[5]),
        (1, inf[1][:7]),                                              # truncated in the header
        (T + 1, inf[0][:len(inf[0]) - 2]),                            # truncated in the CRC
        (T + 5, b"O"),                                                # a lone 0x4F: dropped
        (T + 1, P.encode_frame(MsgType.INFER, M, b"", version=7)[:12]),  # a bad header, then silence
        (T + 1, inf[3][:5]),                                          # gaps of exactly T: no timeout
        (T, inf[3][5:6]), (T, inf[3][6:14]), (T, inf[3][14:]),
        (1, inf[2]),
    )


@pytest.mark.parametrize("cfg", [CLS, MAP], ids=["classifier", "detector"])
def test_session_byte_for_byte(cfg):
    sched = session(cfg)
    got, want, bench = run_stream(cfg, sched)
    assert_same(got, want)
    # every kind of reply and error happened
    replies = P.Parser("host").feed(got)
    errs = {P.Error.decode(m.payload).code for m in replies if m.type == MsgType.ERROR}
    assert errs == {ErrorCode.BAD_CHECKSUM, ErrorCode.WRONG_MODEL, ErrorCode.BAD_LENGTH, ErrorCode.UNKNOWN_TYPE,
                    ErrorCode.BAD_VERSION, ErrorCode.TIMEOUT}
    results = [m.decode() for m in replies if m.type == MsgType.RESULT]
    assert len(results) == 9 and all(r.cycles > LAT for r in results)
    assert sum(1 for e in bench.events if e[3] and e[0]) == 4   # two bad CRCs, two timeouts: results dropped


def test_classifier_stalls():
    """Random back-pressure from the network's pixel input and the UART's TX, a pixel FIFO; no
    cycle counter (RESULT.cycles 0)."""
    got, want, _ = run_stream(CLS, session(CLS), net_stall=0.5, out_stall=0.5, pixel_fifo=4, count_cycles=False,
                              seed=3)
    assert_same(got, want)


def test_detector_reorder_and_stalls():
    """A map sent out of (C, GH, GW) order (per position, its channels: a conv readout) goes
    through MapReorder; with stalls everywhere."""
    C_, H, W = 2, 2, 3
    order = np.arange(C_ * H * W).reshape(C_, H, W).transpose(1, 2, 0).reshape(-1)
    got, want, _ = run_stream(MAP, session(MAP), order=order, reorder=True, net_stall=0.3, out_stall=0.3, seed=5)
    assert_same(got, want)
    # without MapReorder the same network sends the entries out of order
    got, want, _ = run_stream(MAP, schedule((1, P.encode_request(MsgType.INFER, MAP.mid, _px(MAP, 0)))), order=order)
    assert got != want and len(got) == len(want)


def test_info_reply_is_the_rom():
    info = P.Info(name="mnist-mlp", sha256="ee313a0751876be540de6cd2387d51ba55917d826b5955e3b3bf5bc2a020d168",
                  input_shape=(1, 28, 28), n_outputs=10, board="icebreaker", clock_hz=12_000_000)
    dev = ProtoDevice(info, ACC)
    assert dev.timeout_cycles == 1_200_000
    assert dev.tx.info_frame == P.encode_reply(info.model_id, info) and len(dev.tx.info_frame) == 124
    assert "ProtoDevice" not in rtlil.convert(dev, name="top")[:0] + "ok"   # it elaborates


# ---- ProtoRx and ProtoTx alone ---------------------------------------------------------------------

def test_rx_alone():
    """ProtoRx: the events and the pixel stream for good and bad frames (no network, no TX)."""
    cfg = CLS
    M, px = cfg.mid, _px(cfg, 4)
    good = P.encode_request(MsgType.INFER, M, px)
    data = (P.encode_request(MsgType.INFO_REQUEST, 0) + b"zzO" + good + _flip(good, 20)
            + P.encode_request(MsgType.INFER, M ^ 1, px))
    rx = ProtoRx(M, cfg.size, T)
    events, pixels = [], bytearray()

    async def driver(ctx):
        for b in data:
            ctx.set(rx.i.payload, b)
            ctx.set(rx.i.valid, 1)
            await ctx.tick().until(rx.i.ready)
        ctx.set(rx.i.valid, 0)
        for _ in range(20):
            await ctx.tick()

    async def sink(ctx):
        ctx.set(rx.pixels.ready, 1)
        ctx.set(rx.o.ready, 1)
        async for _, _, pv, pb, ov, ev in ctx.tick().sample(rx.pixels.valid, rx.pixels.payload, rx.o.valid, rx.o.payload):
            if pv:
                pixels.append(pb)
            if ov:
                events.append((ev.code, ev.type, ev.detail, ev.frame))

    sim = make_simulator(rx)
    sim.add_testbench(driver)
    sim.add_testbench(sink, background=True)
    run_bounded(sim, 10_000)
    bad_crc = zlib.crc32(_flip(good, 20)[:-4])
    assert events == [(0, MsgType.INFO_REQUEST, 0, 0), (0, MsgType.INFER, 0, 1),
                      (ErrorCode.BAD_CHECKSUM, MsgType.INFER, bad_crc, 1), (ErrorCode.WRONG_MODEL, MsgType.INFER, M ^ 1, 0)]
    assert bytes(pixels) == px + _flip(good, 20)[12:-4]
    assert len(EVENT_LAYOUT.members) == 4


def test_tx_alone():
    """ProtoTx: commands (and values) in, the frames boards.protocol encodes out."""
    cfg = CLS
    tx = ProtoTx(cfg.info)
    vals = [-5066327, 10586627, 0, -1, 1, 2 ** 31 - 1, -2 ** 31, 77, -77, 123456]
    cmds = [dict(op=Op.INFO), dict(op=Op.ERROR, code=ErrorCode.BAD_LENGTH, type=2, detail=784),
            dict(op=Op.RESULT, cls=7, cycles=0xDEADBEEF), dict(op=Op.ERROR, code=6, type=0, detail=1)]
    want = (P.encode_reply(cfg.mid, cfg.info) + P.encode_reply(cfg.mid, P.Error(2, 2, 784))
            + P.encode_reply(cfg.mid, P.Result(P.ResultKind.LOGITS, 7, logits=vals, cycles=0xDEADBEEF))
            + P.encode_reply(cfg.mid, P.Error(6, 0, 1)))
    got = bytearray()

    async def driver(ctx):
        for c in cmds:
            for f in ("op", "code", "type", "detail", "cls", "cycles"):
                ctx.set(getattr(tx.cmd.payload, f), c.get(f, 0))
            ctx.set(tx.cmd.valid, 1)
            await ctx.tick().until(tx.cmd.ready)
            ctx.set(tx.cmd.valid, 0)
        for _ in range(5):
            await ctx.tick()

    async def values(ctx):
        for v in vals:
            ctx.set(tx.values.payload, v)
            ctx.set(tx.values.valid, 1)
            await ctx.tick().until(tx.values.ready)
        ctx.set(tx.values.valid, 0)

    async def sink(ctx):
        ctx.set(tx.o.ready, 1)
        async for _, _, v, b in ctx.tick().sample(tx.o.valid, tx.o.payload):
            if v:
                got.append(b)

    sim = make_simulator(tx)
    sim.add_testbench(driver)
    sim.add_testbench(values, background=True)
    sim.add_testbench(sink, background=True)
    run_bounded(sim, 10_000)
    assert bytes(got) == want


# ---- through the UART ------------------------------------------------------------------------------

class UartLink(Elaboratable):
    """host UartTx -> device UartRx -> ProtoDevice -> device UartTx -> host UartRx."""

    def __init__(self, dev, d):
        self.dev, self.d = dev, d
        self.host_tx, self.host_rx = UartTx(d), UartRx(d)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dev = dev = self.dev
        m.submodules.dev_rx = dev_rx = UartRx(self.d)
        m.submodules.dev_tx = dev_tx = UartTx(self.d)
        m.submodules.host_tx, m.submodules.host_rx = self.host_tx, self.host_rx
        from amaranth.lib import wiring
        wiring.connect(m, dev_rx.o, dev.i)
        wiring.connect(m, dev.o, dev_tx.i)
        m.d.comb += [dev_rx.rx.eq(self.host_tx.tx), self.host_rx.rx.eq(dev_tx.tx)]
        return m


def test_through_the_uart():
    """Whole frames over 8N1 at divisor 4 (40 cycles a byte); the host waits for each reply (and
    for longer than the timeout after a truncated frame)."""
    cfg, d = CLS, 4
    tmo = 12 * d * 10           # 3 byte times
    M = cfg.mid
    inf = [P.encode_request(MsgType.INFER, M, _px(cfg, s)) for s in range(3)]
    reqs = [P.encode_request(MsgType.INFO_REQUEST, 0), inf[0], _flip(inf[1], 14), inf[1],
            P.encode_request(MsgType.INFER, M, _px(cfg, 1)[:5]), inf[0][:20], inf[2]]
    dev = ProtoDevice(cfg.info, ACC, timeout_cycles=tmo)
    link = UartLink(dev, d)
    bench = Bench(cfg, dev)
    # the reference: each request long after the one before, its reply (a timeout's too) before the next

    def want_for(infer):
        ref = P.Device(cfg.info, infer)
        return [ref.feed(r, 10_000 * k) + ref.tick(10_000 * k + 5_000) for k, r in enumerate(reqs)]
    want_lens = [len(w) for w in want_for(lambda p: stub_result(cfg, p))]
    done = []

    async def driver(ctx):
        for k, r in enumerate(reqs):
            for b in r:
                ctx.set(link.host_tx.i.payload, b)
                ctx.set(link.host_tx.i.valid, 1)
                await ctx.tick().until(link.host_tx.i.ready)
            ctx.set(link.host_tx.i.valid, 0)
            while len(bench.got) < sum(want_lens[:k + 1]):     # wait for the reply
                await ctx.tick()
        for _ in range(30 * d * 10):
            await ctx.tick()
        done.append(1)

    sim = make_simulator(link)
    sim.add_testbench(driver)
    sim.add_testbench(bench.network, background=True)
    sim.add_testbench(bench.monitor, background=True)
    sim.add_testbench(bench.collector(link.host_rx.o), background=True)
    run_bounded(sim, 300_000, lambda: done)
    want = b"".join(want_for(bench.infer()))
    assert_same(bytes(bench.got), want)
    assert [m.type for m in P.Parser("host").feed(bytes(bench.got))] == [
        MsgType.INFO, MsgType.RESULT, MsgType.ERROR, MsgType.RESULT, MsgType.ERROR, MsgType.ERROR, MsgType.RESULT]


# ---- a real network behind the protocol ------------------------------------------------------------

@pytest.mark.parametrize("what", ["classifier", "detector"])
def test_real_network(what):
    """ProtoNetwork (rtl.network.Network + ProtoDevice): INFO, INFERs, a bad CRC between them; the
    replies equal the reference device's whose inference is the golden model (its class and
    logits, or its readout map in (C, GH, GW) order; the cycles are the RTL's own)."""
    from randmodels import random_detector, random_images, valid_model
    from rtl.protocol import ProtoNetwork
    from runtime import golden

    if what == "classifier":
        model, rng = valid_model(0, ["conv2d", "maxpool", "dense"], 4)
    else:
        model, rng = random_detector(0, input_shape=(3, 8, 12)), np.random.default_rng(0)
    detect = what == "detector"
    n = int(np.prod(model.layers[-1].out_shape))
    info = P.Info(name="rand", sha256=CLS.sha256, input_shape=model.input_shape, n_outputs=n,
                  task=P.Task.DETECT if detect else P.Task.CLASSIFY,
                  result_kind=P.ResultKind.MAP if detect else P.ResultKind.LOGITS, flags=P.Flag.CYCLES)
    images = random_images(rng, model, 3)
    shape = tuple(model.input_shape)
    inf = [P.encode_request(MsgType.INFER, info.model_id, P.image_payload(x, shape)) for x in images]
    data = P.encode_request(MsgType.INFO_REQUEST, 0) + inf[0] + _flip(inf[1], 20) + inf[1] + inf[2]
    dut = ProtoNetwork(model, info, lanes=2, timeout_cycles=10_000)
    assert dut.dev.reorder == detect
    got = bytearray()
    n_want = len(P.Device(info, lambda p: P.Result(info.result_kind, 0, logits=[0] * n)).feed(data))

    async def driver(ctx):
        for b in data:
            ctx.set(dut.i.payload, b)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)
        while len(got) < n_want:
            await ctx.tick()

    async def sink(ctx):
        ctx.set(dut.o.ready, 1)
        async for _, _, v, b in ctx.tick().sample(dut.o.valid, dut.o.payload):
            if v:
                got.append(b)

    sim = make_simulator(dut)
    sim.add_testbench(driver)
    sim.add_testbench(sink, background=True)
    run_bounded(sim, 200_000)
    cycles = iter([m.decode().cycles for m in P.Parser("host").feed(bytes(got)) if m.type == MsgType.RESULT])

    def infer(payload):
        g = golden.run(model, P.payload_image(payload, shape)[None])
        if detect:
            return P.Result(P.ResultKind.MAP, None, logits=g.logits[0].reshape(-1), cycles=next(cycles))
        return P.Result(P.ResultKind.LOGITS, int(g.classes[0]), logits=g.logits[0], cycles=next(cycles))
    assert_same(bytes(got), P.Device(info, infer).feed(data))
