"""codegen deploy and the UART firmware, end to end: the firmware of ``codegen emit --target c --firmware
uart`` under QEMU mps2-an386 with its UART0 on a TCP socket, the real client through ``socket://``
(docs/deploy.md). Without QEMU, the client against a reference device (boards.protocol.Device) on a
local socket: bad replies, a wrong model, option errors."""
import contextlib
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from boards import protocol as P
from boards import registry
from codegen import cli, deploy
from codegen.frontend import datasets
from runtime import golden, modelfile

pytest.importorskip("serial")

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "models" / "mnist-mlp.pt"
CNN = ROOT / "models" / "mnist-cnn.pt"
DET = ROOT / "models" / "bccd-det.pt"
needs_qemu = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                                reason="needs gcc-arm-none-eabi and qemu-system-arm (scripts/setup.sh installs them)")
# QEMU's SysTick runs on its virtual clock; with -icount shift=5 one instruction is 32 ns of it, so the
# device's SysTick count at 25 MHz is 0.8 x the instructions executed (deterministic)
ICOUNT_SHIFT = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def qemu(elf: Path, paused: bool = False, machine: str = "mps2-an386", uart_index: int = 0):
    """QEMU ``machine`` running ``elf`` with its ``uart_index``-th serial port on a TCP server socket
    (the ones before it: null); yields the port. Always killed."""
    port = _free_port()
    cmd = ["qemu-system-arm", "-M", machine, "-nographic", "-monitor", "none", "-icount", f"shift={ICOUNT_SHIFT}",
           "-kernel", str(elf)] + ["-serial", "null"] * uart_index + \
          ["-serial", f"tcp:127.0.0.1:{port},server=on,wait=off,nodelay=on"] + (["-S"] if paused else [])
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:  # until QEMU listens (the probe connection is closed again: QEMU takes the next one)
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "QEMU did not open its serial socket"
                time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def firmwares(tmp_path_factory):
    """UART firmware ELFs, built once per model (lazily)."""
    built = {}

    def get(path: Path, board: str = "mps2-an386"):
        if (path, board) not in built:
            m = modelfile.load(path)
            name = path.name.removesuffix(".pt")
            fw = deploy.build_uart(m, name, modelfile.file_sha256(path), registry.mcu(board),
                                   tmp_path_factory.mktemp(name) / "src")
            built[path, board] = fw
        return built[path, board]
    return get


def _deploy_cli(capsys, *args):
    rc = cli.main(["deploy", *map(str, args), "-q"])
    out, err = capsys.readouterr()
    return rc, out, err


# ---- under QEMU ----------------------------------------------------------------------------------------

@needs_qemu
def test_mnist_mlp_100_images_match_over_the_emulated_uart(firmwares, capsys):
    fw = firmwares(MLP)
    assert fw.sizes["ram_bytes"] < 16 << 10 and fw.sizes["stack_bytes_static"]
    with qemu(fw.elf) as port:
        rc, out, err = _deploy_cli(capsys, MLP, "--port", f"socket://127.0.0.1:{port}", "-n", 100)
    assert rc == 0, err
    assert "100/100 matched" in out and "frames/s" in out and "device cycles per frame" in out
    assert "mnist-mlp on mps2-an386 at 25 MHz" in out


@needs_qemu
def test_device_cycles_are_systick_counts_of_the_inference(firmwares):
    """Under -icount shift=5 the device's SysTick count is 0.8 x the instructions of the inference:
    the same figure Unicorn counts for the semihosting firmware (same generated code, -O2)."""
    from codegen.c import emulators, firmware

    m = modelfile.load(MLP)
    x, _ = datasets.load("mnist", "test")
    with qemu(firmwares(MLP).elf) as port:
        res = deploy.deploy(m, MLP, x[:5], f"socket://127.0.0.1:{port}", timeout=10)
    assert res.matched == 5 and res.info.flags & P.Flag.CYCLES
    run = emulators.run_unicorn(firmware.build_firmware(m, "mnist-mlp", registry.mcu("mps2-an386"),
                                                        Path(firmwares(MLP).src).parent / "sh"), x[:5], m.num_classes)
    for cyc, ins in zip(res.cycles, run.instructions):
        assert abs(cyc - 0.8 * ins) < 100, (res.cycles, run.instructions)


