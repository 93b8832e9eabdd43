"""Amaranth RTL for one-spike models: event-driven engines linked by valid/ready spike streams.

See ``rtl/README.md`` for the block diagram, the stream formats and measured cycle counts.
"""
from .conv import ConvEngine
from .dense import DenseEngine
from .encoder import PixelEncoder
from .fire import FireUnit
from .network import Network
from .pins import PinWrapper, ResultSerialiser
from .readout import Argmax

__all__ = ["Argmax", "ConvEngine", "DenseEngine", "Network", "FireUnit", "PinWrapper", "PixelEncoder", "ResultSerialiser"]
