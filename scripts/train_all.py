"""Train the shipped example ANNs into models/<arch>.ann.pt (reproducible from the seed)."""
import sys
from pathlib import Path

from codegen.frontend import ann
from codegen.frontend import train

out = Path(__file__).resolve().parent.parent / "models"
for arch in sys.argv[1:] or list(train.ARCHS):
    model, meta = train.train(arch, seed=0)
    ann.save(out / f"{arch}.ann.pt", model, (1, 28, 28), meta)
    print(arch, "test accuracy", meta["test_accuracy"], flush=True)
