"""Spike-aware training through the one-spike forward pass (``codegen finetune``; seeds 003, 001, 004).

The network trained here *is* the float one-spike network of the conversion (calibrate.py's
``onespike_float_forward``), with its weights as parameters: the normalised weights ``W'``, ``b'``
of every dense / conv2d stage, the fixed input code ``(Q_in, T_in)`` and the hidden code ``(Q, T)``
with the threshold shift. Forward, every firing neuron emits ``Q^-f`` for the first phase ``f`` with
``a >= theta_f`` (0 below ``theta_{T-1}``) -- the closed form of the time-stepped neuron
(runtime/dynamics.py), vectorised over phases, neurons and the batch, with no time loop (seed 003's
point: training cost independent of T). Backward, the step function gets a slope:

* ``"ste"``: straight through, ``dq/da = 1`` on ``0 < a <= 1`` (where ``q`` rounds ``a`` to a level),
  0 elsewhere;
* ``"na"``: neighbourhood aggregation (seed 001, its "backpropagated" first-order form): the
  finite differences of the fire function over a neighbourhood of the membrane value,
  ``dq/da = mean_k (q(a + d_k) - q(a - d_k)) / (2 d_k)``, ``d_k = k/K * r * max(a, theta_{T-1})``,
  ``r = NA_RADIUS * (Q - 1)`` (the neighbourhood spans about ``NA_RADIUS`` level spacings around
  ``a``). A neuron whose neighbourhood crosses no threshold gets no gradient; one just below
  ``theta_{T-1}`` learns that firing would change the loss. With ``dL/dq`` the gradient that
  reaches the neuron's output, ``dL/da = dL/dq * dq/da`` is the aggregated finite difference
  ``mean_k (L(q(a+d_k)) - L(q(a-d_k))) / (2 d_k)`` to first order in the output change (exactly,
  when the loss is linear in the neuron's output: tests/test_finetune.py).

The synaptic operations are counted as the golden model counts them (each input spike of a dense,
conv2d or avgpool stage adds to every output it reaches: ``n_out`` for dense, ``C_out`` times the
output positions whose window holds it for conv2d, one per window for avgpool), from the spike maps
(after max-pooling). The **SOP penalty** is their smooth version divided by the SOPs of the start
network, with the spike indicator's gradient taken from the fire slope at ``theta_{T-1}`` (the
same STE / NA choice); its weight ``mu`` (starting at 0) follows the budget by dual ascent: after
every batch ``mu += MU_STEP * (sops / ((1 - MARGIN) * budget * sops_start) - 1)`` (never below
0), so training drives the measured SOPs to just under ``budget`` times the start network's and no
further.

The input spikes are fixed by the input code (the images do not train): ``input_T`` (fewer input
phases) raises the lowest pixel value that spikes, ``theta_in_{T_in - 1}``, and so removes input
spikes, which dominate a dense first layer's SOPs (the MNIST MLP: 98 %).

:func:`finetune` returns the trained network as a plain ``nn.Sequential`` in the normalised units
(``Linear``/``Conv2d`` + ``ReLU``, pools, ``Flatten``; BatchNorm folded), whose ANN file records
``normalised`` and the codes; ``codegen convert`` then uses ``lambda = 1`` (``--norm none``) and
those codes, so the integer model is the trained network quantised by the existing path.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import nn
from tqdm import tqdm

from runtime.errors import UserError
from runtime.spec import encode_table, level, shifted_threshold

from .calibrate import Normalised

GRADIENTS = ("ste", "na")
NA_POINTS = 4          # K: finite differences per side of the neighbourhood
NA_RADIUS = 1.5        # the neighbourhood, in level spacings (Q - 1) of the value
MU_STEP = 0.005        # dual ascent step of the SOP weight, per batch
MARGIN = 0.03          # the dual ascent aims this share below the budget, so that epochs end within it


def _fire_phase(a: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """First f with ``a >= theta[f]`` (theta decreasing), else T."""
    rev = torch.flip(theta, (0,)).contiguous()
    return len(theta) - torch.searchsorted(rev, a.contiguous(), right=True)


class _Fire(torch.autograd.Function):
    """q(a) = levels[first f with a >= theta_f] (0 for no spike); the backward slope of the module docstring."""

    @staticmethod
    def forward(ctx, a, theta, lvt, mode, radius):
        x = lvt[_fire_phase(a, theta)]
        ctx.save_for_backward(a, theta, lvt)
        ctx.mode, ctx.radius = mode, radius
        return x

    @staticmethod
    def backward(ctx, g):
        a, theta, lvt = ctx.saved_tensors
        return g * fire_slope(a, theta, lvt, ctx.mode, ctx.radius), None, None, None, None


def fire_slope(a, theta, lvt, mode: str, radius: float) -> torch.Tensor:
    """dq/da of the fire function (see the module docstring)."""
    if mode == "ste":
        return ((a > 0) & (a <= 1)).to(a.dtype)
    base = torch.clamp(a, min=float(theta[-1]))
    slope = torch.zeros_like(a)
    for k in range(1, NA_POINTS + 1):
        d = base * (radius * k / NA_POINTS)
        slope += (lvt[_fire_phase(a + d, theta)] - lvt[_fire_phase(a - d, theta)]) / (2 * d)
    return slope / NA_POINTS


class _Spike(torch.autograd.Function):
    """1 where q(a) > 0 (a >= theta_{T-1}); backward: the fire slope at the threshold (STE: a
    triangle one threshold wide; NA: the same finite differences of the indicator)."""

    @staticmethod
    def forward(ctx, a, theta, mode, radius):
        ctx.save_for_backward(a, theta)
        ctx.mode, ctx.radius = mode, radius
        return (a >= theta[-1]).to(a.dtype)

    @staticmethod
    def backward(ctx, g):
        a, theta = ctx.saved_tensors
        t = theta[-1]
        if ctx.mode == "ste":
            slope = torch.clamp(1 - (a - t).abs() / t, min=0) / t
        else:
            d = (t * ctx.radius * torch.arange(1, NA_POINTS + 1, dtype=a.dtype) / NA_POINTS)
            slope = sum((((a + dk) >= t).to(a.dtype) - ((a - dk) >= t).to(a.dtype)) / (2 * dk) for dk in d) / NA_POINTS
        return g * slope, None, None, None


def _fanout_map(kind: str, in_shape, out_shape, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """SOPs per input spike at each input position (C, H, W) or (n,), as the golden model counts them."""
    if kind == "dense":
        return torch.full((int(np.prod(in_shape)),), float(out_shape[0]), dtype=torch.float64)
    c_out = out_shape[0] if kind == "conv2d" else 1
    ones = torch.ones((1, 1) + tuple(out_shape[1:]), dtype=torch.float64)
    w = torch.ones((1, 1, kernel, kernel), dtype=torch.float64)
    reach = Fn.conv_transpose2d(ones, w, stride=stride, padding=padding)[0, 0]
    h, wd = in_shape[1], in_shape[2]
    full = torch.zeros((h, wd), dtype=torch.float64)       # conv_transpose's output can be a row short
    full[:min(h, reach.shape[0]), :min(wd, reach.shape[1])] = reach[:h, :wd]
    return (c_out * full)[None].expand(in_shape[0], h, wd).contiguous()


@dataclass
class Stats:
    """Per batch: hard SOPs per image (the golden model's count) and the smooth SOPs (for the penalty)."""

    sops: torch.Tensor
    soft_sops: torch.Tensor
    spikes: list = field(default_factory=list)


class OneSpikeNet(nn.Module):
    """The float one-spike network with trainable normalised weights (see the module docstring)."""

    def __init__(self, norm: Normalised, Q: float, T: int, input_Q: float, input_T: int, gradient: str = "ste",
                 dtype=torch.float32):
        super().__init__()
        if gradient not in GRADIENTS:
            raise UserError(f"gradient must be one of {', '.join(GRADIENTS)}, not {gradient!r}")
        self.Q, self.T, self.input_Q, self.input_T, self.gradient = float(Q), int(T), float(input_Q), int(input_T), gradient
        self.radius = NA_RADIUS * (self.Q - 1.0)
        self.stages = [st for st in norm.stages]
        self.input_shape = tuple(norm.input_shape)
        self.register_buffer("theta", torch.tensor(shifted_threshold(Q, T, True), dtype=dtype))
        self.register_buffer("lvt", torch.tensor(np.concatenate([level(Q, T), [0.0]]), dtype=dtype))
        lv_in = np.concatenate([level(input_Q, input_T), [0.0]])
        self.register_buffer("pixel_level", torch.tensor(lv_in[encode_table(input_Q, input_T, 1.0, True)], dtype=dtype))
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.fanout = []
        for st in self.stages:
            if st.kind in ("dense", "conv2d"):
                self.weights.append(nn.Parameter(torch.tensor(st.weight, dtype=dtype)))
                self.biases.append(nn.Parameter(torch.tensor(st.bias, dtype=dtype)))
            if st.kind == "avgpool":
                self.register_buffer(f"ratio{len(self.fanout)}", torch.tensor(st.weight, dtype=dtype))
            self.fanout.append(_fanout_map(st.kind, st.in_shape, st.out_shape, st.kernel, st.stride, st.padding).to(dtype)
                               if st.kind != "maxpool" else None)

    def encode(self, images_u8: np.ndarray) -> torch.Tensor:
        return self.pixel_level[torch.from_numpy(np.asarray(images_u8, dtype=np.int64))]

    def forward(self, x: torch.Tensor, with_stats: bool = False):
        """``x``: the input levels (:meth:`encode`). Returns the logits (and :class:`Stats`)."""
        n = x.shape[0]
        sops = torch.zeros(n, dtype=x.dtype)
        soft = torch.zeros(n, dtype=x.dtype)
        spk, spikes = None, []
        if with_stats:
            spk = (x > 0).to(x.dtype)          # the spike indicator of the current activation
            spikes.append(spk.reshape(n, -1).sum(1))
        k = 0
        for i, st in enumerate(self.stages):
            fan = self.fanout[i]
            if fan is not None and with_stats:
                s_in = spk.reshape(n, -1)
                f = fan.reshape(-1)
                soft = soft + s_in @ f
                sops = sops + s_in.detach() @ f
            if st.kind in ("dense", "conv2d"):
                w, b = self.weights[k], self.biases[k]
                k += 1
                a = x.reshape(n, -1) @ w.T + b if st.kind == "dense" else Fn.conv2d(x, w, b, st.stride, st.padding)
                if i == len(self.stages) - 1:
                    out = a.reshape(n, -1)
                    return (out, Stats(sops, soft, spikes)) if with_stats else out
            elif st.kind == "maxpool":
                x = Fn.max_pool2d(x, st.kernel, st.stride, st.padding)
                if with_stats:
                    spk = Fn.max_pool2d(spk, st.kernel, st.stride, st.padding)
                continue
            else:
                a = Fn.avg_pool2d(x, st.kernel, st.stride, st.padding, count_include_pad=True) * \
                    getattr(self, f"ratio{i}")[None, :, None, None]
            x = _Fire.apply(a, self.theta, self.lvt, self.gradient, self.radius)
            if with_stats:      # the spike map only feeds the SOP count
                spk = _Spike.apply(a, self.theta, self.gradient, self.radius)
                spikes.append(spk.detach().reshape(n, -1).sum(1))
        raise AssertionError("unreachable: lower() guarantees a readout")

    def phases(self, images_u8: np.ndarray) -> list[np.ndarray]:
        """The phase map of the input and of every stage's output (firing: its fire phases; maxpool:
        the pooled phases), as the golden model's ``phases`` (uint8), for comparisons in tests."""
        with torch.no_grad():
            idx = torch.from_numpy(np.asarray(images_u8, dtype=np.int64))
            enc = torch.from_numpy(encode_table(self.input_Q, self.input_T, 1.0, True).astype(np.int64))
            ph = enc[idx]
            x = self.encode(images_u8)
            out = [ph.numpy().astype(np.uint8)]
            k = 0
            n = x.shape[0]
            for i, st in enumerate(self.stages):
                if st.kind in ("dense", "conv2d"):
                    w, b = self.weights[k], self.biases[k]
                    k += 1
                    a = x.reshape(n, -1) @ w.T + b if st.kind == "dense" else Fn.conv2d(x, w, b, st.stride, st.padding)
                    if i == len(self.stages) - 1:
                        return out
                elif st.kind == "maxpool":     # the earliest spike; the no-spike code is the largest
                    x = Fn.max_pool2d(x, st.kernel, st.stride, st.padding)
                    ph = -Fn.max_pool2d(-ph.to(torch.float64), st.kernel, st.stride, st.padding).to(torch.int64)
                    out.append(ph.numpy().astype(np.uint8))
                    continue
                else:
                    a = Fn.avg_pool2d(x, st.kernel, st.stride, st.padding, count_include_pad=True) * \
                        getattr(self, f"ratio{i}")[None, :, None, None]
                ph = _fire_phase(a, self.theta)
                x = self.lvt[ph]
                out.append(ph.numpy().astype(np.uint8))
        return out

    def to_normalised(self) -> Normalised:
        """The trained weights as a :class:`Normalised` network (float64), for ``quantise``."""
        out, k = [], 0
        for st in self.stages:
            n = type(st)(**{f: getattr(st, f) for f in st.__dataclass_fields__})
            if st.kind in ("dense", "conv2d"):
                n.weight = self.weights[k].detach().double().numpy().copy()
                n.bias = self.biases[k].detach().double().numpy().copy()
                k += 1
            out.append(n)
        return Normalised(self.input_shape, out)

    def to_sequential(self) -> nn.Sequential:
        """The trained network as a plain ANN in the normalised units: ``Flatten`` before the first
        dense stage, ``ReLU`` after every firing affine stage, the max-pools; float32."""
        mods: list[nn.Module] = []
        k = 0
        for st in self.stages:
            if st.kind == "dense":
                if not any(isinstance(m, nn.Flatten) for m in mods):
                    mods.append(nn.Flatten())
                w = self.weights[k].detach().double()
                layer = nn.Linear(w.shape[1], w.shape[0]).double()
            elif st.kind == "conv2d":
                w = self.weights[k].detach().double()
                layer = nn.Conv2d(w.shape[1], w.shape[0], st.kernel, st.stride, st.padding).double()
            elif st.kind == "maxpool":
                mods.append(nn.MaxPool2d(st.kernel, st.stride, st.padding))
                continue
            else:
                raise UserError("codegen finetune does not take average-pooling layers yet (their normalisation "
                                "ratio has no place in the ANN file)")
            layer.weight.data.copy_(w)
            layer.bias.data.copy_(self.biases[k].detach().double())
            k += 1
            mods.append(layer)
            if st.fires:
                mods.append(nn.ReLU())
        return nn.Sequential(*mods).float()


@dataclass
class FinetuneResult:
    net: OneSpikeNet
    history: list
    best_epoch: int
    start: dict
    best: dict
    seconds_per_epoch: float


@torch.no_grad()
def evaluate(net: OneSpikeNet, images_u8: np.ndarray, labels: np.ndarray, batch: int = 1000) -> dict:
    """Accuracy and mean SOPs per image of the float one-spike network."""
    net.eval()
    correct, sops, spikes = 0, 0.0, None
    for i in range(0, len(labels), batch):
        out, st = net(net.encode(images_u8[i:i + batch]), with_stats=True)
        correct += int((out.argmax(1).numpy() == labels[i:i + batch]).sum())
        sops += float(st.sops.sum())
        sp = torch.stack(st.spikes, 1).sum(0).numpy()
        spikes = sp if spikes is None else spikes + sp
    n = len(labels)
    return {"accuracy": correct / n, "sops": sops / n, "spikes": (spikes / n).tolist()}


def finetune(net: OneSpikeNet, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
             epochs: int = 5, lr: float = 1e-3, batch_size: int = 128, budget: float = 0.5, mu: float = 0.0,
             max_shift: int = 0, seed: int = 0, progress: bool = True, max_steps: int | None = None,
             mu_step: float = MU_STEP) -> FinetuneResult:
    """Train ``net`` (in place) with cross-entropy plus ``mu`` times the SOPs relative to the start
    network's, ``mu`` by dual ascent towards ``budget`` (the SOPs' target share of the start's;
    ``budget`` >= 1 or None: no penalty); the epoch kept is the one with the best validation
    accuracy among those whose validation SOPs are within the budget (else the fewest SOPs)."""
    from .train import _shift_batch

    gen = torch.Generator().manual_seed(seed)
    start = evaluate(net, x_val, y_val)
    sops0 = max(start["sops"], 1.0)
    penalise = budget is not None and budget < 1
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = -(-len(y_train) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    lossf = nn.CrossEntropyLoss()
    history, best_state, best_key, best_epoch = [], None, None, -1
    yt = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
    done, secs = 0, []
    for ep in range(epochs):
        net.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(y_train), generator=gen)
        bar = tqdm(range(0, len(y_train), batch_size), desc=f"finetune epoch {ep + 1}/{epochs}", disable=not progress,
                   leave=False)
        tot, tot_sops = 0.0, 0.0
        for i in bar:
            if max_steps is not None and done >= max_steps:
                break
            done += 1
            idx = perm[i:i + batch_size]
            xb = net.encode(x_train[idx.numpy()])
            if max_shift:
                xb = _shift_batch(xb, max_shift, gen)
            out, st = net(xb, with_stats=True)
            loss = lossf(out, yt[idx])
            if penalise:
                loss = loss + mu * st.soft_sops.mean() / sops0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
            tot_sops += float(st.sops.sum())
            if penalise:
                mu = max(0.0, mu + mu_step * (float(st.sops.mean()) / ((1 - MARGIN) * budget * sops0) - 1.0))
        secs.append(time.perf_counter() - t0)
        val = evaluate(net, x_val, y_val)
        rec = {"epoch": ep + 1, "loss": tot / len(y_train), "train_sops": tot_sops / len(y_train), "mu": mu,
               "val_accuracy": val["accuracy"], "val_sops": val["sops"], "sop_ratio": val["sops"] / sops0,
               "seconds": round(secs[-1], 2)}
        history.append(rec)
        if progress:
            tqdm.write(f"finetune epoch {ep + 1}/{epochs}: loss {rec['loss']:.4f}, validation accuracy "
                       f"{100 * val['accuracy']:.2f}%, SOPs {val['sops']:,.0f} ({rec['sop_ratio']:.2f} of the start), "
                       f"mu {mu:.3g}, {secs[-1]:.1f} s")
        within = not penalise or rec["sop_ratio"] <= budget
        key = (within, val["accuracy"] if within else -val["sops"])
        if best_key is None or key > best_key:
            best_key, best_epoch = key, ep + 1
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if max_steps is not None and done >= max_steps:
            break
    net.load_state_dict(best_state)
    best = evaluate(net, x_val, y_val)
    return FinetuneResult(net, history, best_epoch, start, best, float(np.median(secs)) if secs else math.nan)
