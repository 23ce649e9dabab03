#!/usr/bin/env bash
# Sets up .venv with every tokenleap package (editable) and the test tools. Idempotent.
#   TORCH_SPEC   torch requirement to install (default torch==2.13.0; on a machine without a local CPU
#                wheel, e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu")
#   VENV         where to create the environment (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
echo "[setup] installing $TORCH_SPEC"
# shellcheck disable=SC2086
"$PY" -m pip install -q --disable-pip-version-check $TORCH_SPEC
echo "[setup] installing tokenleap packages and test tools"
"$PY" -m pip install -q --disable-pip-version-check -c requirements/constraints.txt \
  -e plugins -e "core[serve]" -e proposers-ngram -e proposers-suffix -e proposers-draft -e proposers-eagle \
  pytest pytest-benchmark accelerate triton openai
echo "[setup] done: $("$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
