"""UART inference firmware (``codegen emit --target c --firmware uart``) and its host client
(``codegen deploy``): the device protocol v1 (docs/protocol.md) end to end, docs/deploy.md.

* :func:`emit_uart`: the generated C plus the hand-written firmware (``boards/mcu/common/uart_main.c``,
  ``uart_startup.c``, ``protocol.c``, the board's UART driver ``boards/mcu/<board>/uart.c``), a
  Makefile, and the ELF that Makefile builds (arm-none-eabi-gcc through ``make``).
* :func:`deploy`: open a serial port (``serial.serial_for_url``: a device such as ``/dev/ttyACM0``, or
  ``socket://127.0.0.1:PORT`` for an emulator), send INFO and check the model, stream frames, compare
  every RESULT with the golden model exactly, report frames per second over the link and the device's
  own cycles per frame.

Link failures (nothing at the port, no reply within ``--timeout``, a bad reply after the retries, a
device running another model) are :class:`LinkError`: one line, exit code 1.
"""
from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from boards import protocol as P
from boards.kinds import McuBoard
from runtime.errors import UserError
from runtime.spec import IntModel

# boards with a UART driver (boards/mcu/<board>/uart.c) and the processor clock the firmware runs at
# (no PLL set-up: the clock after reset; QEMU's mps2-an386 runs its SysTick at 25 MHz)
UART_BOARDS = {"mps2-an386": 25_000_000, "nucleo-f446re": 16_000_000}
DEFAULT_BAUD = 115200
DEFAULT_FRAMES = 100
DEVICE_TIMEOUT_MS = P.DEFAULT_TIMEOUT_MS
RETRIES = 2
SERIAL_SCHEMES = ("socket", "rfc2217", "loop", "spy", "alt", "hwgrep", "cp2110")

_FW_COMMON = ("protocol.c", "protocol.h", "board_uart.h", "uart_startup.c", "uart_main.c", "sections.ld")


class LinkError(UserError):
    """The device or the link failed (not the user's options): one line, exit code 1."""

    exit_code = 1


# ---- the firmware ------------------------------------------------------------------------------------

def check_uart_board(board_name: str | None) -> McuBoard:
    """The board of ``--firmware uart`` (one line naming those with a UART driver, else)."""
    from boards import registry

    b = registry.mcu(board_name, "emit --target c")
    if b.name not in UART_BOARDS:
        raise UserError(f"--firmware uart has no UART driver for {b.name} yet (only {', '.join(UART_BOARDS)}); "
                        f"its semihosting firmware builds: --firmware semihost")
    return b


def _c_string(s: str, n: int) -> str:
    """A name for a -D string define: at most ``n`` bytes of [A-Za-z0-9._+-] (others become '_')."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", s)[:n]


def uart_defines(model: IntModel, name: str, sha256: str, b: McuBoard, baud: int = DEFAULT_BAUD) -> list[str]:
    """uart_main.c's defines (no shell quoting: the Makefile quotes the two strings)."""
    from .c import emit as emit_c
    from .c import firmware

    sym = emit_c.c_symbol(name)
    c, h, w = (int(v) for v in model.input_shape)
    sha = bytes.fromhex(sha256)
    defs = [f"-DOS_INFER={sym}_infer", f"-DOS_INPUT_BUF={sym}_input", f"-DOS_INPUT_C={c}", f"-DOS_INPUT_H={h}",
            f"-DOS_INPUT_W={w}", f"-DOS_N_LOGITS={model.num_classes}", f"-DOS_CLOCK_HZ={UART_BOARDS[b.name]}u",
            f"-DOS_BAUD={int(baud)}u", f"-DOS_TIMEOUT_MS={DEVICE_TIMEOUT_MS}u",
            "-DOS_MODEL_SHA256=" + ",".join(f"0x{v:02x}" for v in sha),
            f'-DOS_MODEL_NAME="{_c_string(name, 32)}"', f'-DOS_BOARD_NAME="{_c_string(b.name, 16)}"']
    det = firmware.detect_defines(model, sym)
    return defs + [d for d in det if not d.startswith("-DOS_INPUT_BUF=")]


def _make_quote(d: str) -> str:
    return f"'{d}'" if '"' in d else d