@needs_qemu
def test_mnist_cnn_100_images_match(firmwares, capsys):
    with qemu(firmwares(CNN).elf) as port:
        rc, out, err = _deploy_cli(capsys, CNN, "--port", f"socket://127.0.0.1:{port}", "-n", 100, "--timeout", 20)
    assert rc == 0, err
    assert "100/100 matched" in out


@needs_qemu
def test_detector_detections_match_over_the_uart(firmwares, capsys):
    m = modelfile.load(DET)
    from codegen.c import report as c_report

    x = c_report._test_images(m, m.meta["dataset"], 3)
    assert sum(len(d) for d in golden.run(m, x, keep_phases=False).detections) > 0  # something to compare
    with qemu(firmwares(DET).elf) as port:
        rc, out, err = _deploy_cli(capsys, DET, "--port", f"socket://127.0.0.1:{port}", "-n", 3, "--timeout", 60)
    assert rc == 0, err
    assert "3/3 matched (detections and class" in out


def _has_machine(name: str) -> bool:
    if shutil.which("qemu-system-arm") is None:
        return False
    r = subprocess.run(["qemu-system-arm", "-M", "help"], capture_output=True, text=True)
    return any(line.split()[:1] == [name] for line in r.stdout.splitlines())


@needs_qemu
@pytest.mark.skipif(not _has_machine("netduinoplus2"), reason="needs QEMU's netduinoplus2 (STM32F405) machine")
def test_nucleo_f446re_usart2_firmware_under_qemu_netduinoplus2(firmwares, capsys):
    """The STM32F4 USART2 driver on QEMU's STM32F405 (its second serial port). QEMU clocks that SoC's
    SysTick at 168 MHz, not the 16 MHz HSI the firmware assumes: cycles are 5.4 x instructions there."""
    fw = firmwares(MLP, "nucleo-f446re")
    with qemu(fw.elf, machine="netduinoplus2", uart_index=1) as port:
        rc, out, err = _deploy_cli(capsys, MLP, "--port", f"socket://127.0.0.1:{port}", "-n", 20)
    assert rc == 0, err
    assert "20/20 matched" in out and "mnist-mlp on nucleo-f446re at 16 MHz" in out


