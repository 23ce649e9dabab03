#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the test suite on CPU. Extra arguments go to pytest.
#   --latest   instead: install the newest releases of triton, transformers, tokenizers and the other
#              dependencies into .venv-latest (no version pins) and run the kernel tests (Triton interpreter)
#              and the parity tests against them. torch stays $LATEST_TORCH_SPEC (default torch==2.13.0, the
#              CPU build; LATEST_TORCH_SPEC=torch takes PyPI's newest, a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" != "--latest" ]; then
  bash scripts/setup.sh
  exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
fi
shift
VENV=.venv-latest
LATEST_TORCH_SPEC=${LATEST_TORCH_SPEC:-torch==2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[latest] creating $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar on)
echo "[latest] torch: $LATEST_TORCH_SPEC"
# shellcheck disable=SC2086
"${PIP[@]}" $LATEST_TORCH_SPEC
echo "[latest] the newest releases of the other dependencies (torch held where it is)"
TORCH_PIN="$VENV/torch-pin.txt"
"$PY" -c 'import torch; print("torch==" + torch.__version__)' > "$TORCH_PIN"
"${PIP[@]}" --upgrade -c "$TORCH_PIN" triton transformers tokenizers safetensors gguf pydantic \
  structlog tqdm numpy pluggy jinja2 accelerate pytest
"${PIP[@]}" --no-deps -e plugins -e core -e proposers-ngram -e proposers-suffix
"$PY" -c 'import torch, triton, transformers, tokenizers
print("[latest] torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__,
      "tokenizers", tokenizers.__version__)'
exec "$PY" -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py tests/test_triton_linear.py \
  tests/test_greedy_head.py tests/test_device_ngram.py tests/test_triton_draft_inputs.py tests/test_triton_model.py \
  tests/test_engine_parity.py "$@"
