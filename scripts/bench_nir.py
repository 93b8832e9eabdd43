"""NIR export (``codegen export --to nir``): how far the time-stepped reading of the exported graph agrees
with the golden model, per shipped classifier and number of steps, in one run.

    .venv/bin/python scripts/bench_nir.py [--models mnist-mlp,mnist-cnn,fmnist-cnn] [--steps 8,16,32,64]
                                          [-n 10000] [--out build/bench_nir]

Per model, the graph is written with ``codegen.nirgraph.write`` and read back with ``nir.read``. The
integer model rebuilt from it (``from_nir``) must give the golden model's logits on every image. The
graph then runs in sinabs (``sinabs.from_nir``: IF = ``IAFSqueeze``, subtract reset) for each number
of steps, with the decoded input code as a constant current. The class is the argmax of the
readout's summed output. Reported per case: agreement with the golden model's class, accuracy of both,
and seconds. Writes OUT/bench_nir.json and OUT/bench_nir.md.
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATASETS = {"mnist-mlp": "mnist", "mnist-cnn": "mnist", "fmnist-cnn": "fashion-mnist"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mnist-mlp,mnist-cnn,fmnist-cnn")
    ap.add_argument("--steps", default="8,16,32,64")
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--out", default="build/bench_nir")
    args = ap.parse_args()
    import nir
    import torch

    from codegen import nirgraph
    from codegen.frontend import datasets
    from runtime import golden, modelfile

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        m = modelfile.load(ROOT / "models" / f"{name}.pt")
        x, y = datasets.load(DATASETS[name], "test")
        x, y = x[: args.n], y[: args.n]
        path = out / f"{name}.nir"
        nirgraph.write(m, path)
        g = nir.read(str(path))
        gold = golden.run_batched(m, x, progress=False)
        back = golden.run_batched(nirgraph.from_nir(g), x, progress=False)
        exact = bool(np.array_equal(back.logits, gold.logits))
        for steps in (int(s) for s in args.steps.split(",")):
            t0 = time.time()
            c = nirgraph.run_sinabs(g, m, x, steps)
            secs = time.time() - t0
            rows.append({"model": name, "images": len(x), "steps": steps, "read_back_exact": exact,
                         "agreement": float((c == gold.classes).mean()), "golden_accuracy": float((gold.classes == y).mean()),
                         "sinabs_accuracy": float((c == y).mean()), "seconds": secs, "bytes": path.stat().st_size})
            r = rows[-1]
            print(f"{name:10s} {steps:3d} steps: agreement {100 * r['agreement']:.2f}% | golden {100 * r['golden_accuracy']:.2f}% "
                  f"| sinabs {100 * r['sinabs_accuracy']:.2f}% | read back exact {exact} | {secs:.1f} s", flush=True)
    info = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.python_version()}",
            "rows": rows}
    (out / "bench_nir.json").write_text(json.dumps(info, indent=1) + "\n")
    lines = ["| model | images | steps | class agreement with golden | golden accuracy | sinabs accuracy | read back == model | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['images']} | {r['steps']} | {100 * r['agreement']:.2f}% | "
                     f"{100 * r['golden_accuracy']:.2f}% | {100 * r['sinabs_accuracy']:.2f}% | "
                     f"{'yes' if r['read_back_exact'] else 'NO'} | {r['seconds']:.1f} |")
    (out / "bench_nir.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
