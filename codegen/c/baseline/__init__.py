"""BASELINE ONLY: the same ANN through Arm's CMSIS-NN (:mod:`.cmsis`), for the C-target benchmark."""
