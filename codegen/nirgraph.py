"""The one-spike model as a NIR graph (Neuromorphic Intermediate Representation, the ``nir`` package).

``to_nir(model)`` writes one NIR node per operation, in the units of a time-stepped reading. In that
reading a spike of the previous layer is worth 1, the input is a constant current of the decoded
pixel value ``D_in[E[p]] / 2^F``, and each step adds the bias once:

- dense / conv2d -> ``Affine`` / ``Conv2d`` with the int8 weights ``W`` and bias ``B / 2^F``, then an
  ``IF`` (``r`` = 1). Its ``v_threshold`` is the accumulator value that the phase code reads as 1.0,
  ``Theta[o, 0] / ((1 + 1/Q) / 2) / 2^F``, because the threshold shift puts phase 0 at
  ``(1 + 1/Q) / 2``. The readout has no IF: its summed output current stands for the logits.
- a 2x2 / stride 2 maxpool on spikes (the shipped CNNs') -> a **max tree**: ``max(a, b, c, d) =
  m_ab + relu(m_cd - m_ab)`` with ``m_ab = a + relu(b - a)``, each relu an IF of threshold 1 on the
  spike trains, as two Conv2d + IF stages (:func:`_max_tree`). The next layer reads the tree's
  three channel groups, whose sum is the max, with its weights repeated per group (``tiled`` in the
  metadata). Any other maxpool -> ``SumPool2d`` then an ``IF`` with threshold 1, which fires when
  any input of the window fires: an OR, which overestimates the max of rates.
- avgpool -> ``SumPool2d`` then an ``IF`` with the threshold of its ``Theta`` as above.
- a ``Flatten`` before the first dense layer after a conv or pool.

NIR has no phase code, so the exact integer semantics travel in the graph's metadata: ``Q, T, F``,
the input code, the decode tables and, per layer, its integer tables (``theta``, the int64 bias)
and the node that holds its weights. With them, ``from_nir`` rebuilds the integer model bit for bit. The
time-stepped reading is a rate code, so it only approximates the one-spike model; the agreement is
measured in ``docs/benchmarks.md``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import UserError
from runtime.spec import IntModel

NIR_FORMAT = "onespike-nir"
NIR_VERSION = 1


def _theta_unit(model: IntModel, theta: np.ndarray) -> np.ndarray:
    """The IF threshold (weights W, spikes 1, bias B / 2^F): Theta[:, 0] / theta_0 / 2^F."""
    return theta[:, 0].astype(np.float64) / ((1.0 + 1.0 / model.Q) / 2.0) / float(1 << model.F)


def to_nir(model: IntModel):
    """The NIR graph of ``model`` (classifiers; a detector's decode has no NIR form)."""
    import nir

    if model.task != "classify":
        raise UserError("NIR export of detectors is not supported: NIR has no form for the detection head's "
                        "decode (export the classifier models, or use codegen emit)")
    scale = float(1 << model.F)
    nodes = {"input": nir.Input(input_type={"input": np.array(model.input_shape)})}
    edges = []
    prev = "input"
    layer_meta = {}     # per layer: its integer tables and the node holding its weights
    groups = 1          # the current tensor holds this many channel groups that sum to the value (a max tree)
    for i, l in enumerate(model.layers):
        meta = {"kind": l.kind, "name": l.name, "readout": int(l.readout),
                "in_shape": np.array(l.in_shape), "out_shape": np.array(l.out_shape),
                "kernel": l.kernel, "stride": l.stride, "padding": l.padding}
        if l.theta is not None:
            meta["theta"] = l.theta.astype(np.int64)
        if l.bias is not None:
            meta["bias_int"] = l.bias.astype(np.int64)
        shape_in = tuple(model.layers[i - 1].out_shape) if i > 0 else tuple(model.input_shape)
        if l.kind == "dense" and len(shape_in) == 3:      # the (C, H, W) tensor flattened for a dense layer
            key = f"{i}_flatten"
            stored = (shape_in[0] * groups,) + tuple(shape_in[1:])
            nodes[key] = nir.Flatten(input_type={"input": np.array(stored)}, start_dim=0, end_dim=-1)
            edges.append((prev, key))
            prev = key
        if l.kind == "maxpool" and _max_tree_fits(model, i):
            prev = _max_tree(nodes, edges, prev, i, l)
            meta["node"] = f"{i}_maxpool"
            layer_meta[str(i)] = meta
            groups = 3
            continue
        if l.kind in ("dense", "conv2d"):
            w = l.weight.astype(np.float64)
            b = l.bias.astype(np.float64) / scale
            if groups > 1:      # the input is a max tree's groups: the same weights read each group
                w = np.concatenate([w] * groups, axis=1)
                meta["tiled"] = groups
                groups = 1
            key = f"{i}_{l.kind}"
            if l.kind == "dense":
                nodes[key] = nir.Affine(weight=w, bias=b)
            else:
                nodes[key] = nir.Conv2d(input_shape=tuple(int(x) for x in l.in_shape[1:]), weight=w,
                                        stride=l.stride, padding=l.padding, dilation=1, groups=1, bias=b)
        else:
            key = f"{i}_{l.kind}"
            nodes[key] = nir.SumPool2d(kernel_size=np.array([l.kernel, l.kernel]),
                                       stride=np.array([l.stride, l.stride]),
                                       padding=np.array([l.padding, l.padding]))
        meta["node"] = key
        layer_meta[str(i)] = meta
        edges.append((prev, key))
        prev = key
        if not l.readout:
            shape = tuple(int(x) for x in l.out_shape)
            if l.kind == "maxpool":
                thr = np.ones(shape)
            else:
                unit = _theta_unit(model, l.theta)
                thr = np.broadcast_to(unit.reshape((-1,) + (1,) * (len(shape) - 1)), shape).copy()
            fire = f"{i}_if"
            nodes[fire] = nir.IF(r=np.ones(shape), v_threshold=thr)
            edges.append((prev, fire))
            prev = fire
    nodes["output"] = nir.Output(output_type={"output": np.array(model.layers[-1].out_shape)})
    edges.append((prev, "output"))
    meta = {"format": NIR_FORMAT, "version": NIR_VERSION, "Q": float(model.Q), "T": int(model.T), "F": int(model.F),
            "input_Q": float(model.input_Q), "input_T": int(model.input_T), "input_shape": np.array(model.input_shape),
            "decode": model.decode.astype(np.int64), "encode": model.encode.astype(np.int64),
            "input_decode": model.input_decode.astype(np.int64), "name": str(model.meta.get("name", "")),
            "source_sha256": str(model.meta.get("source_sha256", "")), "layers": layer_meta}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def _max_tree_fits(model: IntModel, i: int) -> bool:
    """A 2x2 / stride 2 maxpool on spikes, read by a Conv2d or dense layer: written as a max tree."""
    l = model.layers[i]
    return (l.kernel == 2 and l.stride == 2 and l.padding == 0 and i > 0 and model.layers[i - 1].fires
            and i + 1 < len(model.layers) and model.layers[i + 1].kind in ("dense", "conv2d"))


def _max_tree(nodes: dict, edges: list, prev: str, i: int, l) -> str:
    """``max(a, b, c, d) = m_ab + relu(m_cd - m_ab)`` with ``m_ab = a + relu(b - a)``, each relu an IF
    (threshold 1) on spike trains; a 0/1 train passes an IF of threshold 1 unchanged. Two Conv2d + IF
    stages, one input each (NIR readers need not sum edges): stage 1 gives the groups
    ``[a, relu(b - a), c, relu(d - c)]``, stage 2 ``[a, relu(b - a), relu(m_cd - m_ab)]``, whose sum is
    the max; the next layer reads the three groups with its own weights each."""
    import nir

    C, H, W = (int(x) for x in l.in_shape)
    _, Ho, Wo = (int(x) for x in l.out_shape)
    w1 = np.zeros((4 * C, C, 2, 2))
    for c in range(C):
        w1[c, c, 0, 0] = 1                                  # a
        w1[C + c, c, 0, 1], w1[C + c, c, 0, 0] = 1, -1      # b - a
        w1[2 * C + c, c, 1, 0] = 1                          # c
        w1[3 * C + c, c, 1, 1], w1[3 * C + c, c, 1, 0] = 1, -1  # d - c
    w2 = np.zeros((3 * C, 4 * C, 1, 1))
    for c in range(C):
        w2[c, c], w2[C + c, C + c] = 1, 1                   # a, relu(b - a) pass
        w2[2 * C + c, 2 * C + c], w2[2 * C + c, 3 * C + c] = 1, 1    # m_cd = c + relu(d - c)
        w2[2 * C + c, c], w2[2 * C + c, C + c] = -1, -1     # - m_ab
    chain = [(f"{i}_maxpool", nir.Conv2d(input_shape=(H, W), weight=w1, stride=2, padding=0, dilation=1, groups=1,
                                         bias=np.zeros(4 * C))),
             (f"{i}_max_if", nir.IF(r=np.ones((4 * C, Ho, Wo)), v_threshold=np.ones((4 * C, Ho, Wo)))),
             (f"{i}_max_merge", nir.Conv2d(input_shape=(Ho, Wo), weight=w2, stride=1, padding=0, dilation=1,
                                           groups=1, bias=np.zeros(3 * C))),
             (f"{i}_if", nir.IF(r=np.ones((3 * C, Ho, Wo)), v_threshold=np.ones((3 * C, Ho, Wo))))]
    for key, node in chain:
        nodes[key] = node
        edges.append((prev, key))
        prev = key
    return prev


def from_nir(graph) -> IntModel:
    """The integer model recorded in a graph written by :func:`to_nir` (weights from its nodes, the
    phase-code tables from its metadata), checked by :func:`runtime.modelfile.from_dict`."""
    from runtime import modelfile

    meta = dict(graph.metadata or {})
    if meta.get("format") != NIR_FORMAT:
        raise UserError(f"not a one-spike NIR graph (metadata format {meta.get('format')!r}, expected {NIR_FORMAT!r})")
    recorded = meta.get("layers") or {}
    layers = {}
    for idx, md in recorded.items():
        i = int(idx)
        kind = str(md["kind"])
        node = graph.nodes.get(str(md.get("node")))
        w = None
        if kind in ("dense", "conv2d"):
            if node is None or not hasattr(node, "weight"):
                raise UserError(f"NIR graph: layer {i} ({kind}) has no node with its weights")
            w = np.asarray(node.weight)
            g = int(md.get("tiled", 1))
            w = w[:, : w.shape[1] // g]          # a layer after a max tree reads each group with the same weights
            if not np.array_equal(w, np.round(w)) or np.abs(w).max() > 127:
                raise UserError(f"NIR node {md['node']}: weights are not the int8 table")
        layers[i] = {"kind": kind, "name": str(md.get("name", "")),
                     "in_shape": [int(x) for x in np.atleast_1d(md["in_shape"])],
                     "out_shape": [int(x) for x in np.atleast_1d(md["out_shape"])],
                     "weight": None if w is None else w.astype(np.int8),
                     "bias": np.asarray(md["bias_int"], dtype=np.int64) if "bias_int" in md else None,
                     "theta": np.asarray(md["theta"], dtype=np.int64) if "theta" in md else None,
                     "kernel": int(md["kernel"]), "stride": int(md["stride"]), "padding": int(md["padding"]),
                     "readout": bool(int(md["readout"]))}
    if not layers or sorted(layers) != list(range(len(layers))):
        raise UserError("the NIR graph's one-spike layers are not numbered 0..N-1")
    import torch

    def t(a, dtype):
        return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=dtype)))

    obj = {"format": modelfile.SCHEMA_FORMAT, "schema_version": modelfile.SCHEMA_VERSION, "Q": float(meta["Q"]), "T": int(meta["T"]),
           "F": int(meta["F"]), "input_shape": [int(x) for x in np.atleast_1d(meta["input_shape"])],
           "decode": t(meta["decode"], np.int64), "encode": t(meta["encode"], np.uint8),
           "input_Q": float(meta["input_Q"]), "input_T": int(meta["input_T"]),
           "input_decode": t(meta["input_decode"], np.int64), "task": "classify", "head": None,
           "meta": {"name": str(meta.get("name", ""))},
           "layers": [{k: (t(v, v.dtype) if isinstance(v, np.ndarray) else v) for k, v in layers[i].items()}
                      for i in range(len(layers))]}
    return modelfile.from_dict(obj, source="NIR graph")


