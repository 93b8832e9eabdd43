"""A ``torch.export`` archive (``.pt2``) as the chain of :class:`.graph.Op` for :func:`.graph.to_sequential`.

``torch.export.save`` writes the graph (ATen ops) and the weights; ``torch.export.load`` reads them back
without unpickling code, so a model with its own ``forward()`` (residual-free, a chain of supported
layers) converts without its Python class. Both the ATen ops of ``torch.export.export`` (conv2d, linear,
batch_norm, ...) and their core-ATen decompositions (convolution, addmm, _native_batch_norm_legit...)
are read. A node whose inputs are all constants (a weight's transpose, say) is evaluated; the rest
must form a chain from the one user input to the one output.
"""
from __future__ import annotations

import operator
from pathlib import Path

import numpy as np

from runtime.errors import UserError

from .graph import Op, unsupported

_IDENTITY = {"dropout", "clone", "alias", "detach", "contiguous", "lift_fresh_copy", "feature_dropout"}
_SOFTMAX = {"softmax", "_softmax", "log_softmax", "_log_softmax"}


def _load(path: Path):
    import torch

    try:
        return torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001 (any failure of a foreign archive is the file's problem)
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a readable torch.export archive ({first})") from None


def _np(v):
    import torch

    return v.detach().double().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=np.float64)


