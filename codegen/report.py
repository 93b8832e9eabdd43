"""Run statistics of the golden model (accuracy, spikes, synaptic operations, energy) and their plots."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.golden import GoldenResult
from runtime.spec import E_AC_PJ, E_MAC_PJ, IntModel, dense_macs


def stats(model: IntModel, res: GoldenResult, labels: np.ndarray | None) -> dict:
    n = len(res.classes)
    names = ["input"] + [l.name or f"L{i}" for i, l in enumerate(model.layers)]
    sizes = [int(np.prod(model.input_shape))] + [int(np.prod(l.out_shape)) for l in model.layers]
    spiking = [0] + [i + 1 for i, l in enumerate(model.layers) if l.fires]  # columns of res.spikes
    spikes_mean = res.spikes.mean(0)
    per_layer = []
    for c in range(len(names)):
        fires = c == 0 or model.layers[c - 1].fires
        row = {"layer": names[c], "neurons": sizes[c]}
        if fires:
            row["spikes_per_inference"] = float(spikes_mean[c])
            row["spikes_per_neuron"] = float(spikes_mean[c] / sizes[c])
        if c > 0:
            row["sops_per_inference"] = float(res.sops[:, c - 1].mean())
        per_layer.append(row)
    neurons = sum(sizes[c] for c in spiking)
    total_spikes = float(res.spikes[:, spiking].sum(1).mean())
    sops = float(res.sops.sum(1).mean())
    macs = int(sum(dense_macs(model)))
    e_snn = sops * E_AC_PJ
    e_ann = macs * E_MAC_PJ
    out = {
        "images": n,
        "spikes_per_inference": total_spikes,
        "spikes_per_neuron": total_spikes / neurons,
        "neurons": neurons,
        "sops_per_inference": sops,
        "ann_macs_per_inference": macs,
        "energy_pj": {"snn": e_snn, "ann": e_ann, "ratio_ann_over_snn": e_ann / e_snn if e_snn else None,
                      "model": f"ANN {E_MAC_PJ} pJ per MAC, SNN {E_AC_PJ} pJ per accumulate (45 nm, Horowitz 2014); memory not counted"},
        "layers": per_layer,
    }
    if labels is not None:
        out["accuracy"] = float((res.classes == labels).mean())
    return out


def format_text(name: str, st: dict) -> str:
    lines = [f"model {name}: {st['images']} images"]
    if "accuracy" in st:
        lines.append(f"accuracy            {100 * st['accuracy']:.2f}%")
    lines.append(f"spikes per neuron   {st['spikes_per_neuron']:.4f}  ({st['spikes_per_inference']:.1f} spikes / {st['neurons']} neurons per inference)")
    lines.append(f"synaptic ops        {st['sops_per_inference']:.0f} per inference (ANN: {st['ann_macs_per_inference']} MACs)")
    e = st["energy_pj"]
    ratio = f"{e['ratio_ann_over_snn']:.2f}x less than the ANN" if e["ratio_ann_over_snn"] else "n/a"
    lines.append(f"energy estimate     {e['snn'] / 1e6:.4f} uJ vs ANN {e['ann'] / 1e6:.4f} uJ per inference: {ratio}")
    lines.append(f"  ({e['model']})")
    lines.append(f"{'layer':<12}{'neurons':>9}{'spikes/neuron':>15}{'SOPs/inf':>12}")
    for r in st["layers"]:
        spn = f"{r['spikes_per_neuron']:.4f}" if "spikes_per_neuron" in r else "-"
        sop = f"{r['sops_per_inference']:.0f}" if "sops_per_inference" in r else "-"
        lines.append(f"{r['layer']:<12}{r['neurons']:>9}{spn:>15}{sop:>12}")
    return "\n".join(lines)


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def plots(model: IntModel, st: dict, phases: list) -> dict[str, bytes]:
    """PNG plots: spikes per neuron per layer, and the spike-phase histogram of every layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    rows = [r for r in st["layers"] if "spikes_per_neuron" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([r["layer"] for r in rows], [r["spikes_per_neuron"] for r in rows], color="tab:blue")
    ax.set_ylabel("spikes per neuron per inference")
    ax.set_ylim(0, 1)
    ax.set_title("Firing (each neuron fires at most once)")
    fig.tight_layout()
    out["sparsity.png"] = _png(fig)
    plt.close(fig)

    codes = [model.input_T] + [model.T if l.fires else model.code_of_layer_input(i)[1] for i, l in enumerate(model.layers)]
    layers = [(n, p, t) for n, p, t in zip(["input"] + [l.name for l in model.layers], phases, codes) if p is not None]
    fig, axes = plt.subplots(len(layers), 1, figsize=(6, 1.6 * len(layers)))
    axes = np.atleast_1d(axes)
    for ax, (n, p, t) in zip(axes, layers):
        counts = np.bincount(p.ravel().astype(np.int64), minlength=t + 1)[:t] / p.shape[0]
        ax.bar(np.arange(t), counts, color="tab:orange", width=1.0 if t > 40 else 0.8)
        ax.set_xlim(-0.5, t - 0.5)
        ax.set_ylabel(n, rotation=0, ha="right", va="center")
    axes[-1].set_xlabel("spike phase f (spikes per inference)")
    fig.suptitle("Spike phases per layer")
    fig.tight_layout()
    out["phases.png"] = _png(fig)
    plt.close(fig)
    return out


def write(out_dir: Path, name: str, st: dict, figs: dict[str, bytes], model_sha256: str | None = None,
          extra_text: str = "") -> list[Path]:
    """Write report.json, report.txt (``extra_text`` after the statistics) and the PNGs as one folder with a
    manifest (kind ``run``), atomically."""
    from .lut import tool_versions, write_with_manifest

    out_dir = Path(out_dir)
    text = format_text(name, st) + ("\n\n" + extra_text if extra_text else "")
    files = {"report.json": (json.dumps(st, indent=2, sort_keys=True) + "\n").encode(),
             "report.txt": (text + "\n").encode(), **figs}
    write_with_manifest(out_dir, files, {"target": "run", "model": {"name": name, "sha256": model_sha256},
                                         "tools": tool_versions()})
    return [out_dir / fn for fn in ["report.json", "report.txt"] + sorted(figs)]


def describe_model(m, path) -> str:
    """What ``codegen inspect`` prints: layers, shapes, Q, T, F, the input code, accumulator widths and
    the recorded accuracies of the model loaded from ``path``."""
    lines = []
    lines.append(f"{path}: one-spike model ({m.meta.get('converter', 'unknown converter')})")
    lines.append(f"Q={m.Q:g}  T={m.T} phases (code {m.T} = no spike)  F={m.F} fraction bits")
    lines.append(f"input {tuple(m.input_shape)} uint8 pixels, phase code Q_in={m.input_Q:g} T_in={m.input_T} (code {m.input_T} = no spike)")
    lines.append(f"decode D = {list(map(int, m.decode[:min(6, m.T)]))}{' ...' if m.T > 6 else ''} 0")
    lines.append(f"{'#':>2}  {'layer':<9}{'input':>14}{'output':>14}  {'k/s/p':<8}{'params':>8}{'acc bits':>9}  fire")
    for i, l in enumerate(m.layers):
        kp = f"{l.kernel}/{l.stride}/{l.padding}" if l.kind != "dense" else "-"
        params = 0 if l.weight is None else int(l.weight.size + l.bias.size)
        fire = "readout (logits)" if l.readout else ("earliest spike" if l.kind == "maxpool" else f"theta[{l.theta.shape[0]}x{m.T}]")
        lines.append(f"{i:>2}  {l.kind:<9}{str(tuple(l.in_shape)):>14}{str(tuple(l.out_shape)):>14}  {kp:<8}{params:>8}"
                     f"{(l.acc_bits or '-'):>9}  {fire}")
    n_w = sum(int(l.weight.size) for l in m.layers if l.weight is not None)
    lines.append(f"weights: {n_w} int8 ({n_w / 1024:.1f} KiB); neurons that can spike: {sum(m.neuron_counts())}")
    acc = m.meta.get("test_accuracy")
    if isinstance(acc, dict):
        lines.append("recorded test accuracy: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in acc.items()))
    if m.task == "detect":
        h = m.head
        _, gh, gw = m.layers[-1].out_shape
        lines.append(f"detector: classes {', '.join(h.classes)}; a {gh}x{gw} grid at stride {h.stride}; score threshold "
                     f"{h.score_threshold}; box px(v) = (v * {h.box_mult} + 2^{h.box_shift - 1}) >> {h.box_shift}; "
                     f"{'3x3 same-class peaks, then ' if h.peak else ''}suppression above {h.nms_iou_percent}% IoU; "
                     f"at most {h.max_detections} detections")
        from .detection.report import _recorded

        fig = (_recorded(m, "test") or {}).get("integer")
        if isinstance(fig, dict) and isinstance(fig.get("map"), (int, float)):
            lines.append(f"recorded test mAP@0.5 {fig['map50']:.3f}, mAP@[.5:.95] {fig['map']:.3f} (integer model)")
    return "\n".join(lines)
