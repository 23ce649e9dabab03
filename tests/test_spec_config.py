"""Every bad speculative configuration fails with its documented message, before any weights are read.

``LLM(...)`` gets a real tiny checkpoint, but the weight loader and the model resolver are replaced by
functions that fail loudly: a configuration error must be raised before either runs. A valid
configuration under the same patches reaches the loader (the sentinel works), and loads for real without
them.
"""

from __future__ import annotations

import re

import pytest
from tokenleap import LLM, SamplingParams
from tokenleap.engine import engine as engine_mod
from tokenleap.engine import setup
from tokenleap_plugins import ProposerConfigError, UnknownMethodError


class LoadedWeights(AssertionError):
    pass


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise LoadedWeights("the engine started resolving/loading the model before rejecting the config")

    monkeypatch.setattr(engine_mod, "resolve_model", refuse)
    monkeypatch.setattr(setup, "load_model", refuse)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return str(tiny_checkpoint("llama"))


def make(model: str, spec: dict | None, **kwargs):
    return LLM(
        model, speculative_config=spec, disable_log_stats=True, kv_cache_memory_bytes=4 << 20, **kwargs
    )


BAD = [
    # unknown keys are named, with the allowed ones
    (
        {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_maxx": 3},
        ProposerConfigError,
        r"speculative_config: unknown key\(s\) \['prompt_lookup_maxx'\] for method 'ngram'; "
        r"allowed keys: \[.*"
        r"'num_speculative_tokens'.*'prompt_lookup_max', 'prompt_lookup_min'\]",
    ),
    (
        {"method": "ngram", "num_speculative_token": 3, "lookahead": 2},
        ProposerConfigError,
        r"unknown key\(s\) \['lookahead', 'num_speculative_token'\] for method 'ngram'",
    ),
    (
        {"method": "suffix", "suffix_decoding_max_depth": 8},
        ProposerConfigError,
        r"unknown key\(s\) \['suffix_decoding_max_depth'\] for method 'suffix'; allowed keys: \[.*"
        r"'suffix_decoding_max_tree_depth'",
    ),
    # values out of range
    (
        {"method": "ngram", "num_speculative_tokens": 0},
        ValueError,
        r"speculative_config\.num_speculative_tokens=0: Input should be greater than or equal to 1",
    ),
    (
        {"method": "ngram", "num_speculative_tokens": 100},
        ValueError,
        r"speculative_config\.num_speculative_tokens=100: Input should be less than or equal to 32",
    ),
    (
        {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 4, "prompt_lookup_max": 2},
        ProposerConfigError,
        r"speculative_config\.prompt_lookup_max=2: Value error, prompt_lookup_max=2 must be >= "
        r"prompt_lookup_min=4",
    ),
    (
        {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 0},
        ProposerConfigError,
        r"speculative_config\.prompt_lookup_min=0: Input should be greater than or equal to 1",
    ),
    (
        {"method": "suffix", "suffix_decoding_min_token_prob": 1.5},
        ProposerConfigError,
        r"speculative_config\.suffix_decoding_min_token_prob=1\.5: Input should be less than or equal to 1",
    ),
    # a required key, and a missing method
    (
        {"method": "ngram"},
        ValueError,
        r"speculative_config\.num_speculative_tokens is required for method 'ngram' \(an int from 1 to 32\)",
    ),
    (
        {"num_speculative_tokens": 3},
        ValueError,
        r"speculative_config=\{'num_speculative_tokens': 3\} has no 'method'; e\.g\. \{'method': 'ngram'",
    ),
    ({"method": ""}, ValueError, r"speculative_config\.method='': String should have at least 1 character"),
    # unknown methods list what is installed
    (
        {"method": "medusa", "num_speculative_tokens": 3},
        UnknownMethodError,
        r"speculative_config\.method='medusa' is not an installed speculative method; "
        r"installed: \[.*'ngram'.*"
        r"'suffix'.*\]\. Methods of the tokenleap repository: \['draft_model', 'eagle', 'eagle3', 'mlp', "
        r"'mlp_speculator', 'mtp', 'ngram', 'suffix'\]",
    ),
    # common keys that mean nothing to the method are named, with the ones it takes
    (
        {"method": "ngram", "num_speculative_tokens": 3, "parallel_drafting": True},
        ValueError,
        r"speculative_config: key\(s\) \['parallel_drafting'\] mean nothing to method 'ngram' \(given "
        r"parallel_drafting=True\); its common keys are \['disable_by_batch_size', 'draft_verification', 'method', "
        r"'num_speculative_tokens'\]",
    ),
    (
        {"method": "suffix", "model": "/no/such/file", "max_model_len": 64},
        ValueError,
        r"key\(s\) \['max_model_len', 'model'\] mean nothing to method 'suffix' \(given max_model_len=64, "
        r"model='/no/such/file'\)",
    ),
]


@pytest.mark.parametrize(("spec", "error", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_config_fails_before_loading(no_loading, tiny, spec, error, message):
    with pytest.raises(error, match=message):
        make(tiny, spec)


def test_eagle_not_installed_suggests_the_package(no_loading, tiny, monkeypatch):
    from importlib import metadata

    installed = [ep.name for ep in metadata.entry_points(group="tokenleap.proposers")]
    if "eagle" in installed:  # hide it, as on a machine without tokenleap-eagle
        from tokenleap_plugins import ProposerManager

        monkeypatch.setattr(
            ProposerManager,
            "_entry_points",
            lambda self: [
                ep
                for ep in metadata.entry_points(group="tokenleap.proposers")
                if ep.name not in ("eagle", "eagle3")
            ],
        )
    with pytest.raises(UnknownMethodError) as info:
        make(tiny, {"method": "eagle", "num_speculative_tokens": 3})
    message = str(info.value)
    assert "speculative_config.method='eagle' is not an installed speculative method" in message
    assert re.search(r"installed: \[.*'ngram'.*'suffix'.*\]", message), message
    assert message.endswith("It is provided by the folder proposers-eagle/ of the tokenleap repository: from a clone, "
                            "pip install ./proposers-eagle")


def test_engine_settings_are_checked_too(no_loading, tiny):
    with pytest.raises(ValueError, match=r"speculative_config\s+Input should be a valid dictionary"):
        make(tiny, "ngram")


def test_sentinel_catches_loading(no_loading, tiny):
    """The patched loader does fire for a valid configuration, so the tests above prove 'before loading'."""
    with pytest.raises(LoadedWeights):
        make(tiny, {"method": "ngram", "num_speculative_tokens": 3})


def test_valid_config_loads(tiny):
    llm = make(tiny, {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 2})
    assert llm.engine.num_speculative_tokens == 3 and llm.engine.driver.method == "ngram"
    suffix = make(tiny, {"method": "suffix"})  # num_speculative_tokens defaults to the tree depth
    assert suffix.engine.num_speculative_tokens == 24


# -- speculative keys on SamplingParams ------------------------------------------------------------
@pytest.mark.parametrize(
    ("keys", "equivalent"),
    [
        (
            {"speculative_model": "[ngram]", "num_speculative_tokens": 5, "ngram_prompt_lookup_max": 4},
            "{'method': 'ngram', 'num_speculative_tokens': 5, 'prompt_lookup_max': 4}",
        ),
        (
            {"speculative_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "num_speculative_tokens": 3},
            "{'method': 'draft_model', 'model': 'HuggingFaceTB/SmolLM2-135M-Instruct', "
            "'num_speculative_tokens': 3}",
        ),
        ({"speculative_sampling": True}, "{'method': 'ngram'}"),
        ({"speculative_ratio": 0.5}, "{'method': 'ngram'}"),  # not a draft count: left out
        (
            {"speculative_model": "some/draft", "speculative_ratio": 4},
            "{'method': 'draft_model', 'model': 'some/draft', 'num_speculative_tokens': 4}",
        ),
        (
            {"speculative_model": "[ngram]", "speculative_ratio": 4, "num_speculative_tokens": 3},
            "{'method': 'ngram', 'num_speculative_tokens': 3}",
        ),
    ],
)
def test_speculative_keys_on_sampling_params(keys, equivalent):
    with pytest.raises(ValueError) as info:
        SamplingParams(**keys)
    message = str(info.value)
    named = sorted(keys)
    assert f"SamplingParams got speculative-decoding key(s) {named}" in message
    assert "speculation is configured once on the engine" in message
    assert f"Use: LLM(model=..., speculative_config={equivalent})" in message