def makefile(model: IntModel, name: str, sha256: str, b: McuBoard) -> str:
    from .c import emit as emit_c

    sym = emit_c.c_symbol(name)
    defs = " \\\n\t".join(_make_quote(d) for d in uart_defines(model, name, sha256, b))
    return f"""# Builds the UART inference firmware (device protocol v1) for {b.name}. Generated; deterministic.
CC = arm-none-eabi-gcc
OPT ?= -O2
CFLAGS = {' '.join(b.cpu_flags)} -std=c99 -Wall -Wextra -Werror $(OPT) -ffunction-sections -fdata-sections \\
	-fstack-usage -fcallgraph-info=su -I. \\
	{defs}
SRC = {sym}_model.c onespike.c protocol.c uart.c uart_startup.c uart_main.c

{sym}.elf: $(SRC) {sym}_model.h onespike.h protocol.h board_uart.h sections.ld memory.ld
	$(CC) $(CFLAGS) $(SRC) -nostartfiles --specs=nano.specs --specs=nosys.specs -Wl,--gc-sections \\
		-L. -T sections.ld -Wl,-Map,{sym}.map -o $@ -lgcc

clean:
	rm -f {sym}.elf {sym}.map *.su *.ci
"""


def uart_sources(model: IntModel, name: str, sha256: str, b: McuBoard) -> dict[str, bytes]:
    """Every file of the firmware folder but the ELF: generated C, the hand-written firmware, the Makefile."""
    from .c import emit as emit_c
    from .c import firmware

    files = emit_c.generate(model, name)
    for fn in _FW_COMMON:
        files[fn] = (firmware.COMMON / fn).read_bytes()
    files["uart.c"] = (b.folder / "uart.c").read_bytes()
    files["memory.ld"] = (b.folder / "memory.ld").read_bytes()
    files["Makefile"] = makefile(model, name, sha256, b).encode()
    return files


@dataclass
class UartFirmware:
    elf: Path
    src: Path
    board: McuBoard
    sizes: dict = field(default_factory=dict)


