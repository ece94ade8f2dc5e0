#!/usr/bin/env bash
# Run the DToP test suite: creates/updates .venv/ first (tools/setup_env.sh, fast when
# it is up to date), then runs pytest inside it. Extra arguments go to pytest, e.g.
#   bash tools/run_tests.sh -m "not slow"      # skip the few end-to-end tests
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
export PYTHONHASHSEED=0 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "$ROOT/.venv/bin/python" -m pytest tests "$@"
