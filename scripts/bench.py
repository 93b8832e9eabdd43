"""Benchmark: golden-model throughput vs the same network as a float PyTorch ANN, and conversion time.

    .venv/bin/python scripts/bench.py [--repeats 5] [--out build/bench]

For every shipped model: inferences per second of the Numba golden model on the full 10k test set
and of the float ANN (torch, CPU, same threads, batch 1000) in the same run, median of --repeats
runs after a warm-up; and the wall time of `convert` (calibration + Q/T search + quantisation).
Writes a Markdown table and JSON under --out.
"""
import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numba
import numpy as np
import torch

from codegen.frontend import ann
from codegen.frontend import convert
from codegen.frontend import datasets
from runtime import golden, modelfile

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"mnist-mlp": "mnist", "mnist-cnn": "mnist", "fmnist-cnn": "fashion-mnist"}


def median_time(fn, repeats):
    fn()  # warm-up (JIT, caches)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="build/bench")
    ap.add_argument("--no-convert", action="store_true")
    args = ap.parse_args()
    threads = int(os.environ.get("NUMBA_NUM_THREADS", numba.get_num_threads()))
    torch.set_num_threads(threads)
    rows = []
    for name, ds in MODELS.items():
        m = modelfile.load(ROOT / "models" / f"{name}.pt")
        net, shape, _ = ann.load(ROOT / "models" / f"{name}.ann.pt")
        x, y = datasets.load(ds, "test")
        xf = torch.from_numpy(x.astype(np.float32) / 255.0)

        def run_golden():
            golden.run_batched(m, x, batch=1000)

        def run_ann():
            with torch.no_grad():
                for i in range(0, len(xf), 1000):
                    net(xf[i:i + 1000])

        tg = median_time(run_golden, args.repeats)
        ta = median_time(run_ann, args.repeats)
        row = {"model": name, "images": len(x), "golden_inf_per_s": len(x) / tg, "ann_inf_per_s": len(x) / ta,
               "golden_over_ann": (len(x) / tg) / (len(x) / ta)}
        if not args.no_convert:
            xtr, _ = datasets.load(ds, "train")
            rng = np.random.default_rng(0)
            calib = xtr[np.sort(rng.choice(len(xtr), size=10000, replace=False))]
            t = time.perf_counter()
            convert.convert(net, shape, calib, progress=False)
            row["convert_s"] = time.perf_counter() - t
        rows.append(row)
        print(json.dumps(row), flush=True)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
               "torch": str(torch.__version__), "numba": numba.__version__}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    lines = [f"Machine: {machine['cpu']}, {machine['cores']} cores, {threads} threads; Python {machine['python']}, "
             f"torch {machine['torch']}, numba {machine['numba']}. Median of {args.repeats} runs after a warm-up.", "",
             "| model | golden model (inf/s) | float ANN, torch CPU (inf/s) | golden / ANN | convert (s) |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        conv = f"{r['convert_s']:.1f}" if "convert_s" in r else "-"
        lines.append(f"| {r['model']} | {r['golden_inf_per_s']:,.0f} | {r['ann_inf_per_s']:,.0f} | {r['golden_over_ann']:.2f}x | {conv} |")
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
