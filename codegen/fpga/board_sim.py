"""The FPGA board top in a Verilog simulator, on a TCP socket: a board a serial client can talk to.

:class:`SimBoard` converts :class:`rtl.boards.BoardCore`, the design of ``codegen build --board``
(the same lanes, store, clock and baud rate, :func:`codegen.fpga.build.board_design`) to Verilog,
puts it in a wrapper with a model of the SPI configuration flash (``verilog/spi_flash_model.v``,
holding ``weights.bin`` at the flash offset, for a "ram" store), builds that under Icarus or
Verilator (cached by design digest, like :mod:`codegen.fpga.sim`) and runs the cocotb bench
``cocotb_bench/board_bench.py``: cocotbext-uart drives and reads the UART pins, and the bench
bridges them to a local TCP port. :attr:`SimBoard.url` is then a ``socket://`` URL for pyserial:
``codegen deploy --port URL``, or :class:`codegen.deploy.Link`, talk to the simulated board exactly
as to the board on a USB UART.

The simulated board's INFO timeout is :data:`SIM_TIMEOUT_MS` (1 ms instead of the board's 100 ms:
the same logic, fewer cycles to simulate while a host waits for it to expire).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from runtime.errors import ToolError
from runtime.spec import IntModel

__all__ = ["SIM_BAUDS", "SIM_TIMEOUT_MS", "SimBoard", "sim_baud"]

#: The baud rates a simulated board picks from (the first its clock makes within 2 %, :func:`sim_baud`):
#: fast ones, so a frame takes few cycles to simulate; 3 Mbaud is the FT2232H's fastest standard rate,
#: 4 clock cycles a bit at 12 MHz (the UART's minimum); the ULX3S's 25 MHz makes 1 Mbaud exactly.
SIM_BAUDS = (3_000_000, 2_000_000, 1_000_000, 921_600, 460_800, 230_400, 115_200)
SIM_TIMEOUT_MS = 1
#: A host silence this long (wall time) is simulated as the device's timeout expiring (see board_bench.py).
SILENCE_S = 0.005
BENCH_MODULE = "codegen.fpga.cocotb_bench.board_bench"
CORE_NAME = "onespike_board"
TOP_NAME = "onespike_board_sim"
TOP_FILE = "onespike_board_sim.v"
FLASH_MODEL = Path(__file__).parent / "verilog" / "spi_flash_model.v"
_VERSION = 1     # bump when the wrapper or the conversion changes for the same design

_WRAPPER = """\
// The board top (module {core}, converted from rtl.boards.BoardCore) with the flash model on its
// flash pins. Written by codegen/fpga/board_sim.py.
module {top} (input wire clk, input wire rst, input wire rx, output wire tx, output wire led_heartbeat,
              output wire led_busy, output wire led_error, output wire loaded);
    wire flash_cs_n, flash_sck, flash_copi, flash_cipo;
    {core} board (.clk(clk), .rst(rst), .rx(rx), .tx(tx), .led_heartbeat(led_heartbeat), .led_busy(led_busy),
        .led_error(led_error), .loaded(loaded), .flash_cs_n(flash_cs_n), .flash_sck(flash_sck),
        .flash_copi(flash_copi), .flash_cipo(flash_cipo));
    onespike_spi_flash #(.BASE({base}), .SIZE({size}), .IMAGE("{image}")) flash (
        .clk(clk), .cs_n(flash_cs_n), .sck(flash_sck), .copi(flash_copi), .cipo(flash_cipo));
