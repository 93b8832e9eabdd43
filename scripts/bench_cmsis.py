"""One-spike C vs CMSIS-NN (the int8 baseline users run) on a Cortex-M4, same board, start-up code,
firmware main and counter, in one run. So far the MLP (CMSIS-NN fully connected; the conv networks
are issue 12's next step).

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
    name = "mnist-mlp"
    m = modelfile.load(ROOT / "models" / f"{name}.pt")
    net, shape, _ = ann.load(ROOT / "models" / f"{name}.ann.pt")
    xtr, _ = datasets.load("mnist", "train")
    xte, yte = datasets.load("mnist", "test")
    calib = xtr[np.sort(np.random.default_rng(0).choice(len(xtr), size=10000, replace=False))]
    q = cmsis.quantise(convert.lower(net, shape), calib)
    ref = cmsis.forward(q, xte)
    gold = golden.run_batched(m, xte)
    imgs = xte[:args.count]
    row = {"model": name, "images_counted": len(imgs),
           "accuracy": {"onespike_integer": float((gold.classes == yte).mean()), "cmsis_nn_int8": float((ref.argmax(1) == yte).mean())}}
    for opt in ("-O2", "-Os"):
        fw = firmware.build_firmware(m, name, b, out / name / opt, opt=opt)
        r = emulators.run_unicorn(fw, imgs, m.num_classes)
        assert np.array_equal(r.logits, gold.logits[:args.count]), "one-spike C differs from golden"
        lib = cmsis.build_library(b.cpu_flags, opt, out / "lib")
        fwc = firmware.build_elf(cmsis.generate(q, "mlp_cmsis", 784), ["mlp_cmsis.c"], "mlp_cmsis_infer", 784, 10, b,
                                 out / name / f"cmsis{opt}", opt, "mlp_cmsis", include_dirs=[cmsis.vendor() / "Include"],
                                 libs=[lib])
        rc = emulators.run_unicorn(fwc, imgs, 10)
        assert np.array_equal(rc.logits, ref[:args.count]), "CMSIS-NN differs from its numpy reference"
        row[opt] = {k: {"instructions_median": statistics.median(x.instructions), "cycles_estimate_median": statistics.median(x.cycles),
                        "flash": f.sizes["flash_bytes"], "ram": f.sizes["ram_bytes"]} for k, x, f in
                    (("onespike", r, fw), ("cmsis_nn", rc, fwc))}
        row[opt]["ratio_instructions"] = row[opt]["onespike"]["instructions_median"] / row[opt]["cmsis_nn"]["instructions_median"]
        row[opt]["ratio_cycles_estimate"] = row[opt]["onespike"]["cycles_estimate_median"] / row[opt]["cmsis_nn"]["cycles_estimate_median"]
    (out / "bench_cmsis.json").write_text(json.dumps(row, indent=2) + "\n")
    lines = ["| model | opt | one-spike instr | CMSIS-NN instr | ratio | one-spike est. cycles | CMSIS-NN est. cycles | ratio | "
             "one-spike flash / RAM (B) | CMSIS-NN flash / RAM (B) | accuracy one-spike / CMSIS-NN |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for opt in ("-O2", "-Os"):
        o, c = row[opt]["onespike"], row[opt]["cmsis_nn"]
        lines.append(f"| {name} | {opt} | {o['instructions_median']:,.0f} | {c['instructions_median']:,.0f} | "
                     f"{row[opt]['ratio_instructions']:.2f} | {o['cycles_estimate_median']:,.0f} | {c['cycles_estimate_median']:,.0f} | "
                     f"{row[opt]['ratio_cycles_estimate']:.2f} | {o['flash']:,} / {o['ram']:,} | {c['flash']:,} / {c['ram']:,} | "
                     f"{100 * row['accuracy']['onespike_integer']:.2f}% / {100 * row['accuracy']['cmsis_nn_int8']:.2f}% |")
    (out / "bench_cmsis.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
