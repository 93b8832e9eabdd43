"""FPGA benchmark: cycles per inference of the generated RTL (cocotb + Verilator) against the event-driven limit.

For every shipped model it runs the first ``-n`` test images through the Verilog twice, with no input
gaps, no output stalls and no reset (results are still compared exactly with the golden model):

* isolated (one frame in the pipeline at a time): latency = first pixel accepted -> result valid
  (a detector: its map's last logit), and per layer the cycle of its end-of-frame marker after
  the first pixel (the result for the readout);
* back to back: the interval between consecutive results (throughput; a frame's rows stream
  through all layers at once, and layers work on different frames at once).

The event-driven limit of a layer is its synaptic operations (golden model: input spikes x the
outputs each feeds) divided by its lanes; a max-pool's is its input spikes (one per cycle). The
*slowest-layer limit* of a frame is the largest of them and of the pixel stream (pixels, plus one
row marker per row): the goal is a latency within 1.2x of it. The sum over the layers (what a
design whose layers wait for each other's whole frame is bound by) is shown next to it. Writes
``fpga.json``, ``fpga.md`` (tables for docs/benchmarks.md) and ``fpga_layers.png`` in ``--out``.

    .venv/bin/python scripts/bench_fpga.py [-n 100] [--sim verilator] [--lanes 8 | 4,1,8,1,4,4 | auto]
        [--board ulx3s] [--models mnist-mlp ...] [--store rom|ram|ram,rom]
        # --lanes auto: the lanes per layer codegen emit --board picks (fpga.fit_lanes)

With a RAM store the bench loads the weights first; latencies start at the first pixel, after the load.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codegen.fpga import sim as fpga_sim
from codegen.fpga import inspect_network  # noqa: E402
from runtime import golden, modelfile  # noqa: E402

MODELS = {"mnist-mlp": "mnist", "mnist-cnn": "mnist", "fmnist-cnn": "fashion-mnist", "bccd-det": "bccd"}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def layer_limits(model, lanes, gold):
    """(N, L) limit cycles per layer and frame, and the lanes each layer really uses."""
    net = inspect_network(model, lanes)
    lim = np.zeros(gold.sops.shape, dtype=np.float64)
    used = []
    for k, (layer, e) in enumerate(zip(model.layers, net.engines)):
        if layer.kind == "maxpool":
            _, t_in = model.code_of_layer_input(k)
            spikes = (gold.phases[k].reshape(len(gold.sops), -1) < t_in).sum(1)
            lim[:, k] = spikes
            used.append(1)
        else:
            lim[:, k] = gold.sops[:, k] / e.lanes
            used.append(e.lanes)
    return lim, used


def run_model(name, ds, n, sim, lanes, work, store="rom", board=None):
    from codegen import fpga

    model = modelfile.load(ROOT / "models" / f"{name}.pt")
    x = fpga.cycles.test_images(model, n)
    gold = golden.run(model, x)
    if lanes == "auto":
        lanes = fpga.fit_lanes(model, fpga.get_board(board), store=store)
        if lanes is None:
            raise SystemExit(f"{name}: no lane count fits {board}")
    if board is not None:
        store = fpga.resolve_store(model, board, lanes, store)
    lim, used = layer_limits(model, lanes, gold)
    t0 = time.perf_counter()
    iso = fpga_sim.verify(model, x, sim, lanes=lanes, gap=0.0, stall=0.0, reset=False, isolate=True, work=work,
                          keep=True, store=store)
    t_iso = time.perf_counter() - t0
    t0 = time.perf_counter()
    b2b = fpga_sim.verify(model, x, sim, lanes=lanes, gap=0.0, stall=0.0, reset=False, work=work, store=store)
    t_b2b = time.perf_counter() - t0
    for r in (iso, b2b):
        if not r.passed:
            raise SystemExit(f"{name}: {r.matched}/{r.total} matched; first mismatch {r.first_mismatch}; {r.error}")
    frames = json.loads((iso.run_dir / "results.json").read_text())["frames"]
    firing = [k for k, l in enumerate(model.layers) if not l.readout]
    L = len(model.layers)
    layer_end = np.zeros((n, L))
    for f, fr in enumerate(frames):
        for k in range(L):
            end = fr["eof"][firing.index(k)] if k in firing else fr["result_valid"]
            layer_end[f, k] = end - fr["start"]
    cum_lim = np.cumsum(lim, axis=1)
    latency = np.array(iso.cycles, dtype=np.float64)
    total_lim = lim.sum(1)
    shape = tuple(model.input_shape)
    stream = int(np.prod(shape)) + (shape[1] if len(shape) == 3 else 1) + 1   # pixels, row markers, frame marker
    slowest = np.maximum(lim.max(1), stream)
    per_layer = []
    for k, l in enumerate(model.layers):
        per_layer.append({
            "layer": k, "kind": l.kind + (" (readout)" if l.readout else ""), "lanes": used[k],
            "sops_median": float(np.median(gold.sops[:, k])), "limit_median": float(np.median(lim[:, k])),
            "cumulative_limit_median": float(np.median(cum_lim[:, k])),
            "end_median": float(np.median(layer_end[:, k])),
            "ratio_median": float(np.median(layer_end[:, k] / np.maximum(cum_lim[:, k], 1))),
        })
    return {
        "model": name, "images": n, "sim": sim, "lanes": lanes, "store": iso.store,
        "load_cycles": iso.stats.get("load_cycles", 0), "matched": f"{iso.matched}/{iso.total}",
        "latency": {"min": float(latency.min()), "median": float(np.median(latency)), "max": float(latency.max())},
        "limit_median": float(np.median(total_lim)),
        "ratio_median": float(np.median(latency / np.maximum(total_lim, 1))),
        "interval_median": med(b2b.interval),
        "bottleneck_limit_median": float(np.median(slowest)),
        "slowest_ratio_median": float(np.median(latency / np.maximum(slowest, 1))),
        "detections_matched": iso.detections_matched,
        "pixels": int(np.prod(model.input_shape)),
        "layers": per_layer, "wall_s": {"isolated": round(t_iso, 1), "back_to_back": round(t_b2b, 1)},
    }


def markdown(results, machine):
    out = [f"Machine: {machine}. Simulator: {results[0]['sim']}; no input gaps, no stalls; every result and spike "
           f"compared with the golden model (all matched).", "",
           "| model | images | lanes | latency min / median / max (cycles) | slowest-layer limit (median) "
           "| latency / slowest-layer limit (median) | sum of layer limits (median) | back-to-back interval (median) "
           "| wall (isolated + back-to-back) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        la = r["latency"]
        st = "" if set(r["store"]) == {"rom"} else f" (store {','.join(r['store'])})"
        lanes = r["lanes"] if isinstance(r["lanes"], int) else ",".join(map(str, r["lanes"]))
        out.append(f"| {r['model']}{st} | {r['images']} | {lanes} | {la['min']:,.0f} / {la['median']:,.0f} / "
                   f"{la['max']:,.0f} | {r['bottleneck_limit_median']:,.0f} | {r['slowest_ratio_median']:.2f} | "
                   f"{r['limit_median']:,.0f} | {r['interval_median']:,.0f} | "
                   f"{r['wall_s']['isolated']:.0f} s + {r['wall_s']['back_to_back']:.0f} s |")
    out += ["", "Per layer (medians over the images; a max-pool's limit is its input spikes, one per cycle; "
            "end of frame = cycles from the first pixel to the layer's end-of-frame marker, or to the result):", "",
            "| model | layer | kind | lanes | SOPs | limit = SOPs / lanes | cumulative limit | end of frame | end / cumulative limit |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for x in r["layers"]:
            out.append(f"| {r['model']} | {x['layer']} | {x['kind']} | {x['lanes']} | {x['sops_median']:,.0f} | "
                       f"{x['limit_median']:,.0f} | {x['cumulative_limit_median']:,.0f} | {x['end_median']:,.0f} | "
                       f"{x['ratio_median']:.2f} |")
    return "\n".join(out) + "\n"


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results):
        xs = np.arange(len(r["layers"]))
        ax.bar(xs - 0.2, [x["cumulative_limit_median"] for x in r["layers"]], 0.4, label="cumulative limit (SOPs / lanes)")
        ax.bar(xs + 0.2, [x["end_median"] for x in r["layers"]], 0.4, label="end of frame (measured)")
        ax.set_xticks(xs, [f"{x['layer']}:{x['kind'].split()[0]}" for x in r["layers"]], rotation=30, fontsize=8)
        ax.axhline(r["bottleneck_limit_median"], color="k", lw=0.8, ls="--", label="slowest-layer limit")
        ax.set_title(f"{r['model']} (lanes {r['lanes']}), median cycles from first pixel", fontsize=8)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--sim", default="verilator", choices=fpga_sim.SIMULATORS)
    ap.add_argument("--lanes", default="8", help="N, one per layer (N,N,...), or auto (needs --board)")
    ap.add_argument("--board", default=None, help="an FPGA board: --lanes auto fits it, --store auto resolves for it")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--store", default="rom", help="rom, ram, auto, or one per layer separated by commas (e.g. ram,rom)")
    ap.add_argument("--out", default=str(ROOT / "build" / "bench"))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    results = []
    for name in a.models:
        from codegen import fpga

        store = a.store.split(",") if "," in a.store else a.store
        r = run_model(name, MODELS[name], a.n, a.sim, fpga.parse_lanes(a.lanes), ROOT / "build" / "fpga_sim", store,
                      a.board)
        print(json.dumps({k: r[k] for k in ("model", "lanes", "matched", "latency", "bottleneck_limit_median",
                                            "slowest_ratio_median", "limit_median", "interval_median", "wall_s")}),
              flush=True)
        results.append(r)
    (out / "fpga.json").write_text(json.dumps(results, indent=1))
    (out / "fpga.md").write_text(markdown(results, machine))
    plot(results, out / "fpga_layers.png")
    print((out / "fpga.md").read_text())


if __name__ == "__main__":
    main()
