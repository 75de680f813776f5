#!/usr/bin/env bash
# A test leg on another torch release: .venv-torch<REL> with that torch, its torchvision and its
# Triton, the test tools, and supermix built against it in build/leg-torch<REL>/ (a copy of the
# tree: the main .venv's in-place build and its build record stay as they are). Safe to rerun.
#   bash scripts/setup_leg.sh 2.11     # torch 2.11.0 / Triton 3.6.0 on Python 3.12: the GPU machine's stack
#   bash scripts/setup_leg.sh 2.15     # torch 2.15.0 / Triton 3.7
# Then: bash scripts/test_leg.sh 2.11 (the op, solver and mixer tests on that build).
# The build is the one benchmarks/gpu_check.sh makes (setup.py build_ext --inplace, CUDA for sm_90
# where nvcc is found; FORCE_CPU=1 for C++ only); without a GPU, gpu_check.sh stops after the
# build and the import, before the first thing that needs a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
REL=${1:?usage: setup_leg.sh 2.11|2.15}
case "$REL" in
  # torch, and its torchvision (torchvision 0.30 is not out for 2.15: 0.29.2 without its pin)
  # Triton 3.6's interpreter (the CPU test path) needs NumPy < 2.4 (supermix_ext/_compat.py).
  2.11) TORCH="torch==2.11.0"; VISION="torchvision==0.26.0"; VISION_NODEPS=""; NUMPY="numpy<2.4" ;;
  2.15) TORCH="torch==2.15.0"; VISION="torchvision==0.29.2"; VISION_NODEPS="--no-deps"; NUMPY="numpy" ;;
  *) echo "setup_leg.sh: release must be 2.11 or 2.15, got $REL" >&2; exit 2 ;;
esac
VENV=.venv-torch$REL
TREE=build/leg-torch$REL
# The GPU machine runs Python 3.12: use it where pyenv has it, else this machine's python3.
PY=${LEG_PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in /root/.pyenv/versions/3.12*/bin/python3.12 python3.12 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY=$candidate; break; fi
  done
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[leg $REL] creating $VENV with $("$PY" --version)"
  "$PY" -m venv "$VENV"
fi
# This machine's pip caps torch at the release kept on disk (a global constraints file): the
# leg's own releases bypass it, for these installs only.
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('${TORCH#torch==}') else 1)" 2>/dev/null; then
  echo "[leg $REL] installing $TORCH $VISION"
  "$VENV/bin/python" -m pip install -q "$TORCH"
  "$VENV/bin/python" -m pip install -q $VISION_NODEPS "$VISION"
fi
"$VENV/bin/python" -m pip install -q "setuptools>=77" wheel ninja "$NUMPY" safetensors tqdm matplotlib \
  pillow pytest expecttest
echo "[leg $REL] $("$VENV/bin/python" -c "import torch, triton, torchvision, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'torchvision', torchvision.__version__)")"

# A copy of the tree (tracked and untracked-but-not-ignored files) to build in.
mkdir -p "$TREE"
git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$TREE"
echo "[leg $REL] building in $TREE (benchmarks/gpu_check.sh, which stops before the GPU part here)"
(cd "$TREE" && MAX_JOBS=${MAX_JOBS:-2} PYTHON="$PWD/../../$VENV/bin/python" OUT="$PWD/gpu-check" bash benchmarks/gpu_check.sh)
