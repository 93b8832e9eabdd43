"""cocotb testbench for the flat network top (``rtl.top.FlatTop``), run by ``codegen.fpga.sim.verify``.

It runs inside the simulator and reads everything from the JSON file named by ``ONESPIKE_BENCH``
(written by ``codegen/fpga/sim.py``): the top's port layout, the stimulus settings, and the ``.npz``
with the images and the golden model's expected logits, classes and per-layer spike phases. It
writes its findings to the JSON file named there (``results``) and fails the test on any mismatch
or impossible time stamp (a latency that is not positive), and appends a line per result to the
file named ``progress`` (the parent's progress bar polls it).

Python work is per transfer, not per cycle: the pixel driver wakes once per pixel (plus once per
idle run), the debug monitor only in cycles with spike events (it waits on ``dbg_seq``), the result
monitor only while a result is offered (it also holds ``result_ready`` low to stall it).
"""
import json
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Event, First, ReadOnly, SimTimeoutError, with_timeout
from cocotb.utils import get_sim_time

PERIOD_NS = 10
MAX_KEPT = 100  # mismatches kept in the results file (all are counted)


class Scoreboard:
    """Expected results of every frame, checked as the hardware produces them."""

    def __init__(self, cfg, data):
        self.cfg = cfg
        top = cfg["top"]
        self.n = int(cfg["frames"])
        self.T = int(top["T"])
        self.C = int(top["num_classes"])
        self.detect = bool(top.get("detect", False))
        self.map_seen = set()                # a detector: indexes of the frame's map received so far
        self.map_values = [None] * self.C
        self.maps = []                       # ... and every complete map, for the host's decode
        self.B = int(top["acc_bits"])
        self.readout = len(top["layer_sizes"]) - 1
        self.layer_names = cfg["layer_names"]
        self.firing = top["firing_layers"]
        self.logits = data["logits"].astype(np.int64).tolist()
        self.classes = data["classes"].astype(np.int64).tolist()
        self.phases = [data[f"phases{k}"] for k in self.firing]
        # Events leave each layer in its drain order; compare in that order (see FlatTop.describe).
        self.slot_T = [int(t) for t in top["slot_T"]]
        self.order = [(int(a), int(b)) for a, b in top["slot_order"]]
        self.by_key = []
        for npos, ch in self.order:
            keys = np.arange(npos * ch)
            self.by_key.append(((keys % ch) * npos + keys // ch).tolist())   # key -> flat index
        self.mismatches = []
        self.n_mismatches = 0
        self.bad = set()                     # frames with a mismatch
        self.results = 0                     # results received
        self.result_times = []               # (valid cycle, accepted cycle) per frame
        # Per slot: frame being received, last neuron index, expected phases (list), next spike index.
        self.ev_frame = [0] * len(self.firing)
        self.ev_prev = [-1] * len(self.firing)
        self.ev_exp = [None] * len(self.firing)
        self.ev_next = [None] * len(self.firing)
        self.events = [0] * len(self.firing)
        self.eof_times = [{} for _ in self.firing]   # per slot: frame -> cycle of its marker
        # Layer-event mismatches since the last reset: the layers send each output row as soon as it
        # is complete, so a frame cut by a reset (or the few pixels of a frame offered just before
        # one) can already have sent events; those frames are sent again and checked from scratch.
        self.event_records = []

    def record(self, frame, layer, neuron, expected, actual, what, event=False):
        self.n_mismatches += 1
        self.bad.add(frame)
        rec = {"frame": frame, "layer": layer, "neuron": neuron, "expected": expected, "actual": actual, "what": what}
        kept = len(self.mismatches) < MAX_KEPT
        if kept:
            self.mismatches.append(rec)
        if event:
            self.event_records.append((frame, rec if kept else None))

    def _expect(self, s):
        """Frame ``ev_frame[s]``'s expected phases of slot ``s``, in the layer's event order."""
        f = self.ev_frame[s]
        exp = self.phases[s][f][self.by_key[s]].tolist()
        T = self.slot_T[s]
        nxt = [len(exp)] * (len(exp) + 1)
        for j in range(len(exp) - 1, -1, -1):
            nxt[j] = j if exp[j] < T else nxt[j + 1]
        self.ev_exp[s], self.ev_next[s] = exp, nxt

    def event(self, s, index, phase, eof, cycle):
        """Layer ``firing[s]`` sent ``(index, phase, eof)``; events come in the layer's order.

        Positions in that order are "keys"; mismatches report the neuron's flat index."""
        layer = self.firing[s]
        name = self.layer_names[layer]
        f = self.ev_frame[s]
        if f >= self.n:
            self.record(f, name, None if eof else index, None, "end of frame" if eof else phase,
                        "event after the last frame", event=True)
            return
        if self.ev_exp[s] is None:
            self._expect(s)
        exp, nxt, prev, T = self.ev_exp[s], self.ev_next[s], self.ev_prev[s], self.slot_T[s]
        neuron = self.by_key[s]
        if eof:
            j = nxt[prev + 1]
            if j < len(exp):
                self.record(f, name, neuron[j], exp[j], T, "phase (missing spike)", event=True)
            self.ev_frame[s] += 1
            self.ev_prev[s] = -1
            self.ev_exp[s] = None
            self.eof_times[s][f] = cycle
            return
        self.events[s] += 1
        key = index if index < len(exp) else len(exp)   # raster index: the event order (rtl.layouts)
        if key <= prev or key >= len(exp):
            after = neuron[prev] if prev >= 0 else None
            self.record(f, name, neuron[index] if index < len(exp) else index, exp[key] if key < len(exp) else None,
                        phase, f"phase (event out of order after neuron {after})", event=True)
            return
        j = nxt[prev + 1]
        if j < key:
            self.record(f, name, neuron[j], exp[j], T, "phase (missing spike)", event=True)
        elif exp[key] != phase:
            self.record(f, name, neuron[key], exp[key], phase, "phase", event=True)
        self.ev_prev[s] = key

    def restart(self, first):
        """A reset cut every frame from ``first`` on (no result yet): they are sent again, and each
        layer's events are expected from frame ``first``'s first spike again."""
        for frame, rec in self.event_records:
            if frame >= first:
                self.n_mismatches -= 1
                if rec is not None:
                    self.mismatches.remove(rec)
        self.event_records = []
        self.map_seen, self.map_values = set(), [None] * self.C
        self.bad = {f for f in self.bad if f < first} | {m["frame"] for m in self.mismatches if m["frame"] >= first}
        for s in range(len(self.firing)):
            self.ev_frame[s] = first
            self.ev_prev[s] = -1
            self.ev_exp[s] = None

    def unknown(self, valid_cycle, accept_cycle, text):
        """A result with X/Z bits: every bit of it is a mismatch."""
        k = self.results
        self.results += 1
        self.record(k, "result", None, "0/1 bits", text, "X or Z in the result")
        self.result_times.append((valid_cycle, accept_cycle))

    def logit(self, index, raw, last, valid_cycle, accept_cycle):
        """A detector's map, one logit per transfer: compared at once; the frame ends with ``last``.
        Mismatches of a map a reset cuts are dropped with the frame's layer events (it is sent again)."""
        k = self.results
        name = self.layer_names[self.readout]
        if k >= self.n:
            self.record(k, "result", None, None, index, "result after the last frame", event=True)
            return
        v = raw - (1 << self.B) if raw & (1 << (self.B - 1)) else raw
        if index >= self.C or index in self.map_seen:
            self.record(k, name, index, None, v, "logit index out of range or sent twice", event=True)
        else:
            self.map_seen.add(index)
            self.map_values[index] = v
            if v != self.logits[k][index]:
                self.record(k, name, index, self.logits[k][index], v, "logit", event=True)
        if last:
            if len(self.map_seen) != self.C:
                self.record(k, name, None, self.C, len(self.map_seen), "logits in the map", event=True)
            self.maps.append(list(self.map_values))
            self.map_seen, self.map_values = set(), [None] * self.C
            self.results += 1
            self.result_times.append((valid_cycle, accept_cycle))

    def result(self, cls, raw, valid_cycle, accept_cycle):
        k = self.results
        self.results += 1
        if k >= self.n:
            self.record(k, "result", None, None, cls, "result after the last frame")
            return
        B, mask, sign = self.B, (1 << self.B) - 1, 1 << (self.B - 1)
        want = self.logits[k]
        for c in range(self.C):
            v = (raw >> (c * B)) & mask
            if v & sign:
                v -= 1 << B
            if v != want[c]:
                self.record(k, self.layer_names[self.readout], c, want[c], v, "logit")
        if cls != self.classes[k]:
            self.record(k, "class", 0, self.classes[k], cls, "class")
        self.result_times.append((valid_cycle, accept_cycle))


def now_cycle():
    return round(get_sim_time("ns") / PERIOD_NS)


@cocotb.test()
async def network(dut):
    """Frames with gaps, stalls, back to back and a mid-frame reset; every result and spike checked."""
    with open(os.environ["ONESPIKE_BENCH"]) as fh:
        cfg = json.load(fh)
    data = np.load(cfg["data"])
    images = data["images"]
    top = cfg["top"]
    n, n_pixels = int(cfg["frames"]), int(top["n_pixels"])
    board = Scoreboard(cfg, data)
    rng = random.Random(int(cfg["seed"]))
    stim = random.Random(int(cfg["seed"]) + 1)   # the result stalls' own stream
    gap, burst, frame_gap = float(cfg["gap"]), float(cfg["burst"]), float(cfg["frame_gap"])
    stall, long_stall = float(cfg["stall"]), float(cfg["long_stall"])
    reset_before = int(cfg["reset_before"])
    isolate = bool(cfg.get("isolate", False))
    ibits = int(top["index_bits"])
    n_slots = len(top["firing_layers"])

    in_flight = bool(cfg.get("reset_in_flight", True))
    progress_path = cfg.get("progress")
    stats = {"gap_cycles": 0, "input_stall_cycles": 0, "stalled_results": 0, "reset_cycle": None,
             "reset_partial_pixels": 0, "reset_aborted_frames": 0, "resets": 0, "reset_held_results": 0,
             "load_bytes": 0, "load_resets": 0, "load_cycles": 0}
    starts = [None] * n        # cycle in which each frame's first pixel was accepted
    lasts = [None] * n         # ... and its last
    all_done = Event()
    results_seen = {"count": 0, "event": Event(), "want": 0}
    reset_seen = {"event": Event()}    # set (and replaced) when the bench asserts rst

    clk, rst = dut.clk, dut.rst
    edge = clk.rising_edge
    dut.pixel_valid.value = 0
    dut.pixel_data.value = 0
    dut.load_valid.value = 0
    dut.load_data.value = 0
    dut.result_ready.value = 0
    rst.value = 1
    cocotb.start_soon(Clock(clk, PERIOD_NS, unit="ns").start())
    await ClockCycles(clk, 3)
    rst.value = 0

    async def put(valid, data, ready, value):
        """Offer ``value`` until ``ready`` is high at a rising edge; return the cycles it waited."""
        data.value = value
        valid.value = 1
        waited = 0
        while True:
            await ReadOnly()
            taken = ready.value == 1
            await edge
            if taken:
                return waited
            waited += 1

    async def send(pixels, frame, gap_p):
        """Send one frame's pixels (valid stays high between pixels unless a gap is drawn).

        ``valid`` is dropped after the last pixel; a next frame sent at once raises it again in the
        same time step, so frames still go back to back."""
        pv, pd = dut.pixel_valid, dut.pixel_data
        ready = dut.pixel_ready
        last = len(pixels) - 1
        for j, p in enumerate(pixels):
            if gap_p and rng.random() < gap_p:
                pv.value = 0
                idle = rng.randint(1, 4)
                stats["gap_cycles"] += idle
                await ClockCycles(clk, idle)
            stats["input_stall_cycles"] += await put(pv, pd, ready, p)
            if frame is not None:
                if j == 0:
                    starts[frame] = now_cycle()
                if j == last:
                    lasts[frame] = now_cycle()
        pv.value = 0

    async def wait_results(k):
        while results_seen["count"] < k:
            results_seen["want"] = k
            results_seen["event"] = Event()
            await results_seen["event"].wait()

    def assert_reset():
        """Drive ``rst`` high and tell the result monitor (a result it holds back is gone)."""
        rst.value = 1
        ev, reset_seen["event"] = reset_seen["event"], Event()
        ev.set()

    async def reset_pulse(partial_pixels, idle_max):
        """Offer part of a frame, then reset (pixels offered during the reset must be dropped)."""
        partial = [rng.randrange(256) for _ in range(partial_pixels)]
        await send(partial, None, gap)
        dut.pixel_valid.value = 0
        await ClockCycles(clk, rng.randint(0, idle_max))
        assert_reset()
        stats["reset_cycle"] = now_cycle()
        stats["reset_partial_pixels"] = len(partial)
        stats["resets"] += 1
        dut.pixel_valid.value = 1
        dut.pixel_data.value = rng.randrange(256)
        await ClockCycles(clk, rng.randint(1, 3))
        rst.value = 0
        dut.pixel_valid.value = 0

    async def send_load(image):
        """Send the store image on load_* (the loader takes a byte when load_ready is high)."""
        for b in image:
            await put(dut.load_valid, dut.load_data, dut.load_ready, b)
        dut.load_valid.value = 0

    async def load_store():
        """The store image of "ram" layers, once (with resets: a third of it, a reset, all of it)."""
        with open(cfg["load"], "rb") as fh:
            image = fh.read()
        t0 = now_cycle()
        if reset_before >= 0:
            await send_load(image[: len(image) // 3])
            assert_reset()
            await ClockCycles(clk, rng.randint(1, 3))
            rst.value = 0
            stats["load_resets"] += 1
        await send_load(image)
        while True:
            await ReadOnly()
            if dut.loaded.value == 1:
                break
            await edge
        await edge
        stats["load_bytes"], stats["load_cycles"] = len(image), now_cycle() - t0

    async def driver():
        k, reset_done = 0, False
        if cfg.get("load"):
            await load_store()
        while k < n:
            if k == reset_before and not reset_done:
                reset_done = True
                if in_flight:
                    # Frames before k may still be anywhere in the pipeline: send frame k and a few
                    # pixels of the next, then reset at once, so that frame k (at least) is cut inside
                    # the layers. Every frame without a result is sent again.
                    await send(images[k].tolist(), k, gap)
                    await reset_pulse(rng.randint(1, max(1, min(n_pixels - 1, 32))), 4)
                    first = board.results          # the monitors have seen every transfer before the reset
                    board.restart(first)
                    stats["reset_aborted_frames"] = k + 1 - first
                    await ClockCycles(clk, rng.randint(0, 3))
                    k = first
                    continue
                # Let the frames before it finish, then abort a frame in its middle.
                await wait_results(k)
                await edge                    # the monitor signals in the read-only phase
                dut.pixel_valid.value = 0
                await ClockCycles(clk, 4)
                await reset_pulse(rng.randint(1, max(1, n_pixels - 1)), 20)
                board.restart(k)                  # the cut frame's first rows may have left some layers
                await ClockCycles(clk, rng.randint(0, 3))
            elif isolate:
                await wait_results(k)         # one frame in flight at a time: clean latencies
                await edge                    # the monitor signals in the read-only phase
            elif k and frame_gap and rng.random() < frame_gap:
                dut.pixel_valid.value = 0
                idle = rng.randint(1, 64)
                stats["gap_cycles"] += idle
                await ClockCycles(clk, idle)
            await send(images[k].tolist(), k, 0.0 if rng.random() < burst else gap)
            k += 1
        dut.pixel_valid.value = 0

    def draw_hold():
        """Cycles the next result is held back: none, short, or long enough to back up the pipeline.

        The second result is always held for 4000 cycles (again if a reset took it while held and
        its frame is sent again), so that every run (with stalls) fills every FIFO and stalls the
        pixel input at least once."""
        if board.detect and board.map_seen:
            return 0                     # a detector's map: stalls only before its first logit
        if stall and board.results == 1:
            return 4000
        if stim.random() >= stall:
            return 0
        return stim.randint(50, 400) if stim.random() < long_stall else stim.randint(1, 8)

    async def result_monitor():
        """Take each result when offered, or ``draw_hold()`` cycles later (``ready`` low meanwhile)."""
        valid, ready, cls, logits = dut.result_valid, dut.result_ready, dut.result_cls, dut.result_logits
        last = dut.result_last
        since = None
        hold = draw_hold()
        ready.value = 0 if hold else 1
        while True:
            await ReadOnly()
            if valid.value == 0:
                if since is not None and stats["resets"] == resets_at:
                    board.record(board.results, "result", None, "valid held until taken", "valid dropped",
                                 "result withdrawn while stalled")
                since = None
                await valid.rising_edge
                continue
            t = now_cycle()
            c, lv = cls.value, logits.value
            if since is None:
                since, offered, resets_at = t, (str(c), str(lv)), stats["resets"]
            if ready.value == 0:
                stats["stalled_results"] += 1
                reset_ev = reset_seen["event"]
                await First(ClockCycles(clk, hold), reset_ev.wait())
                if reset_ev.is_set():
                    # A reset while the result was held back: that result is gone (its frame is sent
                    # again), so the next one offered is a new result with its own valid cycle.
                    stats["reset_held_results"] += 1
                    since = None
                    await ReadOnly()
                    while rst.value == 1:
                        await edge
                        await ReadOnly()
                    await edge
                    hold = draw_hold()
                    ready.value = 0 if hold else 1
                    continue
                ready.value = 1
                continue
            if (str(c), str(lv)) != offered:
                board.record(board.results, "result", None, offered[0], str(c), "result changed while stalled")
            if c.is_resolvable and lv.is_resolvable and board.detect:
                # A map's time stamps are its last logit's: the map is complete then.
                board.logit(int(c), int(lv), int(last.value), since, t + 1)
            elif c.is_resolvable and lv.is_resolvable:
                board.result(int(c), int(lv), since, t + 1)
            else:
                board.unknown(since, t + 1, f"class {c}, logits {lv}")
            since = None
            results_seen["count"] = board.results
            if progress_path and not board.map_seen:
                with open(progress_path, "a") as fh:     # the parent shows a progress bar from it
                    fh.write(f"{board.results}\n")
            if board.results >= results_seen["want"]:
                results_seen["event"].set()
            if board.results >= n:
                all_done.set()
            hold = draw_hold()
            await edge
            ready.value = 0 if hold else 1

    async def debug_monitor():
        seq, dvalid, deof, dindex, dphase = dut.dbg_seq, dut.dbg_valid, dut.dbg_eof, dut.dbg_index, dut.dbg_phase
        imask = (1 << ibits) - 1
        change = seq.value_change
        while True:
            await change
            await ReadOnly()
            v = int(dvalid.value)
            if not v:
                continue              # a reset cleared the counter
            t = now_cycle() - 1       # the registered tap shows the previous cycle's transfer
            e, idx, ph = deof.value, dindex.value, dphase.value
            if not (e.is_resolvable and idx.is_resolvable and ph.is_resolvable):
                board.record(min(board.ev_frame), "debug", None, "0/1 bits",
                             f"eof {e}, index {idx}, phase {ph}", "X or Z in a spike event")
                continue
            e, idx, ph = int(e), int(idx), int(ph)
            for s in range(n_slots):
                if v >> s & 1:
                    board.event(s, (idx >> (s * ibits)) & imask, (ph >> (8 * s)) & 0xFF, e >> s & 1, t)

    crashes = []

    async def guarded(name, coro):
        """Run a bench task; a Python error in it ends the run with that error instead of a bare crash."""
        try:
            await coro
        except Exception as e:  # noqa: BLE001 - reported in the results file and as the test failure
            crashes.append(f"bench {name} raised {type(e).__name__}: {e}")
            all_done.set()

    cocotb.start_soon(guarded("result monitor", result_monitor()))
    if n_slots:
        cocotb.start_soon(guarded("debug monitor", debug_monitor()))
    cocotb.start_soon(guarded("pixel driver", driver()))

    error = None
    t0 = now_cycle()
    try:
        await with_timeout(all_done.wait(), int(cfg["max_cycles"]) * PERIOD_NS, "ns")
    except SimTimeoutError:
        error = (f"timeout: {board.results} of {n} results after {cfg['max_cycles']} cycles "
                 f"(end-of-frame markers seen per firing layer: {board.ev_frame})")
    if crashes:
        error = crashes[0]
    await ClockCycles(clk, 8)            # late or extra events
    for s, k in enumerate(board.firing):
        if board.ev_frame[s] != n and error is None:
            board.record(board.ev_frame[s], board.layer_names[k], None, n, board.ev_frame[s],
                         "end-of-frame markers")
    if error is not None and board.results < n:
        board.record(board.results, "result", None, "result", "none", "missing result")

    frames = []
    for k in range(n):
        rt = board.result_times[k] if k < len(board.result_times) else (None, None)
        frames.append({"start": starts[k], "last_pixel": lasts[k], "result_valid": rt[0], "result_accept": rt[1],
                       "latency": None if rt[0] is None or starts[k] is None else rt[0] - starts[k],
                       "eof": [board.eof_times[s].get(k)
                               for s in range(n_slots)]})
    if error is None:
        error = timing_error(frames)
    received = min(board.results, n)
    complete = [k < received and all(k < board.ev_frame[s] for s in range(n_slots)) for k in range(n)]
    matched = sum(1 for k in range(n) if complete[k] and k not in board.bad)
    first = min(board.mismatches, key=lambda m: (m["frame"], _layer_order(m["layer"], cfg), m["neuron"] or 0),
                default=None)
    out = {
        "matched": matched, "total": n, "first_mismatch": first, "mismatches": board.mismatches,
        "n_mismatches": board.n_mismatches, "error": error, "frames": frames,
        "events": board.events, "cycles_total": now_cycle() - t0,
        "stats": dict(stats, result_wait_cycles=sum(a - v - 1 for v, a in board.result_times)),
    }
    if board.detect:
        out["maps"] = board.maps[:n]
    with open(cfg["results"], "w") as fh:
        json.dump(out, fh, indent=1)
    if error:
        raise AssertionError(error)
    assert first is None, (
        f"{board.n_mismatches} mismatch(es); first: frame {first['frame']}, layer {first['layer']}, "
        f"neuron {first['neuron']}: expected {first['expected']}, got {first['actual']} ({first['what']})")


def timing_error(frames):
    """The first impossible time stamp of a frame, or None: every result must become valid after its
    frame's last pixel was taken (so its latency is positive) and be taken after it became valid,
    and results must become valid in frame order. (A result held back when a reset came must not
    lend its valid cycle to the frame's result after the reset.)"""
    prev = None
    for k, f in enumerate(frames):
        start, last, valid, accept = f["start"], f["last_pixel"], f["result_valid"], f["result_accept"]
        if valid is None or start is None:
            continue
        if f["latency"] is None or f["latency"] <= 0 or (last is not None and valid <= last):
            return (f"frame {k}: latency {f['latency']} cycles is not positive, or its result was valid at cycle "
                    f"{valid}, not after its last pixel (cycle {last}; first pixel {start})")
        if accept is not None and accept <= valid:
            return f"frame {k}: result taken at cycle {accept}, not after it became valid (cycle {valid})"
        if prev is not None and valid <= prev:
            return f"frame {k}: result valid at cycle {valid}, not after frame {k - 1}'s (cycle {prev})"
        prev = valid
    return None


def _layer_order(name, cfg):
    names = cfg["layer_names"]
    return names.index(name) if name in names else len(names)
