#!/usr/bin/env bash
# GPU check of the sam3 backend: full-size random-weight SAM 3, text prompts at 1008 px in bf16, ms / image.
# Usage: scripts/gpu_check.sh [--images N] [--prompts "a,b,c"] [--dtype bf16|fp16|fp32]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" scripts/gpu_check.py "$@"
