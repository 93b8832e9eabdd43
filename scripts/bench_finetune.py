"""Spike-aware fine-tuning (``codegen finetune``): the shipped models before and after, and training
throughput against snnTorch BPTT on the same network, in one run.

    .venv/bin/python scripts/bench_finetune.py [--models mnist-cnn,fmnist-cnn] [--after DIR] [--count 10]
                                               [--frames 20] [--batches 10] [--out build/bench_finetune]

Per model: the shipped ``models/NAME.pt`` ("before") and ``DIR/NAME.pt`` ("after", default
``build/ft``: what ``codegen finetune`` + ``codegen convert`` wrote there), each on the full test set
with the golden model (integer accuracy, SOPs per inference, spikes per neuron, T); the one-spike C
for mps2-an386 at -O2 under Unicorn (instructions per inference, median over the first --count test
images, outputs checked equal to the golden model); the RTL at 8 lanes in the compiled Verilator
harness (cycles per frame back to back, median over the first --frames test images, every frame
checked equal to the golden model).

Training throughput, same run, same network, same batch (128) and thread count: one training step
(forward with the SOP count and its penalty, as ``codegen finetune`` runs it, backward, Adam) of the one-spike network (``codegen.frontend.finetune.OneSpikeNet``, the
closed form: no time loop) against snnTorch's time-stepped BPTT of the same layers with
``snn.Leaky`` neurons (beta 1, threshold 1, the fast-sigmoid surrogate) over T steps (the model's T),
the image as a constant input current; the median of --batches steps after 2 warm-up steps, times
the steps of a 55,000-image epoch.

Writes OUT/bench_finetune.json and OUT/bench_finetune.md.
"""
import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATASETS = {"mnist-mlp": "mnist", "mnist-cnn": "mnist", "fmnist-cnn": "fashion-mnist"}


def model_figures(path, ds, count, frames):
    from boards import registry
    from codegen import report
    from codegen.c import emulators, firmware
    from codegen.fpga import bulk
    from codegen.frontend import datasets
    from runtime import golden, modelfile

    m = modelfile.load(path)
    x, y = datasets.load(ds, "test")
    res = golden.run_batched(m, x, progress=False)
    st = report.stats(m, res, y)
    out = {"path": str(path), "Q": m.Q, "T": m.T, "input_code": [m.input_Q, m.input_T],
           "accuracy": st["accuracy"], "sops": float(res.sops.sum(1).mean()),
           "sops_per_layer": [float(v) for v in res.sops.mean(0)], "spikes_per_neuron": st["spikes_per_neuron"]}
    with tempfile.TemporaryDirectory() as tmp:
        fw = firmware.build_firmware(m, Path(path).stem.replace("-", "_"), registry.mcu("mps2-an386"), Path(tmp))
        run = emulators.run_unicorn(fw, x[:count], m.num_classes)
        gold = golden.run(m, x[:count], keep_phases=False)
        matched, _ = emulators.compare_outputs(gold, run.logits, run.classes, run.detections)
        out["c_instructions"] = statistics.median(run.instructions)
        out["c_equal_golden"] = f"{matched}/{count}"
    b = bulk.bulk_verify(m, x[:frames], lanes=8)
    out["fpga_cycles"] = float(np.median(b.cycles)) if b.cycles else None
    out["fpga_equal_golden"] = f"{b.matched}/{b.total}"
    return out


def snn_net(ann_seq, T):
    """The ANN's layers with every ReLU replaced by an snnTorch Leaky neuron, run for T steps."""
    import snntorch as snn
    from snntorch import surrogate
    from torch import nn

    layers = []
    for mod in ann_seq:
        if isinstance(mod, nn.ReLU):
            layers.append(snn.Leaky(beta=1.0, threshold=1.0, spike_grad=surrogate.fast_sigmoid(), init_hidden=True))
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)):
            continue
        else:
            layers.append(mod)
    net = nn.Sequential(*layers)

    def forward(x):
        from snntorch import utils

        utils.reset(net)
        out = 0
        for _ in range(T):
            out = out + net(x)
        return out / T

    return net, forward