def write(model: IntModel, path: str | Path) -> Path:
    """``to_nir(model)`` written with ``nir.write`` (HDF5), atomically: a temp file renamed into place."""
    import os
    import tempfile

    import nir

    path = Path(path)
    g = to_nir(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        nir.write(tmp, g)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def input_current(model: IntModel, images_u8: np.ndarray) -> np.ndarray:
    """The time-stepped reading's input: the decoded value of each pixel's phase, ``D_in[E[p]] / 2^F``."""
    return model.input_decode[model.encode[images_u8]].astype(np.float32) / float(1 << model.F)


def run_sinabs(graph, model: IntModel, images_u8: np.ndarray, steps: int, batch: int = 100) -> np.ndarray:
    """Classes of the time-stepped reading of ``graph`` in sinabs (``sinabs.from_nir``): the input current
    for ``steps`` steps, the class is the argmax of the readout's output summed over the steps. Each IF is
    a sinabs ``IAFSqueeze`` set to ``SingleSpike`` (NIR's IF: at most one spike per step; sinabs' default,
    ``MultiSpike``, emits ``floor(v / threshold)``), subtract reset, membrane floor ``-threshold``."""
    import torch
    from sinabs import nir as snir
    from sinabs.activation import SingleSpike
    from sinabs.layers import IAF

    out = []
    for i in range(0, len(images_u8), batch):
        x = torch.from_numpy(input_current(model, images_u8[i:i + batch]))
        n = len(x)
        net = snir.from_nir(graph, batch_size=n, num_timesteps=steps)
        for mod in net.modules():     # NIR's IF emits one spike per step at most; sinabs' default emits several
            if isinstance(mod, IAF):
                mod.spike_fn = SingleSpike
        xs = x.unsqueeze(1).expand(n, steps, *x.shape[1:]).reshape(n * steps, *x.shape[1:])
        with torch.no_grad():
            y = net(xs)
        y = y[0] if isinstance(y, tuple) else y   # nirtorch returns (output, state)
        out.append(y.reshape(n, steps, -1).sum(1).argmax(1).numpy())
    return np.concatenate(out)
