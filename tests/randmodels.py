"""Random small integer models that satisfy the specification, for property tests."""
import numpy as np

from runtime.spec import IntModel, Layer, SpecError, conv_out, decode_table, encode_table, validate


def random_theta(rng, channels, T, hi):
    """Non-increasing threshold rows with random gaps (and some ties)."""
    steps = rng.integers(0, max(2, hi // T), size=(channels, T))
    start = rng.integers(hi // 4, hi, size=(channels, 1))
    th = start - np.cumsum(steps, axis=1)
    return th.astype(np.int64)


def random_model(rng, Q=None, T=None, F=None, input_shape=None, plan=None, input_code=None) -> IntModel:
    """A random valid model. ``plan``: list of kinds ending in a dense/conv2d readout.

    ``input_code``: (Q_in, T_in) of the input, or None for a random one (sometimes the hidden code)."""
    Q = float(Q if Q is not None else rng.choice([2.0, 1.5, 1.25]))
    T = int(T if T is not None else rng.integers(2, 9))
    F = int(F if F is not None else rng.integers(4, 11))
    input_shape = tuple(input_shape or (int(rng.integers(1, 3)), int(rng.integers(5, 9)), int(rng.integers(5, 9))))
    if plan is None:
        plans = [["conv2d", "maxpool", "dense"], ["conv2d", "avgpool", "conv2d", "dense"],
                 ["dense", "dense"], ["conv2d", "conv2d"], ["maxpool", "conv2d", "dense", "dense"]]
        plan = plans[int(rng.integers(len(plans)))]
    dec = decode_table(Q, T, F)
    if input_code is None:
        input_code = (Q, T) if rng.random() < 0.3 else (float(rng.choice([1.1, 1.25, 1.5])), int(rng.integers(2, 12)))
    qi, ti = input_code
    dec_in = decode_table(qi, ti, F)
    layers = []
    shape = input_shape
    for i, kind in enumerate(plan):
        readout = i == len(plan) - 1
        if kind == "dense":
            n_in = int(np.prod(shape))
            n_out = int(rng.integers(2, 7))
            w = rng.integers(-127, 128, size=(n_out, n_in)).astype(np.int8)
            w[rng.random(w.shape) < 0.3] = 0
            b = rng.integers(-dec[0] * 20, dec[0] * 20, size=n_out).astype(np.int64)
            out = (n_out,)
            th = None if readout else random_theta(rng, n_out, T, int(dec[0]) * 127 * 4)
            layers.append(Layer("dense", (n_in,) if len(shape) == 1 else shape, out, w, b, th, readout=readout, name=f"dense{i}"))
        elif kind == "conv2d":
            c = shape[0]
            k = int(rng.integers(1, min(3, shape[1], shape[2]) + 1))
            s = int(rng.integers(1, 3))
            p = int(rng.integers(0, k))
            o = int(rng.integers(1, 4))
            w = rng.integers(-127, 128, size=(o, c, k, k)).astype(np.int8)
            b = rng.integers(-dec[0] * 20, dec[0] * 20, size=o).astype(np.int64)
            out = (o, conv_out(shape[1], k, s, p), conv_out(shape[2], k, s, p))
            th = None if readout else random_theta(rng, o, T, int(dec[0]) * 127 * 2)
            layers.append(Layer("conv2d", shape, out, w, b, th, k, s, p, readout, name=f"conv{i}"))
        else:
            k = int(rng.integers(1, min(3, shape[1], shape[2]) + 1))
            s = int(rng.integers(1, 3))
            p = int(rng.integers(0, k // 2 + 1))
            out = (shape[0], conv_out(shape[1], k, s, p), conv_out(shape[2], k, s, p))
            th = random_theta(rng, shape[0], T, int(dec[0]) * k * k) if kind == "avgpool" else None
            layers.append(Layer(kind, shape, out, theta=th, kernel=k, stride=s, padding=p, name=f"{kind}{i}"))
        shape = out
    return IntModel(Q=Q, T=T, F=F, input_shape=input_shape, decode=dec, encode=encode_table(qi, ti), layers=layers,
                    input_Q=qi, input_T=ti, input_decode=dec_in)


def random_images(rng, model, n):
    x = rng.integers(0, 256, size=(n,) + tuple(model.input_shape)).astype(np.uint8)
    x[rng.random(x.shape) < 0.3] = 0
    return x


def valid_model(seed, plan, T, input_code=None):
    """The first random model of ``plan`` from ``seed`` that satisfies the spec (F may be too low)."""
    rng = np.random.default_rng(seed)
    while True:
        model = random_model(rng, plan=plan, T=T, input_code=input_code)
        try:
            validate(model)
        except SpecError:
            continue
        return model, rng


def random_head(rng, classes, stride, score_threshold=None):
    """Random decode parameters for a detector with ``classes`` (runtime.spec.DetectHead)."""
    from runtime.spec import DetectHead

    shift = int(rng.integers(4, 20))
    return DetectHead(classes=list(classes), stride=int(stride),
                      score_threshold=int(rng.integers(-50, 50) if score_threshold is None else score_threshold),
                      box_mult=int(rng.integers(1, 1 << min(shift + 2, 30))), box_shift=shift,
                      nms_iou_percent=int(rng.integers(0, 101)), max_detections=int(rng.integers(1, 40)),
                      peak=int(rng.random() < 0.75))


def random_detector(seed, n_classes=2, input_shape=(2, 16, 20), T=4):
    """A small valid detector: conv (stride 2) -> conv (stride 2) -> conv2d readout map with the
    1 + K + 4 channels of a detection head (a 4x5 grid at stride 4 for the default input)."""
    rng = np.random.default_rng(seed)
    while True:
        m = random_model(rng, T=T, input_shape=input_shape, plan=["conv2d", "conv2d", "conv2d"])
        # replace the random layer shapes with the detector's: 3x3 stride-2 convs, a 1x1 readout
        dec, dec_in = m.decode, m.input_decode
        shape, layers = tuple(input_shape), []
        for i, (o, k, s, p) in enumerate([(4, 3, 2, 1), (6, 3, 2, 1), (1 + n_classes + 4, 1, 1, 0)]):
            readout = i == 2
            w = rng.integers(-127, 128, size=(o, shape[0], k, k)).astype(np.int8)
            b = rng.integers(-dec[0] * 20, dec[0] * 20, size=o).astype(np.int64)
            out = (o, conv_out(shape[1], k, s, p), conv_out(shape[2], k, s, p))
            d0 = int((dec_in if i == 0 else dec)[0])
            th = None if readout else random_theta(rng, o, T, d0 * 127 * 2)
            layers.append(Layer("conv2d", shape, out, w, b, th, k, s, p, readout, name=f"conv{i}"))
            shape = out
        m.layers = layers
        m.task = "detect"
        m.head = random_head(rng, [f"c{j}" for j in range(n_classes)], 4)
        try:
            validate(m)
        except SpecError:
            continue
        return m
