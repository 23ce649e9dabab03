"""A quiet, fast start: light commands import neither torch nor transformers; LLM does not log stats unless asked."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tokenleap
from tokenleap.cli import build_parser, make_llm

from tests.helpers.tiny_models import make_tiny_checkpoint

SMALL_KV = ["--device", "cpu", "--kv-cache-memory-bytes", str(8 << 20)]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("code", [
    "import tokenleap",
    "import tokenleap.cli",
    "from tokenleap.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    "from tokenleap.cli import main\nmain(['generate', '--help'])",
])
def test_light_paths_import_no_torch(code):
    loaded = _modules_after(code)
    assert "torch" not in loaded and "transformers" not in loaded


def test_public_names_load_on_use():
    from tokenleap import LLM, SamplingParams, TokensPrompt

    assert LLM.__name__ == "LLM" and SamplingParams(max_tokens=3).max_tokens == 3
    assert TokensPrompt(prompt_token_ids=[1])["prompt_token_ids"] == [1]
    assert {"LLM", "SamplingParams"} <= set(dir(tokenleap))
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        tokenleap.NoSuchThing  # noqa: B018


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("quiet"), "llama"))


def test_llm_does_not_log_stats_by_default(tiny):
    from tokenleap import LLM

    assert LLM(model=tiny, device="cpu", kv_cache_memory_bytes=8 << 20).config.disable_log_stats is True
    on = LLM(model=tiny, device="cpu", kv_cache_memory_bytes=8 << 20, disable_log_stats=False)
    assert on.config.disable_log_stats is False


@pytest.mark.parametrize(("flags", "disabled"), [([], True), (["--log-stats"], False)])
def test_cli_log_stats_flag(tiny, flags, disabled):
    args = build_parser().parse_args(["generate", "--model", tiny, *SMALL_KV, *flags])
    assert make_llm(args).config.disable_log_stats is disabled
