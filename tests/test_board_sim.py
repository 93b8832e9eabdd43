"""The FPGA board top end to end in a Verilog simulator: ``codegen deploy --sim`` (codegen/fpga/board_sim.py).

The design of ``codegen build --board`` (rtl.boards.BoardCore: UART, protocol RTL, network, flash
loader) runs under Verilator or Icarus; cocotbext-uart drives and reads its UART pins, bit by bit,
and the bench bridges them to a TCP socket. The real client (``codegen.deploy``, pyserial's
``socket://``) and raw sockets speaking boards.protocol talk to it:

* the MNIST MLP on the iCEBreaker (lanes and store as ``codegen build`` picks them: the first layer's
  weights in SPRAM, loaded from the flash model at 1 MiB) under Verilator: every bad frame gets its
  ERROR and the board stays usable; then 20 test images through the client, 20/20 matched;
* a small random model under Icarus: a corrupted frame gets its ERROR; then ``codegen deploy --sim
  icarus`` matches every image;
* the bench's reply framing (a pure function) and the option refusals.
"""
import socket

import numpy as np
import pytest

from boards import protocol as P
from codegen import cli, deploy
from codegen.frontend import datasets
from conftest import ROOT
from randmodels import random_images, valid_model
from runtime import golden, modelfile
from test_rtl_cocotb import need

pytest.importorskip("cocotbext.uart")

MLP = ROOT / "models" / "mnist-mlp.pt"
WORK = ROOT / "build" / "board_sim"


def test_whole_frames_passes_complete_replies_and_anything_else_at_once():
    from codegen.fpga.cocotb_bench.board_bench import whole_frames

    f1 = P.encode_reply(7, P.Error(P.ErrorCode.BAD_CHECKSUM, P.MsgType.INFER, 1))
    f2 = P.encode_reply(7, P.Error(P.ErrorCode.TIMEOUT, P.MsgType.INFER, 3))
    buf = bytearray(b"xy" + f1 + f2[:5])
    assert whole_frames(buf, False) == b"xy" + f1 and buf == f2[:5]     # garbage and f1 now; f2 waits
    buf += f2[5:] + b"O"
    assert whole_frames(buf, False) == f2 and buf == b"O"               # a last "O" may begin a magic
    buf += b"Z"
    assert whole_frames(buf, False) == b"OZ" and not buf
    buf += f1[:3]
    assert whole_frames(buf, False) == b"" and whole_frames(buf, True) == f1[:3] and not buf


