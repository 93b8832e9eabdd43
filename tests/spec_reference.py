"""A deliberately slow, literal reading of the integer specification (docs/spec.md), in plain Python.

It shares no code with the Numba golden model: gather instead of scatter, Python ints, explicit loops.
The tests require the golden model to equal it exactly.
"""


def run_one(model, image):
    """image: nested lists / array (C, H, W) of uint8. Returns (logits list, phases per layer, sops per layer)."""
    # the input code (Q_in, T_in) until the first firing layer, the hidden code (Q, T) after it
    T = model.input_T
    D = [int(x) for x in model.input_decode]
    E = [int(x) for x in model.encode]
    C, H, W = model.input_shape
    ph = [[[E[int(image[c][y][x])] for x in range(W)] for y in range(H)] for c in range(C)]
    phases = [ph]
    sops = []
    for layer in model.layers:
        kind = layer.kind
        if kind == "dense":
            flat = [f for ch in ph for row in ch for f in row] if isinstance(ph[0], list) else list(ph)
            out = []
            s = 0
            for o in range(layer.weight.shape[0]):
                acc = int(layer.bias[o])
                for j, f in enumerate(flat):
                    if f != T:
                        acc += int(layer.weight[o, j]) * D[f]
                        s += 1
                out.append(acc)
            sops.append(s)
            if layer.readout:
                phases.append(None)
                return out, phases, sops
            T, D = model.T, [int(x) for x in model.decode]
            ph = [fire(acc, layer.theta[o], T) for o, acc in enumerate(out)]
            phases.append(ph)
            continue
        cin, h, w = layer.in_shape
        cout, oh, ow = layer.out_shape
        k, st, p = layer.kernel, layer.stride, layer.padding
        out = [[[None] * ow for _ in range(oh)] for _ in range(cout)]
        s = 0
        for o in range(cout):
            for y in range(oh):
                for x in range(ow):
                    if kind == "maxpool":
                        best = T
                        for ky in range(k):
                            for kx in range(k):
                                iy, ix = y * st - p + ky, x * st - p + kx
                                if 0 <= iy < h and 0 <= ix < w:
                                    best = min(best, ph[o][iy][ix])
                        out[o][y][x] = best
                        continue
                    if kind == "conv2d":
                        acc = int(layer.bias[o])
                        chans = range(cin)
                    else:  # avgpool: weights 1, own channel only, no bias
                        acc = 0
                        chans = [o]
                    for c in chans:
                        for ky in range(k):
                            for kx in range(k):
                                iy, ix = y * st - p + ky, x * st - p + kx
                                if 0 <= iy < h and 0 <= ix < w and ph[c][iy][ix] != T:
                                    wgt = int(layer.weight[o, c, ky, kx]) if kind == "conv2d" else 1
                                    acc += wgt * D[ph[c][iy][ix]]
                                    s += 1
                    out[o][y][x] = acc if layer.readout else fire(acc, layer.theta[o], model.T)
        sops.append(s)
        if layer.readout:
            phases.append(None)
            return [v for ch in out for row in ch for v in row], phases, sops
        if kind != "maxpool":
            T, D = model.T, [int(x) for x in model.decode]
        ph = out
        phases.append(ph)
    raise AssertionError("no readout")


def fire(acc, theta_row, T):
    """The first phase f with acc >= Theta[f], else T (no spike)."""
    for f in range(T):
        if acc >= int(theta_row[f]):
            return f
    return T


def argmax_lowest(values):
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best
