#!/usr/bin/env bash
# GPU check, for a machine with an NVIDIA GPU (e.g. the lent H200), in well under 8 minutes:
# builds the CUDA kernels for the local GPU, runs the op tests on cuda (CUDA and Triton backends
# against the reference, deterministic mode, one solver iteration captured in a CUDA graph, no
# host syncs, a second GPU when there is one), times the ops with triton.testing.do_bench against
# the reference, reports mix's achieved memory bandwidth, and prints a short table last.
# It uses the machine's own python3 and torch (no installs: such machines have no network).
# Record what it prints, the date and the GPU in benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${OUT:-/tmp/supermix-gpu-check}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
unset TRITON_INTERPRET
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

start=$(date +%s)
echo "== build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
$PY setup.py build_ext --inplace > "$OUTDIR/build.log" 2>&1 || { tail -n 40 "$OUTDIR/build.log"; exit 1; }
grep -c "nvcc" "$OUTDIR/build.log" | xargs echo "nvcc invocations:"
echo "build: $(( $(date +%s) - start )) s"
export PYTHONPATH="$PWD/python:$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import supermix_ext, json; print(json.dumps(supermix_ext.backend_info()))"

echo "== tests on cuda"
set +e
SUPERMIX_REQUIRE_COMPILED=1 $PY -m pytest tests/test_ops.py tests/test_cuda_device.py -q -rs -p no:cacheprovider \
  -k "cuda" 2>&1 | tee "$OUTDIR/tests.log" | tail -n 15
tests_rc=${PIPESTATUS[0]}
set -e
echo "tests: rc=$tests_rc, $(( $(date +%s) - start )) s so far"

echo "== timings"
$PY benchmarks/gpu_bench.py --out "$OUTDIR/gpu_bench.json" | tee "$OUTDIR/gpu_bench.txt"
echo "total: $(( $(date +%s) - start )) s; tests rc=$tests_rc"
exit $tests_rc