def test_deploy_sim_option_refusals(capsys):
    for argv, msg in [([], "give --port PORT"), (["--port", "loop://", "--sim", "icarus"], "one of them"),
                      (["--sim", "ghdl"], "--sim must be icarus or verilator"),
                      (["--sim", "icarus", "--board", "nucleo-f446re"], "--board must be one of icebreaker, ulx3s"),
                      (["--port", "loop://", "--board", "ulx3s"], "they go with --sim"),
                      (["--sim", "icarus", "--board", "ulx3s", "--clock", "16"], "the ECP5 PLL cannot make exactly"),
                      (["--sim", "icarus", "--baud", "3000000", "--board", "ulx3s"], "--baud 3000000")]:
        assert cli.main(["deploy", str(MLP)] + argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, (argv, err)


def _reply(sock: socket.socket, timeout: float = 60.0):
    from test_deploy import _reply as reply

    return reply(sock, timeout)


@pytest.mark.cocotb
def test_mnist_mlp_icebreaker_verilator_bad_frames_then_deploy(capsys):
    """The iCEBreaker top with its SPRAM weights from the flash model: INFO; a bad checksum, a wrong
    length, another model's id and half a frame each get their ERROR; garbage before a frame is
    skipped; then ``codegen deploy --sim verilator`` (the same design, cached): 20/20 matched."""
    need("verilator")
    from codegen.fpga.board_sim import SimBoard

    m = modelfile.load(MLP)
    sha = modelfile.file_sha256(MLP)
    mid = P.model_id(sha)
    x, _ = datasets.load("mnist", "test")
    g = golden.run(m, x[:2], keep_phases=False)
    good = [P.encode_request(P.MsgType.INFER, mid, P.image_payload(x[i], (1, 28, 28))) for i in range(2)]
    b = SimBoard(m, "verilator", "icebreaker", name="mnist-mlp", sha256=sha, work=WORK)
    assert b.store[0] == "ram" and b.baud == 3_000_000 and b.clock_hz == 12_000_000
    with b:
        host, port = b.url.removeprefix("socket://").rsplit(":", 1)
        with socket.create_connection((host, int(port))) as s:
            s.sendall(P.encode_request(P.MsgType.INFO_REQUEST, P.ANY_MODEL))
            info = _reply(s)
            assert isinstance(info, P.Info) and info.sha256 == sha and info.name == "mnist-mlp"
            assert info.board == "icebreaker" and info.clock_hz == 12_000_000 and info.flags == P.Flag.CYCLES
            bad = bytearray(good[0])
            bad[500] ^= 0xFF
            s.sendall(bytes(bad))
            assert _reply(s) == P.Error(P.ErrorCode.BAD_CHECKSUM, P.MsgType.INFER, P.crc32(bytes(bad[:-4])))
            s.sendall(P.encode_request(P.MsgType.INFER, mid, bytes(100)))
            assert _reply(s) == P.Error(P.ErrorCode.BAD_LENGTH, P.MsgType.INFER, 784)
            s.sendall(P.encode_frame(P.MsgType.INFER, mid ^ 1, bytes(784)))
            assert _reply(s) == P.Error(P.ErrorCode.WRONG_MODEL, P.MsgType.INFER, mid ^ 1)
            s.sendall(good[0][:300])              # half a frame, then silence: the device's timeout
            assert _reply(s) == P.Error(P.ErrorCode.TIMEOUT, P.MsgType.INFER, 300)
            s.sendall(b"garbage" + good[1])
            r = _reply(s)
            assert isinstance(r, P.Result) and np.array_equal(r.logits, g.logits[1]) and r.cls == g.classes[1]
            assert deploy.compare(m, g, 1, r) is None
            wrong = golden.run(m, x[:2], keep_phases=False)
            wrong.logits[1, 3] += 1                 # the comparison sees a corrupted expectation
            assert "logit 3" in deploy.compare(m, wrong, 1, r)
            # the cycles are counted from the first pixel: at least the 784 bytes' 10 bits of 4 cycles
            assert 784 * 40 < r.cycles < 784 * 40 + 20_000
        # then the real client on the same board: 20 test images
        res = deploy.deploy(m, MLP, x[:20], b.url, baud=b.baud, timeout=120)
    assert (res.matched, res.n, res.first_mismatch) == (20, 20, None)
    assert res.info.board == "icebreaker" and len(res.cycles) == 20
    st = b.results
    assert st["connections"] == 2 and st["loaded"] == 1 and st["waited_for_load_cycles"] > 100_000
    assert st["led_error"] == 0 and st["bytes_from_board"] > 0


@pytest.mark.cocotb
def test_random_model_icarus_corrupted_frame_then_deploy_sim_cli(tmp_path, capsys):
    """A small random conv model on the iCEBreaker top (block RAM weights) under Icarus: a frame with
    a flipped bit gets BAD_CHECKSUM; then ``codegen deploy --sim icarus`` (the same design, cached)
    matches every image."""
    need("icarus")
    from codegen.fpga.board_sim import SimBoard

    model, rng = valid_model(3, ["conv2d", "maxpool", "dense"], 4)
    path = tmp_path / "rand.pt"
    modelfile.save(model, path)
    m = modelfile.load(path)
    sha = modelfile.file_sha256(path)
    x = random_images(rng, m, 6)
    with SimBoard(m, "icarus", "icebreaker", lanes=2, store="rom", name="rand", sha256=sha, work=WORK) as b:
        host, port = b.url.removeprefix("socket://").rsplit(":", 1)
        frame = bytearray(P.encode_request(P.MsgType.INFER, P.model_id(sha), P.image_payload(x[0], tuple(m.input_shape))))
        frame[P.HEADER_SIZE] ^= 0x01
        with socket.create_connection((host, int(port))) as s:
            s.sendall(bytes(frame))
            assert _reply(s) == P.Error(P.ErrorCode.BAD_CHECKSUM, P.MsgType.INFER, P.crc32(bytes(frame[:-4])))
    assert b.results["connections"] == 1 and b.results["led_error"] == 1     # the ERROR lit the LED
    np.save(tmp_path / "x.npy", x)
    rc = cli.main(["deploy", str(path), "--sim", "icarus", "--lanes", "2", "--store", "rom", "--input",
                   str(tmp_path / "x.npy"), "-q", "--work", str(WORK)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "6/6 matched" in out and "rand on icebreaker at 12 MHz" in out
    assert "simulated icebreaker under icarus: lanes 2, store rom,rom,rom, 12 MHz, 3000000 baud" in out
