"""The front end: float ANNs in, one-spike integer models out.

* :mod:`.ann` -- the ``onespike-ann`` file (a float ``nn.Sequential`` and its input shape);
* :mod:`.datasets` -- MNIST and Fashion-MNIST as uint8 arrays;
* :mod:`.train` -- the shipped example ANNs, trained reproducibly from a seed;
* :mod:`.images` -- the user's own uint8 images (``.npy``);
* conversion, in pipeline order: :mod:`.lower` (ANN -> float stages), :mod:`.calibrate`
  (activation scales, normalisation, the one-spike float network), :mod:`.quantise` (integer tables
  for a (Q, T)), :mod:`.convert` (the whole conversion with the (Q, T) search).
"""