def step_seconds(params, loss_of, batches):
    import torch

    opt = torch.optim.Adam(params, lr=1e-3)
    times = []
    for k in range(batches + 2):
        t = time.perf_counter()
        loss = loss_of()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k >= 2:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def training_figures(name, Q, T, batches):
    import torch

    from codegen.frontend import ann, calibrate as C, datasets, lower as L
    from codegen.frontend.finetune import OneSpikeNet

    net, shape, _ = ann.load(ROOT / "models" / f"{name}.ann.pt")
    xtr, ytr = datasets.load(DATASETS[name], "train")
    low = L.lower(net, shape)
    C.calibrate(low, xtr[:2000])
    onet = OneSpikeNet(C.normalise(low), Q, T, 1.02, 255)
    xb_u8, yb = xtr[:128], torch.from_numpy(ytr[:128].astype(np.int64))
    lossf = torch.nn.CrossEntropyLoss()
    xo = onet.encode(xb_u8)

    def ours_loss():            # what codegen finetune does per batch: the SOP count and its penalty
        out, st = onet(xo, with_stats=True)
        return lossf(out, yb) + 0.1 * st.soft_sops.mean() / 1e5

    ours = step_seconds(onet.parameters(), ours_loss, batches)
    snet, fwd = snn_net(net.train(), T)
    xf = torch.from_numpy(xb_u8.astype(np.float32) / 255.0)
    theirs = step_seconds(snet.parameters(), lambda: lossf(fwd(xf), yb), batches)
    steps = -(-55000 // 128)
    return {"T": T, "batch": 128, "threads": torch.get_num_threads(), "onespike_step_s": ours,
            "snntorch_step_s": theirs, "onespike_epoch_s": ours * steps, "snntorch_epoch_s": theirs * steps,
            "speedup": theirs / ours}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mnist-mlp,mnist-cnn,fmnist-cnn")
    ap.add_argument("--after", default=str(ROOT / "build" / "ft"))
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "build" / "bench_finetune"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    results = {"machine": f"{platform.machine()}, {platform.processor() or '?'}, torch threads 2", "models": {}}
    for name in args.models.split(","):
        ds = DATASETS[name]
        r = {"before": model_figures(ROOT / "models" / f"{name}.pt", ds, args.count, args.frames)}
        after = Path(args.after) / f"{name}.pt"
        if after.is_file():
            r["after"] = model_figures(after, ds, args.count, args.frames)
        r["training"] = training_figures(name, r["before"]["Q"], r["before"]["T"], args.batches)
        results["models"][name] = r
        print(json.dumps({name: r}, indent=1), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_finetune.json").write_text(json.dumps(results, indent=1))
    lines = ["| model | | integer accuracy | SOPs / inference | spikes / neuron | T | C instructions (M4, -O2) | "
             "FPGA cycles (8 lanes) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["models"].items():
        for k in ("before", "after"):
            if k in r:
                f = r[k]
                lines.append(f"| {name} | {k} | {100 * f['accuracy']:.2f}% | {f['sops']:,.0f} | "
                             f"{f['spikes_per_neuron']:.3f} | {f['T']} | {f['c_instructions']:,.0f} | "
                             f"{f['fpga_cycles']:,.0f} |")
    lines += ["", "| model | T | one-spike step | snnTorch BPTT step | epoch (55k) one-spike / snnTorch | speed-up |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, r in results["models"].items():
        t = r["training"]
        lines.append(f"| {name} | {t['T']} | {1000 * t['onespike_step_s']:.1f} ms | {1000 * t['snntorch_step_s']:.1f} ms"
                     f" | {t['onespike_epoch_s']:.0f} s / {t['snntorch_epoch_s']:.0f} s | {t['speedup']:.1f}x |")
    (out / "bench_finetune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
