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


def decode_reference(logits, head, H, W):
    """Detections of one readout map (C, GH, GW) as the spec's words say (docs/spec.md, detection head):
    Python ints and lists only. Returns a list of [class, x0, y0, x1, y1, score]."""
    L = [[[int(v) for v in row] for row in ch] for ch in logits]
    K = len(head.classes)
    GH, GW = len(L[0]), len(L[0][0])

    def cell(y, x):
        best = 1
        for k in range(2, K + 1):
            if L[k][y][x] > L[best][y][x]:
                best = k
        return best, L[best][y][x] - L[0][y][x]

    def px(v):
        return (v * head.box_mult + 2 ** (head.box_shift - 1)) // 2 ** head.box_shift

    def clamp(v, lo, hi):
        return max(lo, min(hi, v))

    cands = []
    for y in range(GH):
        for x in range(GW):
            c, s = cell(y, x)
            if s < head.score_threshold:
                continue
            ok = True
            for ny in ((y - 1, y, y + 1) if head.peak == 1 else ()):
                for nx in (x - 1, x, x + 1):
                    if not (0 <= ny < GH and 0 <= nx < GW) or (ny, nx) == (y, x):
                        continue
                    nc, ns = cell(ny, nx)
                    if nc != c:
                        continue
                    earlier = ny * GW + nx < y * GW + x
                    if (earlier and s <= ns) or (not earlier and s < ns):
                        ok = False
            if ok:
                cands.append((s, y * GW + x, c, y, x))
    cands.sort(key=lambda t: (-t[0], t[1]))
    kept = []
    for s, _, c, y, x in cands:
        if len(kept) == head.max_detections:
            break
        dx, dy, bw, bh = (px(L[K + 1 + j][y][x]) for j in range(4))
        cx = x * head.stride + clamp(dx, 0, head.stride)
        cy = y * head.stride + clamp(dy, 0, head.stride)
        bw, bh = clamp(bw, 1, W), clamp(bh, 1, H)
        box = [clamp(cx - bw // 2, 0, W), clamp(cy - bh // 2, 0, H),
               clamp(cx - bw // 2 + bw, 0, W), clamp(cy - bh // 2 + bh, 0, H)]
        suppressed = False
        for k in kept:
            if k[0] != c - 1:
                continue
            iw = min(k[3], box[2]) - max(k[1], box[0])
            ih = min(k[4], box[3]) - max(k[2], box[1])
            inter = iw * ih if iw > 0 and ih > 0 else 0
            union = (k[3] - k[1]) * (k[4] - k[2]) + (box[2] - box[0]) * (box[3] - box[1]) - inter
            if 100 * inter > head.nms_iou_percent * union:
                suppressed = True
        if not suppressed:
            kept.append([c - 1] + box + [s])
    return kept