def build_uart(model: IntModel, name: str, sha256: str, b: McuBoard, work: Path, opt: str = "-O2") -> UartFirmware:
    """Write the firmware sources into ``work`` (replaced) and build the ELF with their Makefile."""
    from .c import emit as emit_c
    from .c import firmware
    from .c.toolchain import need, tool_error

    firmware.check_fit(model, b)
    need("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    make = need("make", "make")
    src = Path(work).resolve()
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for fn, data in uart_sources(model, name, sha256, b).items():
        (src / fn).write_bytes(data)
    cmd = [make, "-s", f"OPT={opt}"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=src)
    elf = src / f"{emit_c.c_symbol(name)}.elf"
    if r.returncode != 0 or not elf.is_file():
        raise tool_error("make + arm-none-eabi-gcc on the UART firmware (a codegen bug, please report it)", cmd, r,
                         src / "compile.log")
    fw = firmware.Firmware(elf, b, opt, src)
    return UartFirmware(elf, src, b, firmware.sizes(fw))


def emit_uart(model: IntModel, sha256: str, name: str, out: Path, board_name: str | None) -> dict:
    """``codegen emit --target c --firmware uart``: the firmware folder with its ELF and manifest."""
    from .lut import tool_versions, write_with_manifest
    from .c import emit as emit_c

    b = check_uart_board(board_name)
    tmp = Path(tempfile.mkdtemp(prefix="onespike-uart-"))
    fw = build_uart(model, name, sha256, b, tmp / "src")
    files = uart_sources(model, name, sha256, b)
    files[fw.elf.name] = fw.elf.read_bytes()
    shutil.rmtree(tmp, ignore_errors=True)
    sym = emit_c.c_symbol(name)
    manifest = {"target": "c", "firmware": "uart", "board": b.name, "clock_hz": UART_BOARDS[b.name],
                "protocol": P.VERSION, "elf": fw.elf.name, "sizes": fw.sizes,
                "model": {"name": name, "sha256": sha256, "symbol": sym}, "tools": tool_versions()}
    write_with_manifest(Path(out), files, manifest)
    return manifest


def format_emit(man: dict, out: Path) -> str:
    s = man["sizes"]
    stack = s.get("stack_bytes_static")
    mhz = man["clock_hz"] / 1e6
    return (f"UART firmware for {man['board']} ({mhz:g} MHz, device protocol v{man['protocol']}): "
            f"{man['elf']}: flash {s['flash_bytes']} B, RAM {s['ram_bytes']} B (+ stack, static bound "
            f"{stack if stack is not None else 'n/a'} B)\n"
            f"run it: {RUN_HINT[man['board']].format(elf=Path(out) / man['elf'])}; then codegen deploy MODEL.pt --port "
            f"{PORT_HINT[man['board']]} (docs/deploy.md)")


RUN_HINT = {
    "mps2-an386": "qemu-system-arm -M mps2-an386 -nographic -monitor none -icount shift=5 -kernel {elf} "
                  "-serial tcp:127.0.0.1:5555,server=on,wait=off,nodelay=on",
    "nucleo-f446re": "flash {elf} (e.g. openocd -f board/st_nucleo_f4.cfg -c 'program {elf} verify reset exit'; "
                     "not tried on a board yet) or emulate it: qemu-system-arm -M netduinoplus2 -nographic -monitor none "
                     "-kernel {elf} -serial null -serial tcp:127.0.0.1:5555,server=on,wait=off,nodelay=on",
}
PORT_HINT = {"mps2-an386": "socket://127.0.0.1:5555", "nucleo-f446re": "/dev/ttyACM0 (or socket://127.0.0.1:5555)"}


# ---- the host client ---------------------------------------------------------------------------------

def check_port(port) -> str:
    """``--port``: a serial device (``/dev/ttyACM0``, ``COM3``) or a pyserial URL (``socket://HOST:PORT``,
    ``rfc2217://HOST:PORT``, ``loop://``); a malformed one is a one-line UserError."""
    p = str(port or "").strip()
    hint = "give a serial device (/dev/ttyACM0, COM3) or socket://HOST:PORT"
    if not p:
        raise UserError(f"--port is empty; {hint}")
    if "://" in p:
        scheme, rest = p.split("://", 1)
        if scheme not in SERIAL_SCHEMES:
            raise UserError(f"--port {p}: unknown URL scheme {scheme}://; {hint} (or rfc2217://HOST:PORT, loop://)")
        if scheme in ("socket", "rfc2217"):
            hostport = rest.split("?", 1)[0].split("/", 1)[0]
            host, sep, num = hostport.rpartition(":")
            if not sep or not host or not num.isdigit() or not 1 <= int(num) <= 65535:
                raise UserError(f"--port {p}: a {scheme}:// URL is {scheme}://HOST:PORT with a port 1..65535")
        return p
    if ":" in p and not re.fullmatch(r"[A-Za-z]:\\.*", p):
        raise UserError(f"--port {p}: not a serial device; for a TCP port write socket://{p}")
    return p


def check_timeout(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 3600:
        raise UserError(f"--timeout must be a number of seconds in (0, 3600], not {v}")
    return float(v)


def _now_ms() -> int:
    return int(time.monotonic() * 1000) & 0xFFFFFFFF


def _need(p: P.Parser) -> int:
    """Bytes the host parser needs to end the frame it is in (the shortest reply from HUNT): reading
    exactly that many returns as soon as the reply is in, without waiting for a read timeout."""
    if p.state == P.HUNT:
        return P.OVERHEAD
    if p.state == P.MAGIC1:
        return P.OVERHEAD - 1
    if p.state == P.HEADER:
        return P.HEADER_SIZE - len(p._hdr) + P.CRC_SIZE
    if p.state == P.PAYLOAD:
        return p._len - p._got + P.CRC_SIZE
    return P.CRC_SIZE - len(p._crc_in)


class Link:
    """One device on a serial port: a request, its reply (with the host rules of docs/protocol.md)."""

    def __init__(self, port: str, baud: int = DEFAULT_BAUD, timeout: float = 5.0):
        import serial

        self.port, self.timeout, self.baud = port, float(timeout), int(baud)
        self.bad_replies = 0
        try:
            self.ser = serial.serial_for_url(port, baudrate=int(baud), timeout=0.05, write_timeout=self.timeout)
        except (serial.SerialException, ValueError, OSError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            why = re.sub(r"^(\[Errno \d+\] )?could not open port " + re.escape(port) + r": ", "", why, flags=re.IGNORECASE)
            raise LinkError(f"cannot open {port}: {why}") from None
        self.parser = P.Parser("host")
        self.device_timeout_ms = DEVICE_TIMEOUT_MS

    def close(self):
        try:
            self.ser.close()
        except Exception:  # noqa: BLE001 - closing a dead link must not hide the real error
            pass

    def quiet(self):
        """Stay silent for longer than the device's inter-byte timeout (it is back in HUNT then) and
        drop whatever arrived meanwhile."""
        time.sleep(self.device_timeout_ms / 1000 * 1.2 + 0.01)
        try:
            self.ser.reset_input_buffer()
        except Exception:  # noqa: BLE001
            pass
        self.parser = P.Parser("host")

    def _write(self, frame: bytes):
        import serial

        try:  # a real UART needs 10 bit times a byte: a 57,600-pixel frame is 5 s at 115200 baud
            self.ser.write_timeout = self.timeout + 10 * len(frame) / max(self.baud, 1)
            self.ser.write(frame)
            self.ser.flush()
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"{self.port}: writing to the device failed ({e})") from None

    def exchange(self, frame: bytes, what: str):
        """Send ``frame``, return its reply: a :class:`boards.protocol.Message` or the host parser's
        :class:`boards.protocol.Error` (a reply that does not parse). No reply within the timeout:
        :class:`LinkError`."""
        import serial

        req_type = frame[3]
        self._write(frame)
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LinkError(f"no reply from the device on {self.port} within {self.timeout:g} s (to {what}); "
                                f"is the UART firmware running there, at this baud rate?")
            self.ser.timeout = min(0.25, max(left, 0.001))
            try:
                data = self.ser.read(_need(self.parser))
            except (serial.SerialException, OSError) as e:
                raise LinkError(f"{self.port}: reading from the device failed ({e})") from None
            evs = self.parser.feed(data, _now_ms()) if data else self.parser.tick(_now_ms())
            for ev in evs:
                if isinstance(ev, P.Message) and ev.type == P.MsgType.ERROR:
                    err = P.Error.decode(ev.payload)
                    if err.request_type not in (0, req_type):
                        continue  # a stray ERROR of a frame we did not send (line noise)
                return ev

    def request(self, frame: bytes, want: int, what: str):
        """:meth:`exchange` with the host rules: a bad reply or an ERROR (to a good frame: the link
        corrupted it) is reported, the line is kept quiet and the request sent again, up to RETRIES
        times. Returns the decoded reply of type ``want``."""
        last = None
        for attempt in range(RETRIES + 1):
            ev = self.exchange(frame, what)
            if isinstance(ev, P.Error):
                last = f"bad reply from the device to {what}: {ev.describe().removeprefix('device error: ')}"
            elif ev.type == P.MsgType.ERROR:
                last = f"{P.Error.decode(ev.payload).describe()} (to {what})"
            elif ev.type != want:
                last = f"the device answered {what} with a {P._name(P.MsgType, ev.type)} message"
            else:
                try:
                    return ev.decode()
                except P.ProtocolError as e:
                    last = f"bad reply from the device to {what}: {e}"
            self.bad_replies += 1
            if attempt < RETRIES:
                print(f"codegen: {last}; retrying", file=sys.stderr)
                self.quiet()
        raise LinkError(f"{last} (after {RETRIES} retries)")


@dataclass
class DeployResult:
    info: P.Info
    n: int
    matched: int
    first_mismatch: str | None
    seconds: float
    cycles: list[int]
    bad_replies: int

    @property
    def fps(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("inf")


def check_info(info: P.Info, want: P.Info, model_path) -> None:
    if info.sha256 != want.sha256:
        raise LinkError(f"the device on this port runs model {info.name!r} (sha256 {info.sha256[:16]}...), not "
                        f"{model_path} ({want.name!r}, sha256 {want.sha256[:16]}...); flash the firmware of "
                        f"codegen emit {model_path} --target c --firmware uart")
    if tuple(info.input_shape) != tuple(want.input_shape):
        raise LinkError(f"the device takes input {tuple(info.input_shape)}, the model {tuple(want.input_shape)}")
    if info.protocol != P.VERSION:
        raise LinkError(f"the device speaks protocol version {info.protocol}, this host {P.VERSION}")
    ok_kinds = (P.ResultKind.DETECTIONS, P.ResultKind.MAP) if want.task == P.Task.DETECT else (P.ResultKind.LOGITS,)
    if info.result_kind not in ok_kinds:
        raise LinkError(f"the device answers RESULT kind {info.result_kind}, which does not fit a "
                        f"{'detector' if want.task == P.Task.DETECT else 'classifier'}")


def compare(model: IntModel, gold, i: int, res: P.Result) -> str | None:
    """The first difference of a RESULT from the golden model on image ``i``, or None (exact)."""
    from .c.host import detection_mismatch

    if model.task == "detect":
        map_shape = tuple(int(v) for v in model.layers[-1].out_shape)
        dets = res.decoded_detections(model.head, tuple(model.input_shape[1:]), map_shape)
        d = detection_mismatch(gold.detections[i], dets)
        if d:
            return f"image {i}: {d}"
        if res.kind == P.ResultKind.MAP and not np.array_equal(res.logits, gold.logits[i]):
            return f"image {i}: readout map differs"
    else:
        if len(res.logits) != gold.logits.shape[1] or not np.array_equal(res.logits, gold.logits[i]):
            j = next((k for k in range(min(len(res.logits), gold.logits.shape[1]))
                      if res.logits[k] != gold.logits[i, k]), None)
            if j is None:
                return f"image {i}: {len(res.logits)} logits, expected {gold.logits.shape[1]}"
            return f"image {i}, logit {j}: expected {int(gold.logits[i, j])}, got {int(res.logits[j])}"
    if res.cls is not None and res.cls != int(gold.classes[i]):
        return f"image {i}, class: expected {int(gold.classes[i])}, got {res.cls}"
    return None


def deploy(model: IntModel, model_path, images: np.ndarray, port: str, baud: int = DEFAULT_BAUD,
           timeout: float = 5.0, progress: bool = False) -> DeployResult:
    """Run ``images`` on the device at ``port`` and compare every RESULT with the golden model."""
    from tqdm import tqdm

    from runtime import golden

    want = P.Info.for_model(model_path)
    gold = golden.run(model, images, keep_phases=False)
    link = Link(port, baud, timeout)
    try:
        link.quiet()  # a frame a previous host left half-sent times out first
        info = link.request(P.encode_request(P.MsgType.INFO_REQUEST, P.ANY_MODEL), P.MsgType.INFO, "the INFO request")
        check_info(info, want, model_path)
        link.device_timeout_ms = max(int(info.timeout_ms), 1)
        mid, shape = info.model_id, tuple(model.input_shape)
        frames = [P.encode_request(P.MsgType.INFER, mid, P.image_payload(x, shape)) for x in images]
        matched, first, cycles = 0, None, []
        bar = tqdm(total=len(frames), desc=f"deploy {port}", unit="frame", disable=not progress, leave=False,
                   file=sys.stderr)
        t0 = time.perf_counter()
        try:
            for i, f in enumerate(frames):
                res = link.request(f, P.MsgType.RESULT, f"INFER {i}")
                diff = compare(model, gold, i, res)
                if diff is None:
                    matched += 1
                elif first is None:
                    first = diff
                if info.flags & P.Flag.CYCLES:
                    cycles.append(res.cycles)
                bar.update()
        finally:
            bar.close()
        secs = time.perf_counter() - t0
        return DeployResult(info, len(frames), matched, first, secs, cycles, link.bad_replies)
    finally:
        link.close()


def format_result(r: DeployResult, payload_bytes: int) -> str:
    i = r.info
    what = {P.ResultKind.LOGITS: "logits and class", P.ResultKind.DETECTIONS: "detections and class",
            P.ResultKind.MAP: "readout map and detections"}.get(i.result_kind, "results")
    clock = f" at {i.clock_hz / 1e6:g} MHz" if i.clock_hz else ""
    lines = [f"device: {i.name} on {i.board or '?'}{clock}, sha256 {i.sha256[:16]}..., input {tuple(i.input_shape)}",
             f"{r.matched}/{r.n} matched ({what} equal the golden model exactly)"]
    if r.first_mismatch:
        lines.append(f"first mismatch: {r.first_mismatch}")
    lines.append(f"link: {r.n} frames in {r.seconds:.2f} s: {r.fps:.1f} frames/s "
                 f"({r.n * (payload_bytes + P.OVERHEAD) / max(r.seconds, 1e-9) / 1024:.0f} KiB/s of INFER frames)")
    if r.cycles:
        med = statistics.median(r.cycles)
        ms = f" = {med / i.clock_hz * 1e3:.2f} ms at {i.clock_hz / 1e6:g} MHz" if i.clock_hz else ""
        lines.append(f"device cycles per frame (as the device counts them): median {med:,.0f}{ms} "
                     f"(min {min(r.cycles):,}, max {max(r.cycles):,})")
    else:
        lines.append("device cycles per frame: not reported by this device")
    if r.bad_replies:
        lines.append(f"bad replies retried: {r.bad_replies}")
    return "\n".join(lines)
