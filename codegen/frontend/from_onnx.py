"""An ONNX file as the chain of :class:`.graph.Op` that :func:`.graph.to_sequential` turns into layers.

Read with the ``onnx`` package (protobuf: nothing in the file is executed); constants are the graph's
initializers and ``Constant`` nodes. The graph must be a chain: one image input, one output, and
every node consuming the previous node's output plus constants (a Shape -> ... -> Reshape shape
computation is read as the constant it is when it only feeds a Reshape's shape).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import UserError

from .graph import Op, unsupported


def _attrs(node) -> dict:
    import onnx

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _load(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise UserError(f"{path}: not a readable ONNX file ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    if not model.graph.node:
        raise UserError(f"{path}: not an ONNX model (the graph has no nodes)")
    external = [i for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    if external:   # weights in a file next to the model (torch.onnx.export's dynamo exporter writes NAME.onnx.data)
        from onnx.external_data_helper import load_external_data_for_model

        for init in external:
            loc = dict((e.key, e.value) for e in init.external_data).get("location", "")
            if Path(loc).is_absolute() or ".." in Path(loc).parts or not (path.parent / loc).is_file():
                raise UserError(f"{path}: the weights of {init.name!r} are in {loc!r}, which is not a file next to the model")
        try:
            load_external_data_for_model(model, str(path.parent))
        except (ValueError, RuntimeError, OSError) as e:
            raise UserError(f"{path}: the external weights cannot be read ({str(e).splitlines()[0][:120]})") from None
    return model


def read(path) -> tuple[list[Op], tuple]:
    """``(ops, input dims without the batch)`` of an ONNX file; one-line errors for what does not fit."""
    from onnx import numpy_helper

    path = Path(path)
    model = _load(path)
    g = model.graph
    consts: dict[str, np.ndarray] = {}
    for init in g.initializer:
        consts[init.name] = numpy_helper.to_array(init).astype(np.float64) if numpy_helper.to_array(init).dtype.kind == "f" \
            else numpy_helper.to_array(init)
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1:
        raise UserError(f"{path}: the graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs) or 'none'}); "
                        f"one image input is supported")
    if len(g.output) != 1:
        raise UserError(f"{path}: the graph has {len(g.output)} outputs; one (the logits) is supported")
    x_in = inputs[0]
    tt = x_in.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
    if len(dims) < 2:
        raise UserError(f"{path}: the input {x_in.name!r} has shape {dims}; images need (N, C, H, W) or (N, features)")
    cur = x_in.name
    ops: list[Op] = []
    nodes = list(g.node)
    # values that only compute a Reshape's target (Shape -> Gather -> Unsqueeze -> Concat ...) are marked
    # None in consts: a Reshape reads its shape from the chain, anything else that uses them is refused
    for i, n in enumerate(nodes):
        where = f"node {i} ({n.name or n.op_type})"
        t = n.op_type
        a = _attrs(n)
        if t == "Constant":
            if "value" not in a:
                raise unsupported("Constant (not a tensor value)", where)
            consts[n.output[0]] = numpy_helper.to_array(a["value"])
            continue
        if t in ("Shape", "Gather", "Unsqueeze", "Concat", "Cast", "Squeeze", "Slice", "ConstantOfShape") and \
                all(x in consts or x == "" for x in n.input):
            for o in n.output:
                consts[o] = None   # a shape computation on constants: only a Reshape target may use it
            continue
        if t == "Shape" and n.input[0] == cur:
            consts[n.output[0]] = None   # a shape of the chain value: only a Reshape target may use it
            continue
        if t in ("Gather", "Unsqueeze", "Concat", "Cast", "Slice") and any(x in consts and consts[x] is None for x in n.input):
            consts[n.output[0]] = None
            continue
        data_in = [x for x in n.input if x and x not in consts]
        if data_in != [cur] or (n.input and n.input[0] != cur):
            if not data_in:
                raise unsupported(f"{t} (on constants only)", where)
            raise UserError(f"{path}: {where} ({t}) reads {', '.join(data_in)}: the graph is not a chain of layers "
                            f"(branches, skip connections and several inputs are not supported)")
        if len([o for o in n.output if o]) != 1 and t not in ("Dropout", "MaxPool", "BatchNormalization"):
            raise UserError(f"{path}: {where} ({t}) has {len(n.output)} outputs; the graph is not a chain of layers")

        def const(k, what):
            if len(n.input) <= k or not n.input[k]:
                return None
            v = consts.get(n.input[k])
            if v is None:
                raise UserError(f"{path}: {where} ({t}): the {what} is computed, not a constant")
            return np.asarray(v)

        if t == "Conv":
            if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                raise UserError(f"{path}: {where}: auto_pad={a['auto_pad']} is not supported; export with explicit pads")
            ops.append(Op("conv", where, {"w": const(1, "weight"), "b": const(2, "bias"),
                                          "stride": a.get("strides", [1]), "pads": a.get("pads", [0]),
                                          "dilation": a.get("dilations", [1]), "groups": a.get("group", 1)}))
        elif t == "Gemm":
            w = const(1, "weight")
            if a.get("transA", 0):
                raise unsupported("Gemm with transA", where)
            w = w.T if not a.get("transB", 0) else w
            b = const(2, "bias")
            alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
            ops.append(Op("linear", where, {"w": alpha * w, "b": None if b is None else beta * np.broadcast_to(b, (w.shape[0],))}))
        elif t == "MatMul":
            w = const(1, "weight")
            if w.ndim != 2:
                raise unsupported(f"MatMul by a rank-{w.ndim} constant", where)
            ops.append(Op("linear", where, {"w": w.T, "b": None}))
        elif t in ("Add", "Sub", "Mul", "Div"):
            v = const(1, "operand").astype(np.float64)
            if ops and ops[-1].kind == "linear" and t in ("Add", "Sub") and ops[-1].a["b"] is None and v.size == ops[-1].a["w"].shape[0]:
                ops[-1].a["b"] = v.reshape(-1) * (1 if t == "Add" else -1)   # MatMul + Add: a Gemm
            elif t == "Add":
                ops.append(Op("affine", where, {"add": v}))
            elif t == "Sub":
                ops.append(Op("affine", where, {"add": -v}))
            elif t == "Mul":
                ops.append(Op("affine", where, {"mul": v}))
            else:
                if np.any(v == 0):
                    raise UserError(f"{path}: {where}: Div by zero")
                ops.append(Op("affine", where, {"mul": 1.0 / v}))
        elif t == "BatchNormalization":
            if a.get("training_mode", 0):
                raise unsupported("BatchNormalization in training mode", where)
            ops.append(Op("bn", where, {"weight": const(1, "scale"), "bias": const(2, "bias"),
                                        "running_mean": const(3, "mean"), "running_var": const(4, "variance"),
                                        "eps": a.get("epsilon", 1e-5)}))
        elif t == "Relu":
            ops.append(Op("relu", where))
        elif t == "Clip":
            lo = const(1, "minimum")
            hi = const(2, "maximum")
            lo = a.get("min") if lo is None else float(lo)
            hi = a.get("max") if hi is None else float(hi)
            ops.append(Op("clip", where, {"lo": lo, "hi": hi}))
        elif t in ("MaxPool", "AveragePool"):
            if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                raise UserError(f"{path}: {where}: auto_pad={a['auto_pad']} is not supported; export with explicit pads")
            if t == "MaxPool" and len([o for o in n.output if o]) > 1:
                raise unsupported("MaxPool with indices", where)
            ops.append(Op("maxpool" if t == "MaxPool" else "avgpool", where,
                          {"kernel": a["kernel_shape"], "stride": a.get("strides", a["kernel_shape"]),
                           "pads": a.get("pads", [0]), "ceil": a.get("ceil_mode", 0), "dilation": a.get("dilations", [1]),
                           "count_include_pad": bool(a.get("count_include_pad", 0))}))
        elif t == "GlobalAveragePool":
            ops.append(Op("gap", where))
        elif t == "Flatten":
            if a.get("axis", 1) != 1:
                raise unsupported(f"Flatten with axis={a['axis']}", where)
            ops.append(Op("flatten", where))
        elif t == "Reshape":
            target = consts.get(n.input[1]) if len(n.input) > 1 else None
            if target is not None and not (np.asarray(target).ndim == 1 and len(target) == 2):
                raise unsupported(f"Reshape to {np.asarray(target).tolist()} (only to (N, features))", where)
            ops.append(Op("flatten", where))
        elif t == "Squeeze":
            axes = const(1, "axes") if len(n.input) > 1 else a.get("axes")
            if axes is None or sorted(int(x) for x in np.atleast_1d(axes)) != [2, 3]:
                raise unsupported("Squeeze (other than of axes 2, 3 after a global pooling)", where)
            ops.append(Op("flatten", where))
        elif t == "Transpose":
            ops.append(Op("transpose", where, {"perm": tuple(a.get("perm", ()))}))
        elif t in ("Dropout", "Identity"):
            ops.append(Op("identity", where))
        elif t in ("Softmax", "LogSoftmax"):
            ops.append(Op("softmax", where))
        else:
            raise unsupported(t, where)
        cur = n.output[0]
    if cur != g.output[0].name:
        raise UserError(f"{path}: the graph output {g.output[0].name!r} is not the end of the chain of layers")
    dims = tuple(dims[1:])
    if any(d < 1 for d in dims):
        raise UserError(f"{path}: the input {x_in.name!r} has no fixed size ({['N'] + list(dims)}); export it with a "
                        f"fixed C, H and W (only the batch may be dynamic)")
    return ops, dims
