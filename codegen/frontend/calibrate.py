"""Steps 2-3 of the conversion: the float networks (the lowered ANN, the normalised one-spike float
network), calibration of the per-channel activation scales ``lambda``, and normalisation."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as Fn
from tqdm import tqdm

from runtime.errors import UserError
from runtime.spec import encode_table, level, shifted_threshold

from .lower import Lowered, Stage


# The input's own phase code: 8-bit pixels need a finer base than hidden activations. With
# Q_in = 1.02 and T_in = 255 every pixel value >= 2/255 is represented within 1% ((Q-1)/(Q+1)).
INPUT_Q = 1.02
INPUT_T = 255


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


def _affine(st: Stage, x: torch.Tensor, w: np.ndarray, b: np.ndarray) -> torch.Tensor:
    if st.kind == "dense":
        return x.reshape(x.shape[0], -1) @ _t(w).T + _t(b)
    return Fn.conv2d(x, _t(w), _t(b), stride=st.stride, padding=st.padding)


def _pool(st: Stage, x: torch.Tensor) -> torch.Tensor:
    if st.kind == "maxpool":
        return Fn.max_pool2d(x, st.kernel, st.stride, st.padding)
    return Fn.avg_pool2d(x, st.kernel, st.stride, st.padding, count_include_pad=True)


def float_forward(low: Lowered, x: torch.Tensor, collect: bool = False):
    """The float ANN (BN folded) on float64 input in [0, 1]; optionally the activations of firing stages."""
    acts = []
    for st in low.stages:
        if st.kind in ("dense", "conv2d"):
            x = _affine(st, x, st.weight, st.bias)
            if st.relu:
                x = torch.relu(x) if st.cap is None else torch.clamp(x, 0.0, st.cap)
        else:
            x = _pool(st, x)
        if collect and st.fires:
            acts.append(x)
    return (x, acts) if collect else x


def _channel_values(a: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (C, N*...)"""
    return a.transpose(0, 1).reshape(a.shape[1], -1)


