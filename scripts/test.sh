#!/usr/bin/env bash
# Run the test suite. Without a GPU, Triton kernels run under the interpreter (TRITON_INTERPRET=1)
# and the compiled library must be present (SUPERMIX_REQUIRE_COMPILED=1), so nothing is skipped
# silently. Extra arguments go to pytest; test paths among them replace the default tests/.
set -euo pipefail
cd "$(dirname "$0")/.."
export SUPERMIX_REQUIRE_COMPILED=${SUPERMIX_REQUIRE_COMPILED:-1}
if ! .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  export TRITON_INTERPRET=1
fi
.venv/bin/python -c "import supermix_ext, json; print('backends:', json.dumps(supermix_ext.backend_info()))"
# Under CI every test is listed by name, so the log shows the CMake and Triton tests ran.
verbosity=-q; [ -n "${CI:-}" ] && verbosity=-v
# Test files or folders among the arguments replace the default "tests" (bash scripts/test.sh
# tests/test_solver.py runs that file alone); other arguments (-k, -x, ...) go to pytest as well.
targets=(tests)
for arg in "$@"; do
  case "$arg" in tests/*|benchmarks/*) targets=() ;; esac
done
exec .venv/bin/python -m pytest "${targets[@]}" "$verbosity" -rs -p no:cacheprovider "$@"
