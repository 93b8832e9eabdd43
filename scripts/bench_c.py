"""C-target benchmark: one-spike C vs a straightforward int8 ANN of the same network, on Cortex-M4.

    .venv/bin/python scripts/bench_c.py [--count 20] [--full-qemu] [--out build/bench_c]

Per shipped model, both built with arm-none-eabi-gcc for mps2-an386 (-O2 and -Os):
instructions per inference and the Cortex-M4 cycle estimate (codegen/c/timing.py) counted under Unicorn (median over the first --count test images;
the same images for both), flash and RAM (arm-none-eabi-size), peak stack (measured), accuracy on
the full test set (one-spike: the golden model, which the C equals; int8: its numpy reference,
checked equal to its C on the counted images), and the ratio one-spike / int8.
--full-qemu also runs the one-spike firmware under QEMU on the full 10k test set and compares
every output with the golden model.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from codegen.frontend import ann
from codegen.frontend import convert
from codegen.frontend import datasets
from codegen.c import emit as emit_c
from boards import registry
from codegen.c import emulators
from codegen.c import firmware
from codegen.c.baseline import int8
from runtime import golden, modelfile

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"mnist-mlp": "mnist", "mnist-cnn": "mnist", "fmnist-cnn": "fashion-mnist"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--full-qemu", action="store_true")
    ap.add_argument("--out", default="build/bench_c")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    b = registry.mcu("mps2-an386")
    rows = []
    for name, ds in MODELS.items():
        m = modelfile.load(ROOT / "models" / f"{name}.pt")
        net, shape, _ = ann.load(ROOT / "models" / f"{name}.ann.pt")
        xtr, _ = datasets.load(ds, "train")
        xte, yte = datasets.load(ds, "test")
        rng = np.random.default_rng(0)
        calib = xtr[np.sort(rng.choice(len(xtr), size=10000, replace=False))]
        q = int8.quantise(convert.lower(net, shape), calib)
        int8_logits = int8.forward(q, xte)
        gold = golden.run_batched(m, xte)
        imgs = xte[:args.count]
        row = {"model": name, "images_counted": len(imgs),
               "accuracy": {"onespike_integer": float((gold.classes == yte).mean()),
                            "int8_ann": float((int8_logits.argmax(1) == yte).mean())},
               "sops_per_inference": float(gold.sops[:args.count].sum(1).mean())}
        sym8 = emit_c.c_symbol(name) + "_int8"
        for opt in ("-O2", "-Os"):
            fw = firmware.build_firmware(m, name, b, out / name, opt=opt)
            r = emulators.run_unicorn(fw, imgs, m.num_classes)
            assert np.array_equal(r.logits, gold.logits[:args.count]), "one-spike C differs from golden"
            fw8 = firmware.build_elf(int8.generate(q, name, shape), [f"{sym8}_model.c", "int8_ann.c"], f"{sym8}_infer",
                                int(np.prod(shape)), m.num_classes, b, out / name / f"int8{opt}", opt, sym8)
            r8 = emulators.run_unicorn(fw8, imgs, m.num_classes)
            assert np.array_equal(r8.logits, int8_logits[:args.count]), "int8 C differs from its numpy reference"
            ours, base = statistics.median(r.instructions), statistics.median(r8.instructions)
            ours_c, base_c = statistics.median(r.cycles), statistics.median(r8.cycles)
            row[opt] = {"onespike": {"instructions_median": ours, "cycles_estimate_median": ours_c,
                                     "flash": fw.sizes["flash_bytes"], "ram": fw.sizes["ram_bytes"],
                                     "stack_peak": r.stack_peak_bytes},
                        "int8": {"instructions_median": base, "cycles_estimate_median": base_c,
                                 "flash": fw8.sizes["flash_bytes"], "ram": fw8.sizes["ram_bytes"],
                                 "stack_peak": r8.stack_peak_bytes},
                        "ratio_instructions": ours / base, "ratio_cycles_estimate": ours_c / base_c}
        if args.full_qemu:
            fw = firmware.build_firmware(m, name, b, out / name / "qemu", opt="-O2")
            t = time.perf_counter()
            lq, cq = emulators.run_qemu(fw, xte, m.num_classes, timeout=3600)
            row["qemu_full"] = {"images": len(xte), "matched": int((np.all(lq == gold.logits, axis=1) & (cq == gold.classes)).sum()),
                                "seconds": round(time.perf_counter() - t, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "bench_c.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| model | opt | one-spike instr/inf | int8 ANN instr/inf | ratio | one-spike est. cycles | int8 est. cycles | "
             "ratio | one-spike flash / RAM (B) | int8 flash / RAM (B) | accuracy one-spike / int8 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        for opt in ("-O2", "-Os"):
            o, i = r[opt]["onespike"], r[opt]["int8"]
            lines.append(f"| {r['model']} | {opt} | {o['instructions_median']:,.0f} | {i['instructions_median']:,.0f} | "
                         f"{r[opt]['ratio_instructions']:.2f} | {o['cycles_estimate_median']:,.0f} | "
                         f"{i['cycles_estimate_median']:,.0f} | {r[opt]['ratio_cycles_estimate']:.2f} | "
                         f"{o['flash']:,} / {o['ram']:,} | {i['flash']:,} / {i['ram']:,} | "
                         f"{100 * r['accuracy']['onespike_integer']:.2f}% / {100 * r['accuracy']['int8_ann']:.2f}% |")
    (out / "bench_c.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    for r in rows:
        if "qemu_full" in r:
            print(f"{r['model']}: QEMU full test set {r['qemu_full']['matched']}/{r['qemu_full']['images']} matched "
                  f"in {r['qemu_full']['seconds']} s")


if __name__ == "__main__":
    main()
