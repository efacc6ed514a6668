#!/usr/bin/env bash
# Create ./.venv with takd and its stack. On a CPU-only machine torch goes in first from the local CPU build
# (torch==2.13.0), so that no requirement can resolve `torch` to a multi-GB CUDA build.
# On a cluster, prefer: module load python; virtualenv --no-download; pip install --no-index -r requirements.txt
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -U pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/pip install -q "torch>=2.4"
  else
    .venv/bin/pip install -q "torch==2.13.0"
  fi
fi
# DS_BUILD_OPS=0: DeepSpeed compiles nothing at install time (its ops are JIT-built only if used)
DS_BUILD_OPS=0 .venv/bin/pip install -q -r requirements.txt -r requirements-dev.txt
.venv/bin/pip install -q --no-deps -e .
echo "installed: $(.venv/bin/python -c 'import torch, transformers, deepspeed; print("torch", torch.__version__, "transformers", transformers.__version__, "deepspeed", deepspeed.__version__)' 2>/dev/null)"
