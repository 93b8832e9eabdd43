"""BASELINE ONLY: a straightforward int8 ANN of the same network, for the C-target benchmark."""
