#!/usr/bin/env bash
# The project's test command (README and CI): lint, start the local Slurm the launcher tests need, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "no .venv: run bash scripts/install.sh first" >&2; exit 2; }
export TAKD_SLURM_BASE=${TAKD_SLURM_BASE:-/tmp/takd-slurm}
export TAKD_SLURM_CPUS=${TAKD_SLURM_CPUS:-4}  # more slots than cores: independent stages overlap their start-up
export PYTEST_TAKD_HOME=${PYTEST_TAKD_HOME:-$(mktemp -d /tmp/takd-test-home.XXXX)}
export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/ruff check .
bash slurm/local/up.sh
# shellcheck disable=SC1091
source "$TAKD_SLURM_BASE/env.sh"
set +e
"$PY" -m pytest -q "$@"
rc=$?
set -e
[ "${TAKD_KEEP_SLURM:-0}" = 1 ] || bash slurm/local/down.sh
exit $rc
