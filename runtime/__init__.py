"""Runtime: the integer specification (spec), the model file (modelfile), the Numba golden model
(golden) and the seed's time-stepped reference dynamics (dynamics)."""
import os
from pathlib import Path

# Numba's compiled-kernel cache goes to the user's cache folder, not into the source tree.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "onespike" / "numba"))
