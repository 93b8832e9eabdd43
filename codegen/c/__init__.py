"""The C backend for microcontrollers: ``codegen emit --target c`` and ``codegen verify --target c``.

* :mod:`.emit` -- C99 over the hand-written kernels of ``runtime/c/`` (tables, buffers, entry points);
* :mod:`.toolchain` -- finding and running gcc, arm-none-eabi-gcc, QEMU (one-line errors);
* :mod:`.host` -- the host build and its exact comparison with the golden model;
* :mod:`.firmware` -- the Cortex-M build for a board (``boards.registry``): fit, sizes, stack;
* :mod:`.emulators` -- the firmware under QEMU and under Unicorn (instruction counts);
* :mod:`.report` -- the target's report (flash, RAM, stack, instructions per inference);
* :mod:`.baseline` -- BASELINE ONLY: the same ANN through Arm's CMSIS-NN, for the benchmark.
"""
