#!/usr/bin/env bash
# The test suite: builds/refreshes the environment (tools/setup_env.sh), then runs pytest.
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh tests/test_adapters -x`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
set +e
"${FLORA_MM_VENV:-$ROOT/.venv}/bin/python" -m pytest tests "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "run_tests: pytest collected no tests; treating that as a failure" >&2
  exit 1
fi
exit "$rc"
