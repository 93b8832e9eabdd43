"""Reproducible training of the shipped example ANNs (``codegen train ARCH``).

Every run is determined by the seed: torch/numpy seeds, deterministic algorithms, a fixed number of
threads, and data order/augmentation drawn from a seeded generator. Inputs are raw pixels / 255 in
[0, 1] with no mean subtraction, because the one-spike input encoder maps each uint8 pixel to a phase
and can only represent non-negative values.
"""
from __future__ import annotations


import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import datasets
from runtime.errors import UserError


def _mnist_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(128, 10),
    )


def _mnist_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(512, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(128, 10),
    )


def _fmnist_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3136, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(128, 10),
    )


# name -> (builder, dataset, epochs, max shift of the augmentation in pixels)
ARCHS = {
    "mnist-mlp": (_mnist_mlp, "mnist", 30, 2),
    "mnist-cnn": (_mnist_cnn, "mnist", 15, 2),
    "fmnist-cnn": (_fmnist_cnn, "fashion-mnist", 20, 1),
}


def seeded(seed: int, threads: int) -> torch.Generator:
    """Every source of randomness from ``seed``, a fixed thread count, deterministic algorithms; the
    generator that draws the data order and the augmentation (shared by the detector training)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(seed)


def to_float(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 pixels (N,1,H,W) -> float32 in [0, 1], the ANN's input convention."""
    return torch.from_numpy(np.array(images_u8, dtype=np.float32)).div_(255.0)


def _shift_batch(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random integer translation by up to ``max_shift`` pixels (zero fill), one shift per image."""
    if max_shift == 0:
        return x
    n, c, h, w = x.shape
    p = max_shift
    padded = nn.functional.pad(x, (p, p, p, p))
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None, :])  # (n, w)
    idx_n = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def accuracy(model: nn.Module, images_u8: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(labels), batch):
        out = model(to_float(images_u8[i:i + batch]))
        correct += int((out.argmax(1).numpy() == labels[i:i + batch]).sum())
    return correct / len(labels)


def train(arch: str, seed: int = 0, epochs: int | None = None, batch_size: int = 128, lr: float = 2e-3,
          threads: int = 2, progress: bool = True, max_steps: int | None = None) -> tuple[nn.Sequential, dict]:
    """Train ``arch`` from ``seed``; the model and its meta (test accuracy, the settings).

    ``max_steps``: stop after that many batches (the learning-rate schedule stays that of the full run):
    a short run, for tests of reproducibility."""
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}")
    builder, dataset, default_epochs, max_shift = ARCHS[arch]
    epochs = default_epochs if epochs is None else epochs
    if epochs < 1:
        raise UserError(f"epochs must be a positive integer, not {epochs}")
    gen = seeded(seed, threads)

    xtr_u8, ytr = datasets.load(dataset, "train")
    xte_u8, yte = datasets.load(dataset, "test")
    xtr = to_float(xtr_u8)
    ytr_t = torch.from_numpy(ytr)
    model = builder()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(ytr) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    lossf = nn.CrossEntropyLoss(label_smoothing=0.05)

    done = 0
    for ep in range(epochs):
        if max_steps is not None and done >= max_steps:
            break
        model.train()
        perm = torch.randperm(len(ytr), generator=gen)
        bar = tqdm(range(0, len(ytr), batch_size), desc=f"{arch} epoch {ep + 1}/{epochs}", disable=not progress, leave=False)
        tot = 0.0
        for i in bar:
            if max_steps is not None and done >= max_steps:
                break
            done += 1
            idx = perm[i:i + batch_size]
            xb = _shift_batch(xtr[idx], max_shift, gen)
            loss = lossf(model(xb), ytr_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        if progress:
            acc = accuracy(model, xte_u8, yte)
            tqdm.write(f"{arch} epoch {ep + 1}/{epochs}: loss {tot / len(ytr):.4f}, test accuracy {100 * acc:.2f}%")
    model.eval()
    test_acc = accuracy(model, xte_u8, yte)
    meta = {"arch": arch, "dataset": dataset, "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
            "max_shift": max_shift, "test_accuracy": test_acc,
            "torch": str(torch.__version__)}
    return model, meta
