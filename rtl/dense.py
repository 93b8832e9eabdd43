"""Event-driven dense layer: the 1x1 case of :class:`~rtl.conv.ConvEngine`."""
import numpy as np

from .conv import ConvEngine

__all__ = ["DenseEngine"]


class DenseEngine(ConvEngine):
    """One dense layer ``acc[o] = bias[o] + sum_j W[o, j] * D[f_j]``, fed by spike events.

    A :class:`~rtl.conv.ConvEngine` with a ``(n_in, 1, 1)`` input and a 1x1 kernel: the outputs are
    split into ``groups = ceil(n_out / lanes)`` groups of ``lanes`` neighbouring neurons, weight word
    ``j * groups + g`` holds ``W[g*lanes : (g+1)*lanes, j]``, every input event costs ``groups``
    cycles back to back, and output events leave in increasing index. It is frame-buffered: input
    end-of-row markers are ignored (its input is one row of ``n_in`` neurons, in the producer's
    raster order, :func:`rtl.network.build_engine` orders the weight columns so), and it fires at
    the end of the frame (one end-of-row marker, then the end-of-frame marker).

    Parameters
    ----------
    n_in, n_out, lanes : int
    weights : int array (n_out, n_in)
    bias, theta, decode, acc_bits, store :
        As :class:`~rtl.conv.ConvEngine` (``theta=None``: the readout; ``store="ram"``: weights and
        thresholds in an uninitialised single-port RAM, e.g. iCE40 SPRAM, written by ``load``).
    """

    def __init__(self, n_in: int, n_out: int, lanes: int, weights, bias, theta, decode, acc_bits: int,
                 store: str = "rom"):
        for name, v in (("Input count", n_in), ("Output count", n_out), ("Lane count", lanes)):
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        weights = np.asarray(weights)
        if weights.shape != (n_out, n_in):
            raise ValueError(f"Weights must have shape ({n_out}, {n_in}), not {weights.shape}")
        super().__init__((int(n_in), 1, 1), 1, 1, 0, lanes, weights.reshape(n_out, n_in, 1, 1),
                         bias, theta, decode, acc_bits, store, frame=True)