def calibrate(low: Lowered, images_u8: np.ndarray, norm: str = "percentile", percentile: float = 99.99,
              batch: int = 500, progress: bool = False) -> None:
    """Set ``scale`` (lambda per output channel) on every firing stage from calibration images.

    ``progress`` shows one bar (stderr): a step per batch of images, then one per firing stage.
    """
    if norm not in ("max", "percentile", "none"):
        raise UserError(f"normalisation must be 'max', 'percentile' or 'none', not {norm!r}")
    if norm == "none":      # the ANN is already in the one-spike units (codegen finetune writes such ANNs)
        for st in low.stages:
            if st.fires:
                st.scale = np.ones(st.out_shape[0]) if st.cap is None else np.full(st.out_shape[0], min(1.0, st.cap))
        return
    if not (isinstance(percentile, (int, float)) and not isinstance(percentile, bool) and 0 < percentile <= 100):
        raise UserError(f"percentile must be a number in (0, 100], not {percentile}")
    # keep one batch's activations (float64) within about 256 MiB, whatever the network's size
    neurons = sum(int(np.prod(st.out_shape)) for st in low.stages)
    batch = max(1, min(int(batch), (1 << 25) // max(1, neurons)))
    firing = [s for s in low.stages if s.fires]
    n_batches = -(-len(images_u8) // batch)
    bar = tqdm(total=n_batches + len(firing), desc="calibrate", unit="step", disable=not progress, leave=False)
    per_stage: dict[int, list] = {}
    with torch.no_grad():
        for i in range(0, len(images_u8), batch):
            x = _t(images_u8[i:i + batch].astype(np.float64) / 255.0)
            _, acts = float_forward(low, x, collect=True)
            for j, a in enumerate(acts):
                per_stage.setdefault(j, []).append(_channel_values(a))
            bar.update(1)
    gen = torch.Generator().manual_seed(0)
    for j, st in enumerate(firing):
        v = torch.cat(per_stage[j], dim=1)  # (C, M)
        if norm == "max":
            lam = v.max(dim=1).values
        else:
            lam = torch.empty(v.shape[0], dtype=torch.float64)
            for c in range(v.shape[0]):
                pos = v[c][v[c] > 0]
                if pos.numel() > 1_000_000:
                    pos = pos[torch.randperm(pos.numel(), generator=gen)[:1_000_000]]
                lam[c] = torch.quantile(pos, percentile / 100.0) if pos.numel() else 0.0
        lam = lam.numpy().astype(np.float64)
        lam[~(lam > 0)] = 1.0  # a channel that never fires: any positive scale works
        if st.cap is not None:  # ReLU6: the code saturates at lambda, so lambda <= cap is the clip itself
            lam = np.minimum(lam, st.cap)
        st.scale = lam
        per_stage[j] = None  # free the activations of this stage
        bar.update(1)
    bar.close()


def _in_scale_per_feature(st: Stage, lam_in: np.ndarray) -> np.ndarray:
    """Expand the previous activation's per-channel lambda to this stage's input features."""
    if st.kind == "dense" and lam_in.shape[0] != st.in_shape[0]:
        reps = st.in_shape[0] // lam_in.shape[0]
        return np.repeat(lam_in, reps)  # (C, H, W) flattened in C-major order
    return lam_in


@dataclass
class Normalised:
    """The float one-spike model: normalised weights, per stage."""

    input_shape: tuple
    stages: list[Stage]
    ratios: list = field(default_factory=list)  # avgpool: lambda_in / lambda_out per channel


def normalise(low: Lowered) -> Normalised:
    out = []
    lam = np.ones(low.input_shape[0])  # pixels / 255 are already in [0, 1]
    for st in low.stages:
        n = Stage(**{k: getattr(st, k) for k in st.__dataclass_fields__})
        if st.kind in ("dense", "conv2d"):
            lin = _in_scale_per_feature(st, lam)
            lout = st.scale if st.fires else np.ones(st.out_shape[0])
            if st.kind == "dense":
                n.weight = st.weight * lin[None, :] / lout[:, None]
            else:
                n.weight = st.weight * lin[None, :, None, None] / lout[:, None, None, None]
            n.bias = st.bias / lout
            if st.fires:
                lam = st.scale
        elif st.kind == "avgpool":
            n.weight = lam / st.scale  # ratio lambda_in / lambda_out per channel
            lam = st.scale
        out.append(n)
    return Normalised(low.input_shape, out)


def _fire_t(a: torch.Tensor, theta: np.ndarray) -> torch.Tensor:
    """First f with a >= theta[f] (theta decreasing) else T, via a search in the reversed table."""
    rev = _t(theta[::-1].copy())  # a copy: a 1-element reversed view keeps its negative stride
    return len(theta) - torch.searchsorted(rev, a.contiguous(), right=True)


def onespike_float_forward(norm: Normalised, images_u8: np.ndarray, Q: float, T: int, shift: bool = True,
                           input_Q: float = INPUT_Q, input_T: int = INPUT_T) -> torch.Tensor:
    """The closed form of the one-spike network in float64 (no weight quantisation): the logits."""
    lvt = _t(np.concatenate([level(Q, T), [0.0]]))
    theta = shifted_threshold(Q, T, shift)
    lv_in = _t(np.concatenate([level(input_Q, input_T), [0.0]]))
    enc = encode_table(input_Q, input_T, 1.0, shift)
    x = lv_in[_t(enc.astype(np.int64))[_t(images_u8.astype(np.int64))]]
    for st in norm.stages:
        if st.kind in ("dense", "conv2d"):
            a = _affine(st, x, st.weight, st.bias)
            if not st.fires:
                return a.reshape(a.shape[0], -1)
            x = lvt[_fire_t(a, theta)]
        elif st.kind == "maxpool":
            x = _pool(st, x)
        else:
            a = _pool(st, x) * _t(st.weight)[None, :, None, None]
            x = lvt[_fire_t(a, theta)]
    raise AssertionError("unreachable: lower() guarantees a readout")
