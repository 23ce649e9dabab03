# Source on the lent GPU machine (no internet): installs the carried wheels of .gpu/whl (see
# ../shared/gpu/pack.sh) and every tokenleap package in editable mode. Idempotent.
python -m pip install -q --no-index --no-deps --target ~/site .gpu/whl/*.whl 2>&1 | grep -v WARNING
export PYTHONPATH=~/site PYTHONUNBUFFERED=1
python -c "import tokenleap_ngram, tokenleap_suffix, tokenleap_draft, tokenleap_eagle, tokenleap" 2>/dev/null || \
  python -m pip install -q --no-deps --no-build-isolation -e plugins -e core -e proposers-ngram \
    -e proposers-suffix -e proposers-draft -e proposers-eagle 2>&1 | grep -v WARNING