endmodule
"""


def sim_baud(clock_hz: int) -> int:
    """The fastest of :data:`SIM_BAUDS` the UART makes at ``clock_hz``."""
    from rtl.uart import divisor_for

    for baud in SIM_BAUDS:
        try:
            divisor_for(clock_hz, baud)
            return baud
        except ValueError:
            continue
    return SIM_BAUDS[-1]


def _write_design(core, out: Path) -> None:
    """The board core's Verilog, the wrapper and the flash image (``weights.hex``) in ``out``."""
    from amaranth.back import verilog

    from rtl.boards import FLASH_OFFSET

    from .sim_top import _mem_files, _time_zero_fix, _write_if_changed

    out.mkdir(parents=True, exist_ok=True)
    text, mem_files = _mem_files(_time_zero_fix(verilog.convert(core, name=CORE_NAME)), out)
    for fn, contents in mem_files.items():
        _write_if_changed(out / fn, contents)
    image = core.image or b"\xff"
    _write_if_changed(out / "weights.hex", "".join(f"{b:02x}\n" for b in image))
    _write_if_changed(out / f"{CORE_NAME}.v", text)
    wrapper = _WRAPPER.format(core=CORE_NAME, top=TOP_NAME, base=FLASH_OFFSET, size=len(image),
                              image=(out / "weights.hex").absolute())
    _write_if_changed(out / TOP_FILE, wrapper)


