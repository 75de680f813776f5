#!/usr/bin/env bash
# Set up supermix from nothing: Fashion-MNIST (Debian package), a virtual environment with
# torch 2.14.1 / torchvision 0.29.1, and the package built with its C++ kernels (plus the CUDA
# kernels when nvcc is found). Safe to rerun; it skips what is already there.
#   FORCE_CPU=1 bash scripts/setup.sh     # build without CUDA even where nvcc exists
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && [ -z "${SUPERMIX_DATA_ROOT:-}" ]; then
  echo "[setup] installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1')" 2>/dev/null; then
  echo "[setup] installing torch==2.14.1 torchvision==0.29.1"
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
.venv/bin/python -m pip install -q setuptools wheel ninja "cmake>=4"

if [ -z "${FORCE_CPU:-}" ] && [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
export MAX_JOBS=${MAX_JOBS:-2}
echo "[setup] building and installing supermix (editable) with its kernels"
log=$(mktemp /tmp/supermix-build.XXXXXX.log)
if ! .venv/bin/python -m pip install -v --no-build-isolation -e ".[test,bench]" > "$log" 2>&1; then
  tail -n 80 "$log"; echo "[setup] build failed; full log: $log"; exit 1
fi
grep -F "[supermix setup]" "$log" | sort -u || true
# Show which CUDA sources nvcc compiled (none on a CPU-only build).
grep -E "bin/nvcc" "$log" | grep -oE "[^ ]+\.cu\b" | sort -u | sed 's/^/[setup] nvcc compiled /' || true
.venv/bin/python -c "import supermix_ext, json; print('[setup] backends:', json.dumps(supermix_ext.backend_info()))"
