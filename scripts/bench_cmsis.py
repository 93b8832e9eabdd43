"""One-spike C vs CMSIS-NN (the int8 baseline users run) on a Cortex-M4, same board, start-up code,
firmware main and counter, in one run, for every shipped classifier (CMSIS-NN's
arm_fully_connected_per_channel_s8, arm_convolve_wrapper_s8, arm_max_pool_s8).

    .venv/bin/python scripts/bench_cmsis.py [--count 10] [--out build/bench_cmsis]
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boards import registry  # noqa: E402
from codegen.c import emulators, firmware  # noqa: E402
from codegen.c.baseline import cmsis  # noqa: E402
from codegen.frontend import ann, convert, datasets  # noqa: E402
from runtime import golden, modelfile  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--out", default="build/bench_cmsis")
    args = ap.parse_args()
    why = cmsis.missing()
    if why:
        print(why)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    b = registry.mcu("mps2-an386")
    rows = []
    for name, ds in (("mnist-mlp", "mnist"), ("mnist-cnn", "mnist"), ("fmnist-cnn", "fashion-mnist")):
        m = modelfile.load(ROOT / "models" / f"{name}.pt")
        net, shape, _ = ann.load(ROOT / "models" / f"{name}.ann.pt")
        xtr, _ = datasets.load(ds, "train")
        xte, yte = datasets.load(ds, "test")
        calib = xtr[np.sort(np.random.default_rng(0).choice(len(xtr), size=10000, replace=False))]
        q = cmsis.quantise(convert.lower(net, shape), calib)
        ref = cmsis.forward(q, xte)
        gold = golden.run_batched(m, xte)
        imgs = xte[:args.count]
        row = {"model": name, "images_counted": len(imgs),
               "accuracy": {"onespike_integer": float((gold.classes == yte).mean()),
                            "cmsis_nn_int8": float((ref.argmax(1) == yte).mean())}}
        sym = name.replace("-", "_") + "_cmsis"
        for opt in ("-O2", "-Os"):
            fw = firmware.build_firmware(m, name, b, out / name / opt, opt=opt)
            r = emulators.run_unicorn(fw, imgs, m.num_classes)
            assert np.array_equal(r.logits, gold.logits[:args.count]), "one-spike C differs from golden"
            lib = cmsis.build_library(b.cpu_flags, opt, out / "lib")
            fwc = firmware.build_elf(cmsis.generate(q, sym, int(np.prod(shape))), [f"{sym}.c"], f"{sym}_infer",
                                     int(np.prod(shape)), m.num_classes, b, out / name / f"cmsis{opt}", opt, sym,
                                     include_dirs=[cmsis.vendor() / "Include"], libs=[lib])
            rc = emulators.run_unicorn(fwc, imgs, m.num_classes)
            assert np.array_equal(rc.logits, ref[:args.count]), "CMSIS-NN differs from its numpy reference"
            row[opt] = {k: {"instructions_median": statistics.median(x.instructions),
                            "cycles_estimate_median": statistics.median(x.cycles),
                            "flash": f.sizes["flash_bytes"], "ram": f.sizes["ram_bytes"]} for k, x, f in
                        (("onespike", r, fw), ("cmsis_nn", rc, fwc))}
            for k in ("instructions_median", "cycles_estimate_median"):
                row[opt]["ratio_" + k] = row[opt]["onespike"][k] / row[opt]["cmsis_nn"][k]
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "bench_cmsis.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| model | opt | one-spike instr | CMSIS-NN instr | ratio | one-spike est. cycles | CMSIS-NN est. cycles | ratio | "
             "one-spike flash / RAM (B) | CMSIS-NN flash / RAM (B) | accuracy one-spike / CMSIS-NN |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        for opt in ("-O2", "-Os"):
            o, c, rr = row[opt]["onespike"], row[opt]["cmsis_nn"], row[opt]
            lines.append(f"| {row['model']} | {opt} | {o['instructions_median']:,.0f} | {c['instructions_median']:,.0f} | "
                         f"{rr['ratio_instructions_median']:.2f} | {o['cycles_estimate_median']:,.0f} | "
                         f"{c['cycles_estimate_median']:,.0f} | {rr['ratio_cycles_estimate_median']:.2f} | "
                         f"{o['flash']:,} / {o['ram']:,} | {c['flash']:,} / {c['ram']:,} | "
                         f"{100 * row['accuracy']['onespike_integer']:.2f}% / {100 * row['accuracy']['cmsis_nn_int8']:.2f}% |")
    (out / "bench_cmsis.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
