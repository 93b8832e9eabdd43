"""cocotb bench of the FPGA board top (``rtl.boards.BoardCore``): its UART pins on a TCP socket.

Run by :class:`codegen.fpga.board_sim.SimBoard`. It reads the JSON file named by
``ONESPIKE_BOARD_BENCH``: the clock, the baud rate, where to write the socket's port (``port_file``),
the stop file, the results file and the cycle budgets.

The board's ``rx`` pin is driven by a cocotbext-uart ``UartSource`` and its ``tx`` pin read by a
``UartSink``, both 8N1 at the board's baud rate, so the bytes cross a real UART line, bit by bit,
in both directions. The bench listens on ``127.0.0.1`` (a free port) and bridges: bytes from the
connected host go to the source, bytes from the sink to the host, a whole reply frame at a time
(as a USB UART delivers them in packets: a simulator is far slower than the board, and a host
would otherwise see real-time gaps inside a reply and time it out; what is no frame goes on at
once, and whatever is left when the board falls silent). The host is any serial client:
``codegen deploy --port socket://127.0.0.1:PORT`` (pyserial's ``socket://``), exactly as it talks to
QEMU or to a USB UART.

Simulated time and the host's wall-clock time: the simulator runs while the source is sending, and
for ``busy_cycles`` after the last byte in either direction (long enough for any frame's result,
or for the device's inter-byte timeout); after that it waits for the host without simulating. When
the host sends after a silence of ``silence_s`` or more (wall time, since its last byte or the
last reply it got), ``max_silence_cycles`` (twice the device's timeout) have passed on the board
before the bytes arrive, so a host that waits for the device's timeout (the protocol's "stay
quiet, then resend") finds it expired, as on the board; shorter pauses (a host's own latency
between frames) are not simulated.

The bench ends when the stop file appears (between connections) or after ``max_wall_s``; it writes
the cycle count, the bytes each way and the board's LED states to ``results``.
"""
import json
import os
import select
import socket
import struct
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Timer
from cocotbext.uart import UartSink, UartSource

from boards.protocol import HEADER_SIZE, MAGIC, OVERHEAD

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)   # Linux


def whole_frames(buf: bytearray, flush: bool) -> bytes:
    """Take from ``buf`` what goes to the host now: the bytes before a magic, and every complete
    frame (its length from its header); all of it with ``flush``."""
    if flush:
        out = bytes(buf)
        buf.clear()
        return out
    out = bytearray()
    while buf:
        k = buf.find(MAGIC)
        if k != 0:
            k = len(buf) - (buf[-1:] == MAGIC[:1]) if k < 0 else k   # a lone last "O" may start a magic
            out += buf[:k]
            del buf[:k]
            if k == 0:
                break
            continue
        if len(buf) < HEADER_SIZE:
            break
        n = OVERHEAD + int.from_bytes(buf[8:12], "little")
        if len(buf) < n:
            break
        out += buf[:n]
        del buf[:n]
    return bytes(out)


def receive(conn):
    """(wall time the bytes arrived, bytes) from the host, (None, None) when none is waiting, or
    (None, b"") when it closed. The time is the kernel's receive time stamp (``SO_TIMESTAMPNS``),
    not when the simulation got round to reading it."""
    try:
        data, anc, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(16))
    except BlockingIOError:
        return None, None
    except OSError:
        return None, b""
    t = time.time()
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= 16:
            sec, nsec = struct.unpack("qq", cdata[:16])
            t = sec + nsec * 1e-9
    return t, data


@cocotb.test()
async def board(dut):
    with open(os.environ["ONESPIKE_BOARD_BENCH"]) as fh:
        cfg = json.load(fh)
    clock_hz, baud = int(cfg["clock_hz"]), int(cfg["baud"])
    period_ps = 2 * round(5e11 / clock_hz)      # even: cocotb splits it into two half periods
    busy_cycles, max_silence = int(cfg["busy_cycles"]), int(cfg["max_silence_cycles"])
    silence_s = float(cfg["silence_s"])
    chunk = max(1, int(cfg.get("chunk_cycles", 64)))
    cocotb.start_soon(Clock(dut.clk, period_ps, unit="ps").start())
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    source = UartSource(dut.rx, baud=baud, bits=8, stop_bits=1)
    sink = UartSink(dut.tx, baud=baud, bits=8, stop_bits=1)

    cycles = {"now": 0}

    async def run(n):
        await Timer(n * period_ps, "ps")
        cycles["now"] += n

    stats = {"connections": 0, "bytes_to_board": 0, "bytes_from_board": 0, "waited_for_load_cycles": 0,
             "silence_cycles": 0}
    # the weights (a "ram" store) come from the flash model first; bytes sent before are dropped
    # by the board, so the host's first request would wait for its timeout: wait here instead
    while not dut.loaded.value:
        await run(1024)
        stats["waited_for_load_cycles"] += 1024
        if cycles["now"] > int(cfg["max_load_cycles"]):
            raise AssertionError(f"the board did not load its weights in {cycles['now']} cycles")

    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    tmp = cfg["port_file"] + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(str(srv.getsockname()[1]))
    os.replace(tmp, cfg["port_file"])
    t_end = time.monotonic() + float(cfg["max_wall_s"])
    error = None
    try:
        while error is None:
            # between connections: stop when told to
            conn = None
            while conn is None:
                if os.path.exists(cfg["stop_file"]):
                    break
                if time.monotonic() > t_end:
                    error = f"no host for {cfg['max_wall_s']} s"
                    break
                r, _, _ = select.select([srv], [], [], 0.05)
                if r:
                    conn, _ = srv.accept()
            if conn is None:
                break
            stats["connections"] += 1
            conn.setblocking(False)
            conn.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            host_real, host_cycle, budget = time.time(), cycles["now"], busy_cycles
            pending = bytearray()       # bytes from the board not yet sent on (see whole_frames)
            try:
                while True:
                    if time.monotonic() > t_end:
                        error = f"still connected after {cfg['max_wall_s']} s"
                        break
                    if source.empty() and source.idle() and budget <= 0 and not pending:
                        select.select([conn], [], [], 0.02)     # idle: wait for the host, not the clock
                    t, data = receive(conn)
                    if data == b"":
                        break                        # the host closed the link
                    if data:
                        # a silence of the host long enough for the device's timeout: simulated first
                        if t - host_real >= silence_s and source.empty() and source.idle():
                            gap = max_silence - (cycles["now"] - host_cycle)
                            if gap > 0:
                                stats["silence_cycles"] += gap
                                await run(gap)
                        await source.write(data)
                        stats["bytes_to_board"] += len(data)
                        host_real, host_cycle, budget = t, cycles["now"], busy_cycles
                    if not sink.empty():
                        pending += sink.read_nowait(sink.count())
                        budget = busy_cycles
                    out = whole_frames(pending, flush=budget <= 0) if pending else b""
                    if out:
                        try:
                            conn.sendall(out)
                        except OSError:
                            break
                        stats["bytes_from_board"] += len(out)
                        host_real, host_cycle = time.time(), cycles["now"]
                    if not (source.empty() and source.idle()) or budget > 0:
                        await run(chunk)
                        if source.empty() and source.idle():
                            budget -= chunk
            finally:
                conn.close()
    finally:
        srv.close()
        stats.update(cycles=cycles["now"], error=error, led_error=int(dut.led_error.value),
                     led_busy=int(dut.led_busy.value), loaded=int(dut.loaded.value))
        tmp = cfg["results"] + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(stats, fh)
        os.replace(tmp, cfg["results"])
    assert error is None, error