def _reply(sock: socket.socket, timeout: float = 5.0):
    """The next reply frame on a raw socket, decoded (Info, Result or Error)."""
    parser = P.Parser("host")
    sock.settimeout(0.1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        assert data, "QEMU closed the connection"
        evs = parser.feed(data)
        if evs:
            assert len(evs) == 1 and isinstance(evs[0], P.Message), evs
            return evs[0].decode()
    raise AssertionError("no reply")


@needs_qemu
def test_bad_frames_get_their_errors_and_the_device_stays_usable(firmwares):
    m = modelfile.load(MLP)
    sha = modelfile.file_sha256(MLP)
    mid = P.model_id(sha)
    x, _ = datasets.load("mnist", "test")
    g = golden.run(m, x[:2], keep_phases=False)
    good = [P.encode_request(P.MsgType.INFER, mid, P.image_payload(x[i], (1, 28, 28))) for i in range(2)]
    with qemu(firmwares(MLP).elf) as port, socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(P.encode_request(P.MsgType.INFO_REQUEST, P.ANY_MODEL))
        info = _reply(s)
        assert isinstance(info, P.Info) and info.sha256 == sha and info.name == "mnist-mlp"
        assert info.input_shape == (1, 28, 28) and info.board == "mps2-an386" and info.clock_hz == 25_000_000
        assert info.timeout_ms == P.DEFAULT_TIMEOUT_MS and info.flags == P.Flag.CYCLES
        assert info == P.Info.for_model(MLP, board="mps2-an386", clock_hz=25_000_000, flags=P.Flag.CYCLES)

        bad = bytearray(good[0])
        bad[500] ^= 0xFF  # a pixel: the CRC no longer matches
        s.sendall(bytes(bad))
        e = _reply(s)
        assert e == P.Error(P.ErrorCode.BAD_CHECKSUM, P.MsgType.INFER, P.crc32(bytes(bad[:-4])))
        s.sendall(P.encode_request(P.MsgType.INFER, mid, bytes(100)))  # wrong length
        assert _reply(s) == P.Error(P.ErrorCode.BAD_LENGTH, P.MsgType.INFER, 784)
        s.sendall(P.encode_frame(P.MsgType.INFER, mid ^ 1, bytes(784)))  # another model's id
        assert _reply(s) == P.Error(P.ErrorCode.WRONG_MODEL, P.MsgType.INFER, mid ^ 1)
        s.sendall(good[0][:300])  # half a frame, then silence: the inter-byte timeout
        assert _reply(s) == P.Error(P.ErrorCode.TIMEOUT, P.MsgType.INFER, 300)
        s.sendall(b"garbage" + good[1])  # garbage before a frame is skipped
        r = _reply(s)
        assert isinstance(r, P.Result) and r.cls == g.classes[1] and np.array_equal(r.logits, g.logits[1])
        s.sendall(good[0])
        r = _reply(s)
        assert isinstance(r, P.Result) and r.cls == g.classes[0] and np.array_equal(r.logits, g.logits[0])
        assert r.cycles > 0


@needs_qemu
def test_a_paused_device_gives_the_timeout_error_not_a_hang(firmwares, capsys):
    with qemu(firmwares(MLP).elf, paused=True) as port:
        t = time.monotonic()
        rc, out, err = _deploy_cli(capsys, MLP, "--port", f"socket://127.0.0.1:{port}", "-n", 2, "--timeout", 1)
        took = time.monotonic() - t
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "no reply from the device" in err and "within 1 s" in err
    assert took < 1 + 2, took


@needs_qemu
def test_emit_firmware_uart_writes_the_sources_makefile_and_elf(tmp_path, capsys):
    out = tmp_path / "fw"
    assert cli.main(["emit", str(MLP), "--target", "c", "--firmware", "uart", "-o", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "UART firmware for mps2-an386" in text and f"wrote {out}" in text
    names = {p.name for p in out.iterdir()}
    assert {"uart_main.c", "uart_startup.c", "uart.c", "protocol.c", "board_uart.h", "Makefile", "mnist_mlp.elf",
            "mnist_mlp_model.c", "manifest.json"} <= names
    assert "fw_main.c" not in names and "semihost.c" not in names
    elf = (out / "mnist_mlp.elf").read_bytes()
    r = subprocess.run(["make", "-s", "-B"], cwd=out, capture_output=True, text=True)  # the Makefile builds it
    assert r.returncode == 0, r.stderr
    assert (out / "mnist_mlp.elf").read_bytes() == elf  # deterministic
    # again into the same folder: replaced (it is a c output); the semihost default is unchanged
    assert cli.main(["emit", str(MLP), "--target", "c", "--firmware", "uart", "-o", str(out), "-q", "--force"]) == 0


# ---- the client without QEMU: a reference device on a local socket ------------------------------------

class FakeDevice:
    """boards.protocol.Device for a model file on a local TCP socket (one client); ``corrupt``: indices
    of replies whose last CRC byte is flipped; ``model``: the file the device claims to run."""

    def __init__(self, model_path: Path, corrupt=(), answers_for: Path | None = None):
        m = modelfile.load(model_path)
        info = P.Info.for_model(answers_for or model_path, board="fake", clock_hz=0)
        shape = tuple(m.input_shape)

        def infer(payload):
            g = golden.run(m, P.payload_image(payload, shape)[None], keep_phases=False)
            return P.Result(P.ResultKind.LOGITS, int(g.classes[0]), logits=g.logits[0])

        self.device = P.Device(info, infer)
        self.corrupt = set(corrupt)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.replies = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        conn, _ = self.sock.accept()
        conn.settimeout(0.02)
        with conn:
            while not self._stop:
                now = int(time.monotonic() * 1000)
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    out = self.device.tick(now)
                else:
                    if not data:
                        return
                    out = self.device.feed(data, now)
                if out:
                    if self.replies in self.corrupt:
                        out = out[:-1] + bytes([out[-1] ^ 1])
                    self.replies += 1
                    conn.sendall(out)

    def close(self):
        self._stop = True
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def fake():
    made = []

    def make(*a, **k):
        made.append(FakeDevice(*a, **k))
        return made[-1]
    yield make
    for d in made:
        d.close()


def test_client_reports_a_bad_reply_and_retries(fake, capsys):
    dev = fake(MLP, corrupt={2})  # reply 0: INFO, 1: the first RESULT, 2: the second (corrupted)
    rc, out, err = _deploy_cli(capsys, MLP, "--port", f"socket://127.0.0.1:{dev.port}", "-n", 4)
    assert rc == 0, err
    assert "4/4 matched" in out and "bad replies retried: 1" in out
    assert "bad reply from the device to INFER 1: bad checksum" in err and "retrying" in err
    assert "device cycles per frame: not reported" in out


def test_client_gives_up_on_a_link_that_corrupts_every_reply(fake, capsys):
    dev = fake(MLP, corrupt=set(range(1, 100)))
    rc, out, err = _deploy_cli(capsys, MLP, "--port", f"socket://127.0.0.1:{dev.port}", "-n", 2)
    assert rc == 1 and out == ""
    assert err.strip().splitlines()[-1].startswith("codegen: error: bad reply from the device to INFER 0: bad checksum")
    assert "after 2 retries" in err


def test_a_device_running_another_model_is_one_line_naming_both(fake, capsys):
    dev = fake(MLP, answers_for=CNN)
    rc, out, err = _deploy_cli(capsys, MLP, "--port", f"socket://127.0.0.1:{dev.port}", "-n", 2)
    assert rc == 1 and out == "" and err.count("\n") == 1
    assert "'mnist-cnn'" in err and "mnist-mlp" in err and modelfile.file_sha256(CNN)[:16] in err
    assert modelfile.file_sha256(MLP)[:16] in err


def test_nothing_listening_is_one_line_exit_1(capsys):
    port = _free_port()
    t = time.monotonic()
    rc, out, err = _deploy_cli(capsys, MLP, "--port", f"socket://127.0.0.1:{port}", "-n", 2, "--timeout", 1)
    assert rc == 1 and out == "" and err.count("\n") == 1
    assert f"cannot open socket://127.0.0.1:{port}" in err
    assert time.monotonic() - t < 1 + 2


@pytest.mark.parametrize("args, msg", [
    (["--port", "socket://127.0.0.1"], "socket://HOST:PORT"),
    (["--port", "socket://127.0.0.1:99999"], "socket://HOST:PORT"),
    (["--port", "tcp://127.0.0.1:5555"], "unknown URL scheme tcp://"),
    (["--port", "127.0.0.1:5555"], "socket://127.0.0.1:5555"),
    (["--port", ""], "--port is empty"),
    (["--port", "LISTEN", "-n", "0"], "-n must be a positive integer, not 0"),
    (["--port", "LISTEN", "--input", "x.npy", "--dataset", "mnist"], "not both"),
    (["--port", "LISTEN", "--timeout", "0"], "--timeout must be"),
    (["--port", "LISTEN", "--baud", "-5"], "--baud must be a positive integer"),
])
def test_option_errors_are_one_line_exit_2_before_any_connection(args, msg, capsys):
    with socket.socket() as srv:  # a listener that would see a connection
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(0.2)
        args = [a.replace("LISTEN", f"socket://127.0.0.1:{srv.getsockname()[1]}") for a in args]
        rc, out, err = _deploy_cli(capsys, MLP, *args)
        with pytest.raises(socket.timeout):
            srv.accept()
    assert rc == 2 and out == "" and err.count("\n") == 1 and msg in err, err


@pytest.mark.parametrize("args, msg", [
    (["--target", "fpga", "--firmware", "uart"], "--firmware applies to the c target"),
    (["--target", "c", "--firmware", "uart", "--board", "rp2040-pico"], "no UART driver for rp2040-pico yet"),
    (["--target", "c", "--firmware", "uart", "--count-images", "3"], "--count-images"),
])
def test_emit_firmware_option_errors(args, msg, tmp_path, capsys):
    out = tmp_path / "o"
    rc = cli.main(["emit", str(MLP), *args, "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and msg in err, err
    assert not out.exists()
