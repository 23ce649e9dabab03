#!/usr/bin/env bash
# Sets up .venv with every tokenleap package (editable) and the test tools. Idempotent: when nothing that decides
# what gets installed changed since the last successful run (the stamp below), it returns at once.
#   TORCH_SPEC   torch requirement to install (default torch==2.13.0; on a machine without a local CPU
#                wheel, e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu")
#   VENV         where to create the environment (default .venv)
#   SETUP_QUIET  1: pip without its progress output
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
STAMP="$VENV/.tokenleap-setup"
want=$(cat scripts/setup.sh requirements/constraints.txt ./*/pyproject.toml | sha256sum | cut -c1-16)-$(echo "$TORCH_SPEC" | sha256sum | cut -c1-8)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
PIP_FLAGS=(--disable-pip-version-check --progress-bar on)
if [ "${SETUP_QUIET:-0}" = 1 ]; then PIP_FLAGS=(--disable-pip-version-check -q); fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
echo "[setup] 1/3 pip, setuptools, wheel"
"$PY" -m pip install "${PIP_FLAGS[@]}" --upgrade pip setuptools wheel
echo "[setup] 2/3 $TORCH_SPEC (the largest download)"
# shellcheck disable=SC2086
"$PY" -m pip install "${PIP_FLAGS[@]}" $TORCH_SPEC
echo "[setup] 3/3 tokenleap packages and test tools"
"$PY" -m pip install "${PIP_FLAGS[@]}" -c requirements/constraints.txt \
  -e plugins -e "core[serve]" -e proposers-ngram -e proposers-suffix -e proposers-draft -e proposers-eagle \
  pytest pytest-benchmark accelerate triton openai
echo "$want" > "$STAMP"
echo "[setup] done: $("$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
