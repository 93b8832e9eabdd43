"""C on Cortex-M4: the one-spike C against CMSIS-NN (Arm's int8 kernels, what TFLite Micro and Edge
Impulse call) for every shipped model, in one run.

    .venv/bin/python scripts/bench_c.py [--count 10] [--models mnist-mlp,...] [--full-qemu] [--out build/bench_c]

Per model (mnist-mlp, mnist-cnn, fmnist-cnn, bccd-det) and per -O2 / -Os, both built with
arm-none-eabi-gcc for mps2-an386 with the same start-up code, firmware main and counter:

* instructions per inference and the Cortex-M4 cycle estimate (codegen/c/timing.py) under Unicorn,
  medians over the first --count test images (the same images for both); the peak stack (painting);
* flash and RAM (arm-none-eabi-size: flash = vectors + .text + .rodata + .data, RAM = .data + .bss);
* accuracy on the full test set: one-spike from the golden model, CMSIS-NN from its numpy reading
  (``codegen.c.baseline.cmsis.forward``), the float ANN beside them; the detector's is mAP@0.5 (the
  CMSIS-NN int8 readout map dequantised and decoded like the float ANN's: ``codegen.detection``);
* the ratios one-spike / CMSIS-NN.

Asserted on the counted images: the one-spike C equals the golden model and CMSIS-NN's C equals its
numpy reading, exactly. Both read each image into the network's own buffer (``NAME_input``,
``SYM_input``). The detector is compared on inference alone (image -> readout map): the one-spike firmware with the integer decode (``NAME_detect``)
runs on the first image too, its detections checked against the golden model, and the decode's
instructions are recorded apart. Without CMSIS-NN (``cmsis.missing()``) its one line is printed and
the one-spike side still runs. --full-qemu also runs the one-spike firmware (-O2, the decode included)
under QEMU on the full test set and compares every output with the golden model.

Writes OUT/bench_c.json, OUT/bench_c.md (the table) and OUT/bench_c.png (the ratios).
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from boards import registry  # noqa: E402
from codegen.c import emit as emit_c  # noqa: E402
from codegen.c import emulators, firmware  # noqa: E402
from codegen.c.baseline import cmsis  # noqa: E402
from codegen.detection import evaluate  # noqa: E402
from codegen.frontend import ann, convert, datasets, voc  # noqa: E402
from runtime import golden, modelfile  # noqa: E402
from runtime.errors import UserError  # noqa: E402

MODELS = {"mnist-mlp": "mnist", "mnist-cnn": "mnist", "fmnist-cnn": "fashion-mnist", "bccd-det": "bccd"}
OPTS = ("-O2", "-Os")
BOARD = "mps2-an386"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Task:
    """A shipped model with its data: calibration images, test images and how to score outputs."""

    def __init__(self, name: str, dataset: str):
        self.name, self.dataset = name, dataset
        self.model = modelfile.load(ROOT / "models" / f"{name}.pt")
        net, self.shape, _ = ann.load(ROOT / "models" / f"{name}.ann.pt")
        self.low = convert.lower(net, self.shape)
        self.detector = emit_c.is_detector(self.model)
        if self.detector:
            c, h, w = self.shape
            cls = list(self.model.head.classes)
            self.calib = voc.load(dataset, "train", (w, h), c, classes=cls).images
            self.test = voc.load(dataset, "test", (w, h), c, classes=cls)
            self.images = self.test.images
        else:
            xtr, _ = datasets.load(dataset, "train")
            self.images, self.labels = datasets.load(dataset, "test")
            self.calib = xtr[np.sort(np.random.default_rng(0).choice(len(xtr), size=min(10000, len(xtr)), replace=False))]

    def metric(self) -> str:
        return "mAP@0.5" if self.detector else "top-1"

    def score_golden(self, g) -> float:
        if self.detector:
            return float(evaluate.score(g.detections, self.test)["map50"])
        return float((g.classes == self.labels).mean())

    def score_real(self, maps: np.ndarray) -> float:
        """A real-valued network's score: a detector's float readout maps, else logits (N, classes)."""
        if self.detector:
            return float(evaluate.score(evaluate.float_detections(maps, self.model), self.test)["map50"])
        return float((maps.reshape(len(maps), -1).argmax(1) == self.labels).mean())


def measure(run, fw) -> dict:
    return {"instructions_median": statistics.median(run.instructions),
            "cycles_estimate_median": statistics.median(run.cycles),
            "flash": fw.sizes["flash_bytes"], "ram": fw.sizes["ram_bytes"], "stack_peak": run.stack_peak_bytes}


def onespike_side(t: Task, gold, imgs, b, opt: str, work: Path) -> dict:
    """The one-spike C at ``opt``: a classifier's parity firmware; a detector's inference alone (the image
    read into the model's input buffer), with the decode measured apart on the first image."""
    m, n = t.model, len(imgs)
    fw = firmware.build_firmware(m, t.name, b, work, opt=opt)
    if not t.detector:
        r = emulators.run_unicorn(fw, imgs, m.num_classes)
        assert np.array_equal(r.logits, gold.logits[:n]) and np.array_equal(r.classes, gold.classes[:n]), \
            f"{t.name} {opt}: one-spike C differs from the golden model"
        return measure(r, fw)
    sym = emit_c.c_symbol(t.name)
    fwi = firmware.build_elf(emit_c.generate(m, t.name), [f"{sym}_model.c", "onespike.c"], f"{sym}_infer",
                             int(np.prod(m.input_shape)), m.num_classes, b, Path(work) / f"infer{opt}", opt, sym,
                             extra_defs=[f"-DOS_INPUT_BUF={sym}_input"])
    r = emulators.run_unicorn(fwi, imgs, m.num_classes)
    assert np.array_equal(r.logits, gold.logits[:n]) and np.array_equal(r.classes, gold.classes[:n]), \
        f"{t.name} {opt}: one-spike C's readout map differs from the golden model"
    rd = emulators.run_unicorn(fw, imgs[:1], m.num_classes)
    assert np.array_equal(rd.logits, gold.logits[:1]) and np.array_equal(rd.detections[0], gold.detections[0]), \
        f"{t.name} {opt}: one-spike C's detections differ from the golden model"
    out = measure(r, fwi)
    out["with_decode"] = {"image": 0, "instructions": rd.instructions[0], "cycles_estimate": rd.cycles[0],
                          "decode_instructions": rd.instructions[0] - r.instructions[0],
                          "flash": fw.sizes["flash_bytes"], "ram": fw.sizes["ram_bytes"], "stack_peak": rd.stack_peak_bytes}
    return out


def cmsis_side(t: Task, q, ref, imgs, b, opt: str, work: Path) -> dict:
    """CMSIS-NN's C at ``opt``, checked equal to its numpy reading ``ref`` on ``imgs``."""
    m, n = t.model, len(imgs)
    sym = emit_c.c_symbol(t.name) + "_cmsis"
    size = int(np.prod(t.shape))
    lib = cmsis.build_library(b.cpu_flags, opt, work.parent / "lib")
    fw = firmware.build_elf(cmsis.generate(q, sym, size), [f"{sym}.c"], f"{sym}_infer", size, m.num_classes, b,
                            work / f"cmsis{opt}", opt, sym, extra_defs=[f"-DOS_INPUT_BUF={sym}_input"],
                            include_dirs=[cmsis.vendor() / "Include"], libs=[lib])
    r = emulators.run_unicorn(fw, imgs, m.num_classes)
    assert np.array_equal(r.logits, ref[:n]) and np.array_equal(r.classes, ref[:n].argmax(1)), \
        f"{t.name} {opt}: CMSIS-NN's C differs from its numpy reading"
    return measure(r, fw)


def bench_model(t: Task, count: int, use_cmsis: bool, full_qemu: bool, b, out: Path) -> dict:
    t0 = time.perf_counter()
    gold = golden.run_batched(t.model, t.images)
    imgs = t.images[:count]
    row = {"model": t.name, "dataset": t.dataset, "task": "detect" if t.detector else "classify",
           "board": b.name, "images_counted": len(imgs), "test_images": len(t.images),
           "accuracy": {"metric": t.metric(), "onespike_integer": t.score_golden(gold),
                        "ann_float": t.score_real(convert.ann_maps(t.low, t.images)), "cmsis_nn_int8": None},
           "sops_per_inference": float(gold.sops[:count].sum(1).mean())}
    q = ref = None
    if use_cmsis:
        q = cmsis.quantise(t.low, t.calib)
        ref = cmsis.forward(q, t.images)
        row["accuracy"]["cmsis_nn_int8"] = t.score_real(cmsis.dequantise(q, ref))
    for opt in OPTS:
        work = out / t.name
        res = {"onespike": onespike_side(t, gold, imgs, b, opt, work / "onespike"), "cmsis_nn": None}
        if use_cmsis:
            res["cmsis_nn"] = cmsis_side(t, q, ref, imgs, b, opt, work)
            o, c = res["onespike"], res["cmsis_nn"]
            res.update({"ratio_instructions": o["instructions_median"] / c["instructions_median"],
                        "ratio_cycles_estimate": o["cycles_estimate_median"] / c["cycles_estimate_median"],
                        "ratio_flash": o["flash"] / c["flash"], "ratio_ram": o["ram"] / c["ram"]})
        row[opt] = res
        ratio = f", ratio {res['ratio_instructions']:.2f}" if use_cmsis else ""
        log(f"{t.name} {opt}: one-spike {res['onespike']['instructions_median']:,.0f} instructions"
            + (f", CMSIS-NN {res['cmsis_nn']['instructions_median']:,.0f}{ratio}" if use_cmsis else "")
            + f" ({time.perf_counter() - t0:.0f} s)")
    if full_qemu:
        fw = firmware.build_firmware(t.model, t.name, b, out / t.name / "qemu", opt="-O2")
        t1 = time.perf_counter()
        lq, cq, dq = emulators.run_qemu_detections(fw, t.images, t.model.num_classes, timeout=3600)
        matched, why = emulators.compare_outputs(gold, lq, cq, dq)
        row["qemu_full"] = {"images": len(t.images), "matched": matched, "first_mismatch": why,
                            "seconds": round(time.perf_counter() - t1, 1)}
        log(f"{t.name}: QEMU full test set {matched}/{len(t.images)} matched in {row['qemu_full']['seconds']} s")
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _acc(row: dict, key: str) -> str:
    v = row["accuracy"][key]
    if v is None:
        return "-"
    return f"{v:.3f}" if row["accuracy"]["metric"] == "mAP@0.5" else f"{100 * v:.2f}%"


def table(rows: list) -> str:
    lines = ["| model | opt | one-spike instr | CMSIS-NN instr | ratio | one-spike est. cycles | CMSIS-NN est. cycles | "
             "ratio | one-spike flash / RAM (B) | CMSIS-NN flash / RAM (B) | ratio flash / RAM | "
             "peak stack one-spike / CMSIS-NN (B) | accuracy one-spike / CMSIS-NN (float ANN) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        for opt in OPTS:
            o, c, x = r[opt]["onespike"], r[opt]["cmsis_nn"], r[opt]
            metric = "mAP@0.5 " if r["accuracy"]["metric"] == "mAP@0.5" else ""
            acc = f"{metric}{_acc(r, 'onespike_integer')} / {_acc(r, 'cmsis_nn_int8')} ({_acc(r, 'ann_float')})"
            if c is None:
                lines.append(f"| {r['model']} | {opt} | {o['instructions_median']:,.0f} | - | - | "
                             f"{o['cycles_estimate_median']:,.0f} | - | - | {o['flash']:,} / {o['ram']:,} | - | - | "
                             f"{o['stack_peak']:,} / - | {acc} |")
                continue
            lines.append(f"| {r['model']} | {opt} | {o['instructions_median']:,.0f} | {c['instructions_median']:,.0f} | "
                         f"{x['ratio_instructions']:.2f} | {o['cycles_estimate_median']:,.0f} | "
                         f"{c['cycles_estimate_median']:,.0f} | {x['ratio_cycles_estimate']:.2f} | "
                         f"{o['flash']:,} / {o['ram']:,} | {c['flash']:,} / {c['ram']:,} | "
                         f"{x['ratio_flash']:.2f} / {x['ratio_ram']:.2f} | {o['stack_peak']:,} / {c['stack_peak']:,} | {acc} |")
    return "\n".join(lines) + "\n"


def chart(rows: list, path: Path) -> None:
    """Grouped bars of the one-spike / CMSIS-NN ratios per model (speed and memory), 1.0 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"] for r in rows]
    panels = (("instructions and estimated cycles", (("ratio_instructions", "instructions"),
                                                      ("ratio_cycles_estimate", "est. cycles"))),
              ("flash and RAM", (("ratio_flash", "flash"), ("ratio_ram", "RAM"))))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    x = np.arange(len(names))
    for ax, (title, keys) in zip(axes, panels):
        series = [(f"{label} {opt}", [r[opt][key] for r in rows]) for key, label in keys for opt in OPTS]
        w = 0.8 / len(series)
        for i, (label, vals) in enumerate(series):
            bars = ax.bar(x - 0.4 + w * (i + 0.5), vals, w, label=label)
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xticks(x, names)
        ax.set_ylabel("one-spike / CMSIS-NN")
        ax.set_title(f"{title} (below 1: one-spike smaller)", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"One-spike C vs CMSIS-NN on {rows[0]['board']} (Cortex-M4)")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10, help="test images counted under Unicorn (default 10)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma list (default: all shipped models)")
    ap.add_argument("--full-qemu", action="store_true", help="the one-spike firmware under QEMU on the full test set")
    ap.add_argument("--out", default="build/bench_c")
    args = ap.parse_args()
    names = [s.strip() for s in args.models.split(",") if s.strip()]
    unknown = [s for s in names if s not in MODELS]
    if unknown or not names:
        print(f"bench_c: unknown model {', '.join(unknown) or '(none given)'}; shipped: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    if args.count < 1:
        print("bench_c: --count must be at least 1", file=sys.stderr)
        return 2
    why = cmsis.missing()
    if why:
        print(why)
    out = Path(args.out)
    marker = out / ".bench_c"  # the folder is this script's: its build folders are replaced on every run
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not marker.is_file())):
        print(f"bench_c: --out {out} already holds files this script did not write; give an empty or new folder",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text("written by scripts/bench_c.py\n")
    b = registry.mcu(BOARD)
    rows = []
    try:
        for name in names:
            log(f"{name}: loading {MODELS[name]}")
            rows.append(bench_model(Task(name, MODELS[name]), args.count, why is None, args.full_qemu, b, out))
    except UserError as e:
        print(f"bench_c: {e}", file=sys.stderr)
        return 1
    write_atomic(out / "bench_c.json", (json.dumps(rows, indent=2) + "\n").encode())
    md = table(rows)
    write_atomic(out / "bench_c.md", md.encode())
    if why is None:
        chart(rows, out / "bench_c.png")
    else:
        (out / "bench_c.png").unlink(missing_ok=True)  # no ratios: no chart of an older run beside this table
    print(md, end="")
    for r in rows:
        for opt in OPTS:
            d = r[opt]["onespike"].get("with_decode")
            if d:
                print(f"{r['model']} {opt}: one-spike inference + decode {d['instructions']:,} instructions on image 0 "
                      f"(decode {d['decode_instructions']:,}); detector firmware flash / RAM {d['flash']:,} / {d['ram']:,} B")
        if "qemu_full" in r:
            q = r["qemu_full"]
            print(f"{r['model']}: QEMU full test set {q['matched']}/{q['images']} matched in {q['seconds']} s"
                  + (f" ({q['first_mismatch']})" if q["first_mismatch"] else ""))
    print(f"wrote {out / 'bench_c.json'}, {out / 'bench_c.md'}" + (f", {out / 'bench_c.png'}" if why is None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
