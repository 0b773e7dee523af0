#!/usr/bin/env bash
# The test suite: builds/refreshes the environment (tools/setup_env.sh), then runs pytest.
# `--fast` runs the quick lane: the tests not marked `slow` or `gpu` (the adapter core, the
# configs, one end-to-end train + test through tools/). Other arguments go to pytest (without
# a path it collects pytest.ini's testpaths, tests/), e.g.
# `bash tools/run_tests.sh --fast -x` or `bash tools/run_tests.sh tests/test_adapters`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
args=()
for arg in "$@"; do
  if [ "$arg" = --fast ]; then
    args+=(-m 'not slow and not gpu')
  else
    args+=("$arg")
  fi
done
bash "$ROOT/tools/setup_env.sh"
cd "$ROOT"
set +e
"${FLORA_MM_VENV:-$ROOT/.venv}/bin/python" -m pytest ${args[@]+"${args[@]}"}
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "run_tests: pytest collected no tests; treating that as a failure" >&2
  exit 1
fi
exit "$rc"
