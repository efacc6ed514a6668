#!/usr/bin/env bash
# Install takd on an Alliance cluster login node: the Alliance wheelhouse first (`--no-index`, wheels built for the
# cluster: torch with its CUDA, arrow for datasets, ...), PyPI only for what the wheelhouse lacks, without
# dependencies so that PyPI never replaces a wheelhouse package (e.g. a CUDA torch by a generic one).
#   module load StdEnv/2023 python/3.11 gcc arrow
#   bash scripts/install_alliance.sh ~/venvs/takd
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-$HOME/venvs/takd}
[ -x "$VENV/bin/python" ] || virtualenv --no-download "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install --no-index --upgrade pip
missing=()
while read -r line; do
  req=${line%%#*}; req=$(echo "$req" | xargs); [ -n "$req" ] || continue
  name=$(echo "$req" | sed -E 's/[<>=!~ ].*//')
  if avail_wheels "$name" 2>/dev/null | grep -qi "^$name\b\|^ *$name "; then
    "$PIP" install --no-index "$req"
  else
    missing+=("$req")
  fi
done < requirements.txt
if [ ${#missing[@]} -gt 0 ]; then
  echo "not in the Alliance wheelhouse, from PyPI without dependencies: ${missing[*]}"
  "$PIP" install --no-deps "${missing[@]}"
fi
"$PIP" install --no-deps -e .
"$VENV/bin/python" -c "import torch, transformers, deepspeed, submitit; print('takd stack:', torch.__version__, transformers.__version__, deepspeed.__version__)"
