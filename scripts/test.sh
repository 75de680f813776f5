#!/usr/bin/env bash
# Run the test suite. Without a GPU, Triton kernels run under the interpreter (TRITON_INTERPRET=1)
# and the compiled library must be present (SUPERMIX_REQUIRE_COMPILED=1), so nothing is skipped
# silently. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export SUPERMIX_REQUIRE_COMPILED=${SUPERMIX_REQUIRE_COMPILED:-1}
if ! .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  export TRITON_INTERPRET=1
fi
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
