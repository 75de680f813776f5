#!/usr/bin/env bash
# The op, solver and mixer tests on a torch release's leg (set up by scripts/setup_leg.sh REL),
# Triton under the interpreter, plus the sm_90/sm_80 compile-only checks of every Triton kernel
# and CUDA source against that release. Extra arguments go to pytest.
#   bash scripts/test_leg.sh 2.11
set -euo pipefail
cd "$(dirname "$0")/.."
REL=${1:?usage: test_leg.sh 2.11|2.15}
shift
VENV=$PWD/.venv-torch$REL
TREE=build/leg-torch$REL
[ -x "$VENV/bin/python" ] && [ -d "$TREE" ] || { echo "test_leg.sh: run scripts/setup_leg.sh $REL first" >&2; exit 2; }
cd "$TREE"
export TRITON_INTERPRET=1 SUPERMIX_REQUIRE_COMPILED=1
export PYTHONPATH="$PWD/python:$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
"$VENV/bin/python" -c "import torch, triton, supermix_ext, json; print('leg', torch.__version__, 'triton', triton.__version__, json.dumps(supermix_ext.backend_info()['auto']))"
verbosity=-q; [ -n "${CI:-}" ] && verbosity=-v
exec "$VENV/bin/python" -m pytest tests/test_ops.py tests/test_solver.py tests/test_solver_oracles.py \
  tests/test_mixers.py tests/test_mixer_contract.py tests/test_gpu_compile.py "$verbosity" -rs \
  -p no:cacheprovider "$@"
