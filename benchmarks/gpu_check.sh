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
# Without a visible GPU (a dry run on a CPU machine: scripts/setup_leg.sh) it builds for sm_90,
# imports, and stops before the first thing that needs a GPU.
HAS_GPU=$($PY -c "import torch; print(int(torch.cuda.is_available()))")
if [ "$HAS_GPU" = 1 ]; then
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
else
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  [ -x "$CUDA_HOME/bin/nvcc" ] || { unset FORCE_CUDA; export FORCE_CPU=1; }
fi
$PY -c "import sys, torch, triton, setuptools; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'setuptools', setuptools.__version__)"

start=$(date +%s)
echo "== build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
$PY setup.py build_ext --inplace > "$OUTDIR/build.log" 2>&1 || { tail -n 40 "$OUTDIR/build.log"; exit 1; }
# grep -c exits 1 on no match (nothing to recompile): that is no failure.
echo "nvcc invocations: $(grep -c "nvcc" "$OUTDIR/build.log" || true)"
echo "build: $(( $(date +%s) - start )) s"
export PYTHONPATH="$PWD/python:$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import supermix_ext, json; print(json.dumps(supermix_ext.backend_info()))"
if [ "$HAS_GPU" != 1 ]; then
  echo "no CUDA device visible: built and imported; stopping before the GPU tests"
  exit 0
fi

echo "== tests on cuda"
set +e
SUPERMIX_REQUIRE_COMPILED=1 $PY -m pytest tests/test_ops.py tests/test_cuda_device.py -q -rs -p no:cacheprovider \
  -k "cuda" 2>&1 | tee "$OUTDIR/tests.log" | tail -n 15
tests_rc=${PIPESTATUS[0]}
set -e
echo "tests: rc=$tests_rc, $(( $(date +%s) - start )) s so far"

echo "== timings"
$PY benchmarks/gpu_bench.py --out "$OUTDIR/gpu_bench.json" | tee "$OUTDIR/gpu_bench.txt"
echo "== online mixing in a training step (needs timm; Fashion-MNIST from SUPERMIX_DATA_ROOT)"
SUPERMIX_BENCH_ONLINE_ROUNDS=${SUPERMIX_BENCH_ONLINE_ROUNDS:-3} $PY -m pytest benchmarks/bench_online.py \
  --benchmark-only -q -s -p no:cacheprovider 2>&1 | tee "$OUTDIR/bench_online.txt" \
  | grep -A 30 "^online mixing on" || echo "bench_online: skipped or failed ($OUTDIR/bench_online.txt)"
echo "total: $(( $(date +%s) - start )) s; tests rc=$tests_rc"
exit $tests_rc
