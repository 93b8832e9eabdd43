"""Bulk RTL parity at scale (issue 14): every shipped model's whole test set through the compiled
Verilator harness (codegen/fpga/bulk.py) on 1 and 2 Dask workers, against the cocotb bench's rate
measured on a few of the same frames in the same run; and, with ``--engines``, Dask distributed
against Ray on the same jobs (why the project runs on Dask).

    .venv/bin/python scripts/bench_bulk.py [--models mnist-mlp mnist-cnn fmnist-cnn bccd-det]
        [--one-worker-frames N] [--cocotb-frames N] [--engines] [--out build/bench/bulk]

Stimulus: the ``codegen verify --bulk`` default (random input gaps 25 %, result stalls 30 %, a
reset that cuts frames in flight in every chunk); lanes 8, block-RAM store. ``--one-worker-frames``
caps the one-worker run (the full set on two workers is always run): its rate is what the
projection uses. Writes ``bulk.json`` and ``bulk.md`` in ``--out``.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codegen.fpga import bulk  # noqa: E402
from codegen.fpga import sim as fpga_sim  # noqa: E402
from runtime import modelfile  # noqa: E402

MODELS = {"mnist-mlp": "mnist", "mnist-cnn": "mnist", "fmnist-cnn": "fashion-mnist", "bccd-det": "bccd"}
STIMULUS = {"gap": 0.25, "stall": 0.3, "reset": True}


def test_set(name: str, model):
    ds = MODELS[name]
    if model.task == "detect":
        from codegen.frontend import voc

        c, h, w = model.input_shape
        return voc.load(ds, "test", (w, h), c, classes=list(model.head.classes), progress=False).images
    from codegen.frontend import datasets

    return datasets.load(ds, "test")[0]


def run_bulk(model, x, workers: int, work: Path) -> dict:
    t0 = time.perf_counter()
    r = bulk.bulk_verify(model, x, 8, work=work, workers=workers, progress=True, **STIMULUS)
    wall = time.perf_counter() - t0
    return {"frames": len(x), "workers": workers, "matched": r.matched, "checked": r.checked, "passed": r.passed,
            "error": r.error, "sim_s": round(r.sim_s, 2), "build_s": round(r.build_s, 2), "wall_s": round(wall, 2),
            "fps": round(len(x) / r.sim_s, 2), "fps_per_worker": round(len(x) / r.sim_s / workers, 2),
            "cycles_median": statistics.median(r.cycles) if r.cycles else None, "stats": r.stats,
            "detections_matched": r.detections_matched, "summary": r.summary()}


def run_cocotb(model, x, work: Path) -> dict:
    r = fpga_sim.verify(model, x, "verilator", lanes=8, work=work)    # the bench's default stimulus
    return {"frames": len(x), "matched": r.matched, "passed": r.passed, "sim_s": round(r.sim_s, 2),
            "fps": round(len(x) / r.sim_s, 4)}


# --- engines -------------------------------------------------------------------------------------

def engine_bench(model, x, work: Path, tasks: int = 200) -> dict:
    """Dask distributed against Ray, both on this machine with 2 worker processes: start-up (cluster
    up and one task back), the round trip of ``tasks`` trivial tasks, and the same bulk-parity jobs
    (the frames of ``x`` in 8 chunks) end to end."""
    from codegen.fpga import engine

    jobs_seen = {}
    _noop = lambda i: i        # noqa: E731 -- pickled by value, so the workers need not import this script

    def capture(fn, jobs, workers, cluster, **kw):        # bulk_verify's jobs, run by the engine under test
        jobs_seen["fn"], jobs_seen["jobs"] = fn, jobs
        return jobs_seen["runner"](fn, jobs)

    out = {}
    # Dask
    from dask.distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cl = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cl)
    client.submit(_noop, 0).result()
    start = time.perf_counter() - t0
    trips = []
    for _ in range(3):
        t0 = time.perf_counter()
        client.gather(client.map(_noop, range(tasks), pure=False))
        trips.append(time.perf_counter() - t0)

    def dask_runner(fn, jobs):
        futs = [client.submit(fn, *j, retries=engine.RETRIES, pure=False) for j in jobs]
        return client.gather(futs), []

    jobs_seen["runner"] = dask_runner
    real = bulk.run_jobs
    bulk.run_jobs = capture
    try:
        t0 = time.perf_counter()
        r = bulk.bulk_verify(model, x, 8, work=work, workers=2, **STIMULUS)
        wall = time.perf_counter() - t0
    finally:
        bulk.run_jobs = real
    out["dask"] = {"version": __import__("distributed").__version__, "startup_s": round(start, 2),
                   "task_ms": round(1000 * statistics.median(trips) / tasks, 3), "bulk_wall_s": round(wall, 2),
                   "bulk_sim_s": round(r.sim_s, 2), "matched": r.matched, "frames": len(x)}
    client.close()
    cl.close()
    # Ray
    try:
        import ray
    except ImportError:
        out["ray"] = {"error": "ray is not installed (pip install ray): not measured"}
        return out
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    noop = ray.remote(_noop)
    ray.get(noop.remote(0))
    start = time.perf_counter() - t0
    trips = []
    for _ in range(3):
        t0 = time.perf_counter()
        ray.get([noop.remote(i) for i in range(tasks)])
        trips.append(time.perf_counter() - t0)

    def ray_runner(fn, jobs):
        rf = ray.remote(max_retries=engine.RETRIES, retry_exceptions=True)(fn)
        return ray.get([rf.remote(*j) for j in jobs]), []

    jobs_seen["runner"] = ray_runner
    bulk.run_jobs = capture
    try:
        t0 = time.perf_counter()
        r = bulk.bulk_verify(model, x, 8, work=work, workers=2, **STIMULUS)
        wall = time.perf_counter() - t0
    finally:
        bulk.run_jobs = real
        ray.shutdown()
    out["ray"] = {"version": ray.__version__, "startup_s": round(start, 2),
                  "task_ms": round(1000 * statistics.median(trips) / tasks, 3), "bulk_wall_s": round(wall, 2),
                  "bulk_sim_s": round(r.sim_s, 2), "matched": r.matched, "frames": len(x)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--one-worker-frames", type=int, default=None,
                    help="frames of the one-worker run (default: the whole test set)")
    ap.add_argument("--cocotb-frames", type=int, default=4)
    ap.add_argument("--engines", action="store_true", help="also compare Dask and Ray on the MNIST CNN")
    ap.add_argument("--engine-frames", type=int, default=400)
    ap.add_argument("--out", default=str(ROOT / "build" / "bench" / "bulk"))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = ROOT / "build" / "fpga_bulk"
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
           "date": time.strftime("%Y-%m-%d"), "stimulus": STIMULUS, "lanes": 8, "models": {},
           "load_average_before": [round(v, 2) for v in os.getloadavg()]}
    for name in a.models:
        m = modelfile.load(ROOT / "models" / f"{name}.pt")
        x = test_set(name, m)
        row = {"test_frames": len(x)}
        print(f"{name}: {len(x)} frames", flush=True)
        row["cocotb"] = run_cocotb(m, x[: a.cocotb_frames], ROOT / "build" / "fpga_sim")
        print("  cocotb", row["cocotb"], flush=True)
        n1 = len(x) if a.one_worker_frames is None else min(len(x), a.one_worker_frames)
        row["one"] = run_bulk(m, x[:n1], 1, work)
        print("  1 worker", row["one"]["summary"], row["one"]["sim_s"], "s", flush=True)
        row["two"] = run_bulk(m, x, 2, work)
        print("  2 workers", row["two"]["summary"], row["two"]["sim_s"], "s", flush=True)
        row["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
        res["models"][name] = row
        (out / "bulk.json").write_text(json.dumps(res, indent=1))
    if a.engines:
        m = modelfile.load(ROOT / "models" / "mnist-cnn.pt")
        res["engines"] = engine_bench(m, test_set("mnist-cnn", m)[: a.engine_frames], work)
        print("engines", res["engines"], flush=True)
    (out / "bulk.json").write_text(json.dumps(res, indent=1))
    (out / "bulk.md").write_text(table(res))
    print(table(res))
    return 0 if all(r["two"]["passed"] and r["one"]["passed"] for r in res["models"].values()) else 1


def table(res: dict) -> str:
    lines = [f"Machine: {res['machine']}; {res['date']}; stimulus {res['stimulus']}, lanes {res['lanes']}.", "",
             "| model | frames | matched (2 workers) | 1 worker: frames, s, frames/s | 2 workers: s, frames/s | speed-up | "
             "cocotb frames/s (frames) | per worker vs cocotb | projection: N machines of 2 cores |",
             "|---|---:|---:|---|---|---:|---|---:|---|"]
    for name, r in res["models"].items():
        one, two, co = r["one"], r["two"], r["cocotb"]
        speed = one["fps"] and two["fps"] / one["fps"]
        det = f" (detections {two['detections_matched']}/{two['frames']})" if two.get("detections_matched") is not None else ""
        lines.append(
            f"| {name} | {two['frames']:,} | {two['matched']:,}{det} | {one['frames']:,}, {one['sim_s']:.1f}, {one['fps']:.2f} | "
            f"{two['sim_s']:.1f}, {two['fps']:.2f} | {speed:.2f}x | {co['fps']:.3f} ({co['frames']}) | "
            f"{one['fps'] / co['fps']:.0f}x | {two['fps_per_worker']:.2f} x 2N frames/s: 10k frames in "
            f"{10000 / (two['fps_per_worker'] * 2):.0f}/N s |")
    e = res.get("engines")
    if e:
        lines += ["", "| engine | version | start-up s | ms per trivial task | bulk jobs wall s (frames) |", "|---|---|---:|---:|---|"]
        for k, v in e.items():
            if "error" in v:
                lines.append(f"| {k} | - | - | - | {v['error']} |")
            else:
                lines.append(f"| {k} | {v['version']} | {v['startup_s']} | {v['task_ms']} | {v['bulk_wall_s']} ({v['frames']}, "
                             f"{v['matched']} matched) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
