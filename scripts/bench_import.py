"""Bring your own model: networks trained outside this project, exported to ONNX / torch.export and
converted with ``codegen convert``; integer accuracy against the float network, in one run.

    .venv/bin/python scripts/bench_import.py [--epochs 2] [--out build/bench_import]

Two networks this project never saw, each with its own ``forward()`` (so no ``onespike-ann`` file can
describe them), trained here on MNIST (55,000 training images, Adam, batch 128, seed 0):

- ``lenet-norm``: LeNet-5 style (Conv 6@5x5 pad 2, BN, ReLU, MaxPool; Conv 16@5x5, BN, ReLU, MaxPool;
  FC 120, ReLU6, FC 84, ReLU, FC 10) with torchvision-style normalisation ``(x - 0.1307) / 0.3081``
  inside ``forward()``: the normalisation folds into the first Conv (its padding: the note).
- ``keras-nhwc``: a Keras-shaped CNN taking NHWC input, flattening in H, W, C order, ending in Softmax.

Each is exported three ways (``torch.onnx.export`` default exporter, the TorchScript exporter, and
``torch.export.save``) and converted with ``codegen convert FILE --dataset mnist``; the float accuracy
is the PyTorch model's own on the 10,000 test images, the integer accuracy the one ``codegen convert``
reports (golden model, same images). Writes OUT/bench_import.json and OUT/bench_import.md.
"""
import argparse
import json
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class LeNetNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16)
        self.f1, self.f2, self.f3 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = (x - 0.1307) / 0.3081
        x = nn.functional.max_pool2d(torch.relu(self.b1(self.c1(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.b2(self.c2(x))), 2)
        x = torch.flatten(x, 1)
        return self.f3(torch.relu(self.f2(nn.functional.relu6(self.f1(x)))))


class KerasNHWC(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3), nn.Conv2d(16, 32, 3)
        self.f1, self.f2 = nn.Linear(32 * 5 * 5, 64), nn.Linear(64, 10)

    def forward(self, x):                  # x: (N, H, W, C)
        x = x.permute(0, 3, 1, 2)
        x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
        x = torch.flatten(x.permute(0, 2, 3, 1), 1)
        return torch.softmax(self.f2(torch.relu(self.f1(x))), dim=1)


NETS = {"lenet-norm": (LeNetNorm, False), "keras-nhwc": (KerasNHWC, True)}


def _layout(x, nhwc):
    return x.permute(0, 2, 3, 1).contiguous() if nhwc else x


def train(net, nhwc, xtr, ytr, epochs):
    from tqdm import tqdm

    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    n = 55000
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(n)
        for i in tqdm(range(0, n, 128), desc=f"train epoch {ep + 1}", leave=False):
            idx = perm[i:i + 128]
            x = _layout(torch.from_numpy(xtr[idx.numpy()]).float() / 255, nhwc)
            out = net(x)
            loss = (nn.functional.nll_loss(torch.log(out + 1e-12), torch.from_numpy(ytr[idx.numpy()]))
                    if isinstance(net, KerasNHWC) else nn.functional.cross_entropy(out, torch.from_numpy(ytr[idx.numpy()])))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def accuracy(net, nhwc, x, y):
    with torch.no_grad():
        out = torch.cat([net(_layout(torch.from_numpy(x[i:i + 1000]).float() / 255, nhwc)) for i in range(0, len(x), 1000)])
    return float((out.argmax(1).numpy() == y).mean())


def export(net, nhwc, path: Path, how: str):
    x = _layout(torch.zeros(1, 1, 28, 28), nhwc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "onnx":
            torch.onnx.export(net, (x,), str(path), dynamo=True, verbose=False)
        elif how == "onnx-torchscript":
            torch.onnx.export(net, (x,), str(path), dynamo=False)
        else:
            torch.export.save(torch.export.export(net, (x,)), str(path))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--out", default="build/bench_import")
    args = ap.parse_args()
    from codegen.frontend import datasets
    from runtime import modelfile

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr = datasets.load("mnist", "train")
    xte, yte = datasets.load("mnist", "test")
    rows = []
    for name, (cls, nhwc) in NETS.items():
        t0 = time.time()
        net = train(cls(), nhwc, xtr, ytr, args.epochs)
        train_s = time.time() - t0
        acc = accuracy(net, nhwc, xte, yte)
        for how, suffix in (("onnx", ".onnx"), ("onnx-torchscript", ".ts.onnx"), ("torch.export", ".pt2")):
            f = out / f"{name}{suffix}"
            export(net, nhwc, f, how)
            model = out / f"{name}{suffix}.model.pt"
            t0 = time.time()
            p = subprocess.run([str(Path(sys.executable).parent / "codegen"), "convert", str(f), "--dataset", "mnist", "-o",
                                str(model), "--force", "-q"], capture_output=True, text=True, cwd=ROOT)
            conv_s = time.time() - t0
            if p.returncode != 0:
                raise SystemExit(f"convert {f} failed: {p.stderr.strip()}")
            m = modelfile.load(model)
            ta = m.meta["test_accuracy"]
            rows.append({"net": name, "export": how, "float_pytorch": acc, "ann_float_imported": ta["ann_float"],
                         "integer": ta["integer"], "gap_points": 100 * (acc - ta["integer"]), "Q": m.Q, "T": m.T,
                         "spikes_per_neuron": m.meta["spikes_per_neuron"], "train_s": train_s, "convert_s": conv_s,
                         "notes": [l for l in p.stderr.splitlines() if "note:" in l]})
            print(f"{name:11s} {how:17s} float {100 * acc:.2f}% | imported float {100 * ta['ann_float']:.2f}% | "
                  f"integer {100 * ta['integer']:.2f}% (gap {rows[-1]['gap_points']:+.2f} pts) Q={m.Q:g} T={m.T}")
    info = {"machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.python_version()}",
            "torch": torch.__version__, "epochs": args.epochs, "rows": rows}
    (out / "bench_import.json").write_text(json.dumps(info, indent=1) + "\n")
    lines = ["| network | export | float (PyTorch) | imported float | one-spike integer | gap (points) | Q, T |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['net']} | {r['export']} | {100 * r['float_pytorch']:.2f}% | "
                     f"{100 * r['ann_float_imported']:.2f}% | {100 * r['integer']:.2f}% | {r['gap_points']:+.2f} | "
                     f"{r['Q']:g}, {r['T']} |")
    (out / "bench_import.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
