"""Detector benchmark: input size / colour / depth vs accuracy vs synaptic operations vs Cortex-M4 cost.

    .venv/bin/python scripts/bench_det.py [--configs NAME ...] [--dataset bccd] [--count 3] [--out build/bench_det]

Per configuration (see CONFIGS): train the detector ANN from seed 0 (codegen.frontend.train_det; the
ANN is cached in OUT/ann/ and reused when its settings match), convert it (codegen convert's detector
path: the (Q, T) search, the integer head), and measure on the ``val`` split (where everything is
chosen): the integer model's mAP@0.5, mAP@[.5:.95], per-class AP@0.5, FOMO F1, synaptic operations
per frame (golden model); whether it fits a nucleo-f446re (flash and RAM with the parity firmware),
and, if it does, instructions per frame (inference + decode) under Unicorn on the first --count val
images at -O2, with frames per second at 168 MHz (instructions, not cycles: an upper bound).
Writes OUT/table.md and OUT/table.json (and OUT/NAME.pt, the converted models).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boards import registry  # noqa: E402
from codegen.c import emulators, firmware  # noqa: E402
from codegen.detection import convert as det_convert  # noqa: E402
from codegen.frontend import ann, train_det, voc  # noqa: E402
from runtime import golden, modelfile  # noqa: E402
from runtime.errors import UserError  # noqa: E402

# name -> (input (width, height), channels, widths, body)
CONFIGS = {
    "96x72-rgb": ((96, 72), 3, (8, 16, 32, 32), 1),
    "128x96-rgb": ((128, 96), 3, (8, 16, 32, 32), 1),
    "128x96-rgb-b2": ((128, 96), 3, (8, 16, 32, 32, 32), 2),
    "160x120-rgb-b2": ((160, 120), 3, (8, 16, 32, 32, 32), 2),
    "160x120-gray-b2": ((160, 120), 1, (8, 16, 32, 32, 32), 2),
    "192x144-rgb-b2": ((192, 144), 3, (8, 16, 32, 32, 32), 2),
    "192x144-gray-b2": ((192, 144), 1, (8, 16, 32, 32, 32), 2),
}
CLOCK_HZ = 168_000_000


def trained(name, arch, cfg, epochs, cache: Path):
    size, ch, widths, body = cfg
    p = cache / f"{name}.ann.pt"
    if p.exists():
        net, shape, meta = ann.load(p)
        if (meta.get("input_size") == list(size) and meta.get("channels") == ch and meta.get("widths") == list(widths)
                and meta.get("body") == body and meta.get("arch") == arch and (epochs is None or meta.get("epochs") == epochs)):
            return net, shape, meta
    t = time.time()
    net, meta = train_det.train(arch, size=size, channels=ch, widths=widths, body=body, epochs=epochs, progress=False)
    meta["train_seconds"] = round(time.time() - t, 1)
    shape = (ch, size[1], size[0])
    ann.save(p, net, shape, meta)
    return ann.load(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--dataset", default="bccd", choices=sorted(a.dataset for a in train_det.ARCHS.values()))
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--out", default="build/bench_det")
    args = ap.parse_args()
    arch = next(k for k, a in train_det.ARCHS.items() if a.dataset == args.dataset)
    out = Path(args.out)
    (out / "ann").mkdir(parents=True, exist_ok=True)
    board = registry.mcu("nucleo-f446re")
    rows = []
    for name in args.configs:
        cfg = CONFIGS[name]
        net, shape, meta = trained(name, arch, cfg, args.epochs, out / "ann")
        conv, figures = det_convert.convert(net, shape, meta, args.dataset, name, progress=False)
        m = conv.model
        m.meta.update({"name": name, "dataset": args.dataset, "ann_meta": meta})
        modelfile.save(m, out / f"{name}.pt")
        va = voc.load(args.dataset, "val", (shape[2], shape[1]), shape[0], classes=list(m.head.classes))
        g = golden.run_batched(m, va.images)
        f = figures["val"]["integer"]
        row = {"config": name, "input": f"{shape[2]}x{shape[1]}x{shape[0]}", "body": cfg[3], "widths": list(cfg[2]),
               "Q": m.Q, "T": m.T, "train_seconds": meta.get("train_seconds"),
               "val_map50": {k: figures["val"][k]["map50"] for k in figures["val"]},
               "val_map": f["map"], "val_ap50": {k: v["ap50"] for k, v in f["per_class"].items()},
               "val_fomo_f1": f["fomo"]["f1"], "sops_per_frame": float(g.sops.sum(1).mean()),
               "ann_macs_per_frame": int(sum(s for s in __import__("runtime.spec", fromlist=["x"]).dense_macs(m)))}
        try:
            firmware.check_fit(m, board)
            fw = firmware.build_firmware(m, name, board, out / "work", opt="-O2")
            u = emulators.run_unicorn(fw, va.images[:args.count], m.num_classes)
            ins = statistics.median(u.instructions)
            row.update({"fits": True, "flash_bytes": fw.sizes["flash_bytes"], "ram_bytes": fw.sizes["ram_bytes"],
                        "instructions_per_frame": int(ins), "fps_at_168MHz_from_instructions": CLOCK_HZ / ins,
                        "device_equals_golden": all(np.array_equal(a, b) for a, b in zip(u.detections, g.detections))})
        except UserError as e:
            row.update({"fits": False, "why": str(e)})
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "table.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| config | input | val mAP@0.5 (ANN / one-spike float / integer) | val mAP@[.5:.95] | AP@0.5 per class | "
             "FOMO F1 | SOPs / frame | ANN MACs / frame | nucleo-f446re flash / RAM | instructions / frame | fps @168 MHz |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mp = r["val_map50"]
        fit = (f"{r['flash_bytes'] / 1024:.0f} / {r['ram_bytes'] / 1024:.0f} KiB" if r["fits"] else "does not fit")
        ins = f"{r['instructions_per_frame'] / 1e6:.2f} M" if r["fits"] else "-"
        fps = f"{r['fps_at_168MHz_from_instructions']:.1f}" if r["fits"] else "-"
        lines.append(f"| {r['config']} | {r['input']} | {mp['ann_float']:.3f} / {mp['onespike_float']:.3f} / "
                     f"{mp['integer']:.3f} | {r['val_map']:.3f} | "
                     + ", ".join(f"{k} {v:.3f}" for k, v in r["val_ap50"].items())
                     + f" | {r['val_fomo_f1']:.3f} | {r['sops_per_frame'] / 1e6:.2f} M | {r['ann_macs_per_frame'] / 1e6:.2f} M"
                     f" | {fit} | {ins} | {fps} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