class SimBoard:
    """A simulated board (see the module's documentation); a context manager.

    ``model``: an IntModel; ``sim``: ``icarus`` or ``verilator``; ``board``, ``lanes``, ``store``,
    ``baud`` (default :func:`sim_baud`), ``clock_mhz``, ``fifo_depth``: as ``codegen build`` takes them; ``name``, ``sha256``:
    the model file's, for INFO; ``work``: the folder of designs, builds and runs (default
    ``build/board_sim``).

    ``with SimBoard(...) as b:`` builds and starts it, waits until it listens (after the weights'
    load from the flash model) and gives :attr:`url`; leaving the block stops it. :attr:`results`
    then holds the bench's figures (``cycles`` simulated, ``bytes_to_board``, ``bytes_from_board``,
    ``connections``, the LEDs at the end) and :attr:`build_s`, :attr:`wall_s`.
    """

    def __init__(self, model: IntModel, sim: str = "verilator", board: str = "icebreaker", lanes="auto",
                 store="auto", baud: int | None = None, clock_mhz: float | None = None, *, name: str = "model",
                 sha256: str = "0" * 64, fifo_depth: int | None = None, work: str | Path | None = None,
                 max_wall_s: float = 3600.0, progress: bool = False):
        from . import sim as fsim
        from .build import board_design
        from .store import FIFO_DEPTH

        from .build import check_clock

        fsim._need_simulator(sim)
        if baud is None:
            baud = sim_baud(check_clock(board, clock_mhz) if board in ("icebreaker", "ulx3s") else 1)
        self.sim, self.board_name, self.progress = sim, board, progress
        self.max_wall_s = float(max_wall_s)
        self.work = fsim.check_work(work if work is not None else Path("build") / "board_sim")
        d = board_design(model, board, lanes, store, baud, clock_mhz, FIFO_DEPTH if fifo_depth is None else fifo_depth,
                         name=name, sha256=sha256, timeout_ms=SIM_TIMEOUT_MS)
        self.top, self.lanes, self.store, self.clock_hz, self.baud = d["top"], d["lanes"], d["store"], d["clock"], baud
        self.info = self.top.info
        self.top._MustUse__silence = True      # only its core is simulated (the platform's pins are not)
        core = self.top.core
        h = hashlib.sha256(fsim.design_digest(model, self.lanes, d["fifo_depth"], self.store).encode())
        h.update(repr((_VERSION, board, baud, self.clock_hz, name, sha256, SIM_TIMEOUT_MS)).encode())
        h.update(FLASH_MODEL.read_bytes())
        self.key = h.hexdigest()[:16]
        self.design_dir = self.work / f"board-{self.key}"
        self.build_dir = self.design_dir / sim
        self._core, self.model = core, model
        self.results: dict | None = None
        self.build_s = self.wall_s = 0.0
        self.url: str | None = None
        self._thread = None
        self._error: BaseException | None = None

    # -- the build ----------------------------------------------------------------------------
    def build(self):
        from . import sim as fsim

        t0 = time.perf_counter()
        with fsim._locked(self.work / f".lock-board-{self.key}"):
            if not (self.design_dir / TOP_FILE).is_file():
                _write_design(self._core, self.design_dir)
            runner = fsim._build(self.sim, False, self.design_dir, self.build_dir,
                                 sources=[FLASH_MODEL, self.design_dir / f"{CORE_NAME}.v", self.design_dir / TOP_FILE],
                                 top=TOP_NAME)
        self.build_s = time.perf_counter() - t0
        return runner

    # -- the run ------------------------------------------------------------------------------
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop(raise_error=exc[0] is None)

    def start(self, timeout_s: float = 600.0):
        from . import sim as fsim

        t0 = time.perf_counter()
        runner = self.build()
        runs = self.work / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        fsim._prune_runs(runs)
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"board-{self.sim}-{self.key[:8]}-", dir=runs))
        core = self._core
        timeout_cycles = self.info.timeout_ms * self.clock_hz // 1000
        load_cycles = 40 * len(core.image) + 10_000 if core.image else 10_000
        cfg = {"clock_hz": self.clock_hz, "baud": self.baud, "port_file": str(self.run_dir / "port"),
               "stop_file": str(self.run_dir / "stop"), "results": str(self.run_dir / "results.json"),
               "busy_cycles": int(2 * timeout_cycles + fsim._max_cycles(self.model, self.lanes, 1, 0, 0)),
               "max_silence_cycles": int(2 * timeout_cycles), "silence_s": SILENCE_S, "max_load_cycles": int(load_cycles),
               "max_wall_s": self.max_wall_s}
        (self.run_dir / "bench.json").write_text(json.dumps(cfg, indent=1))
        self._t_start = t0

        def go():
            try:
                with fsim._runner_env(self.sim):
                    runner.test(test_module=BENCH_MODULE, hdl_toplevel=TOP_NAME, hdl_toplevel_lang="verilog",
                                build_dir=self.build_dir, test_dir=self.run_dir,
                                results_xml=str(self.run_dir / "results.xml"),
                                extra_env={"ONESPIKE_BOARD_BENCH": str(self.run_dir / "bench.json"),
                                           "COCOTB_REWRITE_ASSERTION_FILES": "board_bench.py"},
                                timescale=fsim.TIMESCALE, log_file=self.run_dir / "sim.log")
            except BaseException as e:  # noqa: BLE001 - reported by stop()/start()
                self._error = e

        self._thread = threading.Thread(target=go, daemon=True, name="simboard")
        self._thread.start()
        port_file = self.run_dir / "port"
        deadline = time.monotonic() + timeout_s
        while not port_file.is_file():
            if not self._thread.is_alive() or time.monotonic() > deadline:
                why = "did not start listening" if self._thread.is_alive() else "stopped before it listened"
                self.stop(raise_error=False)
                raise ToolError(f"the simulated board under {self.sim} {why} "
                                f"({fsim._first_error(self.run_dir / 'sim.log', 'no error reported')}); "
                                f"log: {self.run_dir / 'sim.log'}")
            time.sleep(0.05)
        self.url = f"socket://127.0.0.1:{int(port_file.read_text())}"
        return self.url

    def stop(self, raise_error: bool = True):
        from . import sim as fsim

        if self._thread is None:
            return
        (self.run_dir / "stop").touch()
        self._thread.join(timeout=120)
        self._thread = None
        res = self.run_dir / "results.json"
        self.results = json.loads(res.read_text()) if res.is_file() else None
        self.wall_s = time.perf_counter() - self._t_start
        if not raise_error:
            return
        if self.results is None or self.results.get("error") or self._error is not None:
            why = (self.results or {}).get("error") or (str(self._error) if self._error else None)
            raise ToolError(f"the simulated board under {self.sim} failed "
                            f"({why or fsim._first_error(self.run_dir / 'sim.log', 'no results')}); "
                            f"log: {self.run_dir / 'sim.log'}")
        if not os.environ.get("ONESPIKE_KEEP_RUNS"):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def describe(self) -> str:
        from .store import lanes_text

        return (f"simulated {self.board_name} under {self.sim}: lanes {lanes_text(self.lanes)}, store "
                f"{','.join(self.store)}, {self.clock_hz / 1e6:g} MHz, {self.baud} baud")

