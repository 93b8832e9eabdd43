"""The boards: every MCU and FPGA board a user can name, in :mod:`boards.registry`; what a board is
described by, in :mod:`boards.kinds`; the MCU boards' start-up code, firmware and linker scripts in
``boards/mcu/``."""