def read(path) -> tuple[list[Op], tuple]:
    """``(ops, input dims without the batch)`` of a torch.export archive."""
    import torch

    path = Path(path)
    ep = _load(path)
    sig = ep.graph_signature
    values: dict[str, object] = {}
    sources = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
               **getattr(sig, "inputs_to_lifted_tensor_constants", {})}
    for name, target in sources.items():
        v = ep.state_dict.get(target)
        if v is None:
            v = ep.constants.get(target)
        values[name] = v
    users = list(sig.user_inputs)
    if len(users) != 1:
        raise UserError(f"{path}: the program has {len(users)} inputs ({', '.join(users) or 'none'}); one image input is supported")
    if len(sig.user_outputs) != 1:
        raise UserError(f"{path}: the program has {len(sig.user_outputs)} outputs; one (the logits) is supported")
    CHAIN = object()
    cur = None
    dims = None
    ops: list[Op] = []
    for i, node in enumerate(ep.graph.nodes):
        where = f"node {i} ({node.name})"
        if node.op == "placeholder":
            if node.name == users[0]:
                val = node.meta.get("val")
                if val is None or not hasattr(val, "shape"):
                    raise UserError(f"{path}: the input {node.name!r} has no recorded shape")
                try:
                    dims = tuple(int(d) for d in val.shape)
                except (TypeError, ValueError):
                    raise UserError(f"{path}: the input {node.name!r} has a dynamic image size {tuple(val.shape)}; "
                                    f"export it with a fixed C, H and W") from None
                cur = node
                values[node.name] = CHAIN
            continue
        if node.op == "output":
            outs = node.args[0]
            outs = outs if isinstance(outs, (tuple, list)) else [outs]
            if len(outs) != 1 or outs[0] is not cur:
                raise UserError(f"{path}: the program's output is not the end of the chain of layers")
            continue
        if node.op != "call_function":
            raise unsupported(f"{node.op} {node.target}", where)

        def is_chain(a):
            return isinstance(a, torch.fx.Node) and values.get(a.name) is CHAIN

        leaves = []
        torch.fx.node.map_arg((node.args, node.kwargs), lambda n: leaves.append(n))
        chain_in = [a for a in leaves if is_chain(a)]
        if node.target is operator.getitem:
            src, idx = node.args
            if is_chain(src):
                if idx != 0 and not node.users:
                    continue   # an unused side output (batch-norm statistics, pooling indices)
                if idx != 0:
                    raise UserError(f"{path}: {where} uses output {idx} of {src.name}: the program is not a chain of layers")
                values[node.name] = CHAIN
                cur = node
                continue
            values[node.name] = values[src.name][idx]
            continue
        if not isinstance(node.target, torch._ops.OpOverload):
            raise unsupported(str(node.target), where)
        name = node.target._schema.name.split("::")[-1]
        if not chain_in:     # a computation on constants (a weight's transpose): evaluate it
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: values[n.name])
            with torch.no_grad():
                values[node.name] = node.target(*args, **kwargs)
            continue
        if len(chain_in) != 1 or chain_in[0] is not cur:
            raise UserError(f"{path}: {where} ({name}) reads {', '.join(a.name for a in chain_in)}: the program is not "
                            f"a chain of layers (branches and skip connections are not supported)")
        args = list(node.args)
        kw = dict(node.kwargs)

        def arg(k, key=None, default=None):
            v = args[k] if len(args) > k else kw.get(key, default)
            if isinstance(v, torch.fx.Node):
                v = values[v.name]
            return v

        if name in ("conv2d", "convolution"):
            if name == "convolution" and arg(6, "transposed", False):
                raise unsupported("conv_transpose", where)
            padding = arg(4, "padding", [0])
            if isinstance(padding, str):
                raise UserError(f"{path}: {where}: padding={padding!r} is not supported; use explicit padding")
            ops.append(Op("conv", where, {"w": _np(arg(1, "weight")),
                                          "b": None if arg(2, "bias") is None else _np(arg(2, "bias")),
                                          "stride": arg(3, "stride", [1]), "pads": padding,
                                          "dilation": arg(5, "dilation", [1]),
                                          "groups": arg(8 if name == "convolution" else 6, "groups", 1)}))
        elif name == "linear":
            ops.append(Op("linear", where, {"w": _np(arg(1, "weight")),
                                            "b": None if arg(2, "bias") is None else _np(arg(2, "bias"))}))
        elif name in ("addmm", "mm"):
            if name == "addmm" and (args[1] is not cur or arg(3, "beta", 1) != 1 or arg(4, "alpha", 1) != 1):
                raise unsupported("addmm (other than bias + x @ W)", where)
            if name == "mm" and args[0] is not cur:
                raise unsupported("mm (other than x @ W)", where)
            wt = _np(arg(2, "mat2") if name == "addmm" else arg(1, "mat2"))
            ops.append(Op("linear", where, {"w": wt.T, "b": _np(arg(0, "self")) if name == "addmm" else None}))
        elif name in ("batch_norm", "_native_batch_norm_legit_no_training"):
            if name == "batch_norm" and arg(5, "training", False):
                raise unsupported("batch_norm in training mode", where)
            eps = arg(7, "eps") if name == "batch_norm" else arg(6, "eps")
            ops.append(Op("bn", where, {"weight": _np(arg(1, "weight")), "bias": _np(arg(2, "bias")),
                                        "running_mean": _np(arg(3, "running_mean")),
                                        "running_var": _np(arg(4, "running_var")), "eps": float(eps)}))
        elif name in ("relu", "relu_"):
            ops.append(Op("relu", where))
        elif name in ("hardtanh", "hardtanh_", "clamp", "clamp_min", "relu6"):
            if name == "relu6":
                lo, hi = 0.0, 6.0
            elif name == "clamp_min":
                lo, hi = arg(1, "min"), None
            else:
                lo, hi = arg(1, "min_val" if name.startswith("hardtanh") else "min", -1.0 if name.startswith("hardtanh") else None), \
                    arg(2, "max_val" if name.startswith("hardtanh") else "max", 1.0 if name.startswith("hardtanh") else None)
            ops.append(Op("clip", where, {"lo": None if lo is None else float(lo), "hi": None if hi is None else float(hi)}))
        elif name in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d"):
            k = arg(1, "kernel_size")
            s = arg(2, "stride", []) or k
            p = arg(3, "padding", [0])
            if name == "avg_pool2d":
                if arg(6, "divisor_override") is not None:
                    raise unsupported("avg_pool2d with divisor_override", where)
                ops.append(Op("avgpool", where, {"kernel": k, "stride": s, "pads": p, "ceil": arg(4, "ceil_mode", False),
                                                 "count_include_pad": arg(5, "count_include_pad", True)}))
            else:
                ops.append(Op("maxpool", where, {"kernel": k, "stride": s, "pads": p, "dilation": arg(4, "dilation", [1]),
                                                 "ceil": arg(5, "ceil_mode", False)}))
        elif name in ("adaptive_avg_pool2d", "_adaptive_avg_pool2d"):
            if list(arg(1, "output_size")) != [1, 1]:
                raise unsupported("adaptive_avg_pool2d to a size other than 1x1", where)
            ops.append(Op("gap", where))
        elif name == "mean":
            d = sorted(int(x) % 4 for x in arg(1, "dim"))
            if d != [2, 3]:
                raise unsupported("mean (other than over H and W)", where)
            ops.append(Op("gap", where))
            if not arg(2, "keepdim", False):
                ops.append(Op("flatten", where))
        elif name == "flatten":
            if arg(1, "start_dim", 0) != 1 or arg(2, "end_dim", -1) != -1:
                raise unsupported("flatten (other than start_dim=1)", where)
            ops.append(Op("flatten", where))
        elif name in ("view", "reshape", "_unsafe_view"):
            if len(arg(1, "size")) != 2:
                raise unsupported(f"{name} to {list(arg(1, 'size'))} (only to (N, features))", where)
            ops.append(Op("flatten", where))
        elif name == "squeeze" and sorted(int(x) % 4 for x in np.atleast_1d(arg(1, "dim", []))) == [2, 3]:
            ops.append(Op("flatten", where))
        elif name == "permute":
            ops.append(Op("transpose", where, {"perm": tuple(int(x) for x in arg(1, "dims"))}))
        elif name in ("add", "sub", "mul", "div") and node.target._overloadname in ("Tensor", "Scalar"):
            other = [a for a in node.args[:2] if a is not cur]
            if len(other) != 1 or (name in ("sub", "div") and node.args[0] is not cur):
                raise unsupported(f"{name} (other than the chain value and a constant)", where)
            v = _np(values[other[0].name] if isinstance(other[0], torch.fx.Node) else other[0])
            if kw.get("alpha", 1) != 1:
                v = v * kw["alpha"]
            key = "add" if name in ("add", "sub") else "mul"
            v = -v if name == "sub" else v
            if name == "div":
                if np.any(v == 0):
                    raise UserError(f"{path}: {where}: division by zero")
                v = 1.0 / v
            ops.append(Op("affine", where, {key: v}))
        elif name in _IDENTITY:
            ops.append(Op("identity", where))
        elif name in _SOFTMAX:
            ops.append(Op("softmax", where))
        else:
            raise unsupported(name, where)
        values[node.name] = CHAIN
        cur = node
    if dims is None:
        raise UserError(f"{path}: the program has no image input")
    if len(dims) < 2:
        raise UserError(f"{path}: the input has shape {list(dims)}; images need (N, C, H, W) or (N, features)")
    return ops, tuple(dims[1:])
