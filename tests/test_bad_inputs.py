"""Bad inputs fail with the documented error before any work starts (naming the prompt index where
there is one), and leave the engine clean: no leftover requests, and the next generate() works."""

from __future__ import annotations

import re

import pydantic
import pytest
import torch
from tokenleap import LLM, SamplingParams

pytestmark = pytest.mark.usefixtures("torch_one_thread")

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
MAX_LEN = 128


@pytest.fixture(scope="module")
def folder(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def llm(folder):
    return LLM(model=str(folder), disable_log_stats=True, num_gpu_blocks_override=64, max_model_len=MAX_LEN)


@pytest.fixture(scope="module")
def baseline(llm):
    """Outputs of a good batch, to check that the engine still gives them after each error."""
    return [o.outputs[0].token_ids for o in llm.generate(GOOD, GREEDY, use_tqdm=False)]


GOOD = ["Hello world!", {"prompt_token_ids": [5, 6, 7, 8]}]


def ok(n: int = 3) -> dict:
    return {"prompt_token_ids": list(range(3, 3 + n))}


class NoWork:
    """Records the engine's counters; after an error nothing may have been added or computed."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        c = llm.engine.counters
        self.before = (c.prompt_tokens, c.num_steps, c.generation_tokens)

    def check(self, baseline) -> None:
        eng = self.llm.engine
        c = eng.counters
        assert (c.prompt_tokens, c.num_steps, c.generation_tokens) == self.before, "work started"
        assert not eng.has_unfinished_requests() and not eng.requests
        assert eng.blocks.num_free_blocks == eng.blocks.num_usable_blocks
        assert [o.outputs[0].token_ids for o in self.llm.generate(GOOD, GREEDY, use_tqdm=False)] == baseline


# ---- generate(): prompts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompts, params, exc, message",
    [
        (
            [ok(), ok(MAX_LEN)],
            GREEDY,
            ValueError,
            r"prompts\[1\] has 128 tokens; max_model_len=128 leaves no room",
        ),
        ([ok(), ok(), ok(MAX_LEN + 50)], GREEDY, ValueError, r"prompts\[2\] has 178 tokens"),
        ([ok(), ""], GREEDY, ValueError, r"prompts\[1\] is empty; a prompt needs at least one token"),
        ([{"prompt_token_ids": []}], GREEDY, ValueError, r"prompts\[0\] is empty"),
        (
            [ok(), {"prompt_token_ids": [5, 320, -1, 7]}],
            GREEDY,
            ValueError,
            r"prompts\[1\] has token id\(s\) \[320, -1\] outside the vocabulary \[0, 320\)",
        ),
        (
            [ok(), {"prompt_token_ids": [5, 1.5]}],
            GREEDY,
            TypeError,
            r"prompts\[1\]\.prompt_token_ids must be a list of ints",
        ),
        ([ok(), 42], GREEDY, TypeError, r"prompts\[1\]=42: expected a str"),
        ([ok(), {"text": "hi"}], GREEDY, TypeError, r"prompts\[1\]="),
        ([5, 6, 7], GREEDY, TypeError, r"flat list of ints; pass token ids as \{'prompt_token_ids'"),
        (
            [ok(), ok()],
            [GREEDY],
            ValueError,
            r"sampling_params is a list of 1 but there are 2 prompts; give one or 2",
        ),
        ([ok(), ok()], [GREEDY] * 3, ValueError, r"sampling_params is a list of 3 but there are 2 prompts"),
        (
            [ok(), ok()],
            [GREEDY, {"temperature": 0}],
            TypeError,
            r"sampling_params\[1\] is a dict, not SamplingParams",
        ),
        ([ok()], SamplingParams(logprobs=21), ValueError, r"logprobs=21 exceeds max_logprobs=20"),
        (
            [ok()],
            SamplingParams(stop_token_ids=[3, 400]),
            ValueError,
            r"stop_token_ids has id\(s\) \[400\] outside \[0, 320\)",
        ),
    ],
    ids=[
        "too-long",
        "too-long-index-2",
        "empty-text",
        "empty-ids",
        "ids-outside-vocab",
        "ids-not-ints",
        "not-a-prompt",
        "dict-without-prompt",
        "flat-int-list",
        "params-too-few",
        "params-too-many",
        "params-wrong-type",
        "logprobs-over-max",
        "stop-token-outside-vocab",
    ],
)
def test_generate_rejects_before_any_work(llm, baseline, prompts, params, exc, message):
    no_work = NoWork(llm)
    with pytest.raises(exc, match=message):
        llm.generate(prompts, params, use_tqdm=False)
    no_work.check(baseline)


def test_longest_allowed_prompt_works(llm):
    out = llm.generate(ok(MAX_LEN - 1), SamplingParams(temperature=0, max_tokens=10), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 1 and out.outputs[0].finish_reason == "length"


def test_priority_errors(llm, baseline, folder):
    no_work = NoWork(llm)
    with pytest.raises(ValueError, match=r"priority has 1 entries but there are 2 prompts"):
        llm.generate([ok(), ok()], GREEDY, priority=[1], use_tqdm=False)
    with pytest.raises(ValueError, match=r"priority needs LLM\(\.\.\., scheduling_policy='priority'\)"):
        llm.generate([ok(), ok()], GREEDY, priority=[0, 1], use_tqdm=False)
    no_work.check(baseline)


def test_chat_rejects_malformed_messages(llm, baseline):
    no_work = NoWork(llm)
    with pytest.raises(
        ValueError,
        match=r"messages\[1\] must be a non-empty list of \{'role': \.\.\., 'content': \.\.\.\} dicts",
    ):
        llm.chat([[{"role": "user", "content": "hi"}], [{"role": "user"}]], GREEDY, use_tqdm=False)
    no_work.check(baseline)


# ---- SamplingParams ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field, value",
    [
        ({"max_tokens": 0}, "max_tokens", "0"),
        ({"max_tokens": -3}, "max_tokens", "-3"),
        ({"temprature": 0.5}, "temprature", "0.5"),  # misspelt field
        ({"top_p": 1.5}, "top_p", "1.5"),
        ({"top_p": 0.0}, "top_p", "0.0"),
        ({"temperature": -0.1}, "temperature", "-0.1"),
        ({"top_k": -2}, "top_k", "-2"),
        ({"n": 0}, "n", "0"),
        ({"min_p": 1.2}, "min_p", "1.2"),
        ({"presence_penalty": 2.5}, "presence_penalty", "2.5"),
        ({"frequency_penalty": -3}, "frequency_penalty", "-3"),
        ({"repetition_penalty": 0}, "repetition_penalty", "0"),
        ({"logprobs": -1}, "logprobs", "-1"),
        ({"seed": "abc"}, "seed", "abc"),
    ],
)
def test_sampling_params_name_field_and_value(kwargs, field, value):
    with pytest.raises(pydantic.ValidationError) as info:
        SamplingParams(**kwargs)
    text = str(info.value)
    assert re.search(rf"^{field}\b", text, re.M), text
    assert f"input_value={value}" in text or f"input_value='{value}'" in text, text


def test_sampling_params_relations_and_assignment():
    with pytest.raises(pydantic.ValidationError, match=r"min_tokens=9 must be <= max_tokens=4"):
        SamplingParams(max_tokens=4, min_tokens=9)
    with pytest.raises(pydantic.ValidationError, match=r"stop=\['a', ''\]: stop strings must be non-empty"):
        SamplingParams(stop=["a", ""])
    sp = SamplingParams(max_tokens=5)
    with pytest.raises(pydantic.ValidationError, match=r"max_tokens"):
        sp.max_tokens = 0  # validated on assignment too
    assert sp.max_tokens == 5


@pytest.mark.parametrize(
    "kwargs, suggested",
    [
        ({"num_speculative_tokens": 5}, {"method": "ngram", "num_speculative_tokens": 5}),
        (
            {"speculative_model": "[ngram]", "num_speculative_tokens": 4, "ngram_prompt_lookup_max": 3},
            {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3},
        ),
        (
            {"speculative_model": "some/draft-model", "num_speculative_tokens": 3},
            {"method": "draft_model", "model": "some/draft-model", "num_speculative_tokens": 3},
        ),
        ({"speculative_sampling": True}, {"method": "ngram"}),
    ],
)
def test_sampling_params_speculative_keys_point_to_speculative_config(kwargs, suggested):
    with pytest.raises(pydantic.ValidationError) as info:
        SamplingParams(temperature=0, **kwargs)
    text = str(info.value)
    assert f"SamplingParams got speculative-decoding key(s) {sorted(kwargs)}" in text
    assert f"Use: LLM(model=..., speculative_config={suggested!r})" in text


def test_suggested_speculative_config_is_accepted_by_the_engine(folder):
    """The suggestion is not just text: the engine takes it and it means what the keys meant."""
    with pytest.raises(pydantic.ValidationError) as info:
        SamplingParams(speculative_model="[ngram]", num_speculative_tokens=4, ngram_prompt_lookup_max=3)
    cfg = eval(re.search(r"speculative_config=(\{.*\})\)", str(info.value)).group(1))  # a dict literal
    spec_llm = LLM(
        model=str(folder), disable_log_stats=True, num_gpu_blocks_override=32, speculative_config=cfg
    )
    spec = spec_llm.engine.spec_cfg
    assert spec.common.method == "ngram" and spec.num_speculative_tokens == 4
    assert spec.method_config.prompt_lookup_max == 3


# ---- LLM(...) ----------------------------------------------------------------------------------------


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load weights (or unpickle anything) fails the test: errors must come first."""
    from tokenleap.engine import setup

    def refuse(*a, **k):
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr(setup, "load_model", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def test_unknown_model_alias_or_path_lists_known_aliases(no_loading, tmp_path):
    for name in ["smollm2-135m", "no-such-model", str(tmp_path / "missing-folder")]:
        with pytest.raises(FileNotFoundError) as info:
            LLM(model=name, disable_log_stats=True)
        text = str(info.value)
        assert f"model {name!r} is neither an existing local path nor a known alias" in text
        assert "known aliases: ['smollm2-135m-instruct']" in text


@pytest.mark.parametrize(
    "kwargs, field, message",
    [
        ({"tensor_parallel_size": 0}, "tensor_parallel_size", r"input_value=0"),
        ({"dtype": "float64"}, "dtype", r"input_value='float64'"),
        ({"dtype": "int8"}, "dtype", r"'auto', 'float32', 'bfloat16', 'float16', 'float' or 'half'"),
        ({"block_size": 24}, "block_size", r"block_size=24 must be a power of two"),
        ({"max_num_seqs": 0}, "max_num_seqs", r"input_value=0"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization", r"input_value=1\.5"),
        ({"scheduling_policy": "lifo"}, "scheduling_policy", r"input_value='lifo'"),
        ({"trust_remote_code": True}, "trust_remote_code", r"never runs model-repo code"),
        ({"swap_space": 4}, "swap_space", r"Extra inputs are not permitted"),
    ],
)
def test_llm_config_errors_before_loading(no_loading, folder, kwargs, field, message):
    with pytest.raises(pydantic.ValidationError) as info:
        LLM(model=str(folder), disable_log_stats=True, **kwargs)
    text = str(info.value)
    assert re.search(rf"^{field}\b", text, re.M), text
    assert re.search(message, text), text


def test_pickled_checkpoints_are_read_only_through_the_restricted_unpickler(folder, tmp_path, monkeypatch):
    """A folder holding only pytorch_model.bin is read with ``torch.load(weights_only=True)`` only (never a full
    unpickle): a file that is no plain tensor pickle is refused with the reason and the way out; a .bin file passed
    directly is refused unread. (Real .bin checkpoints, and a pickle that would run code, are in
    test_loader.py.)"""
    import pickle

    real_load, calls = torch.load, []

    def restricted_only(*a, **k):
        calls.append(k.get("weights_only"))
        assert k.get("weights_only") is True, "torch.load without weights_only=True"
        return real_load(*a, **k)

    def refuse(*a, **k):
        raise AssertionError("a pickle was fully unpickled")

    monkeypatch.setattr(torch, "load", restricted_only)
    monkeypatch.setattr(pickle, "load", refuse)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (pickled / f).write_bytes((folder / f).read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ValueError, match=r"refusing to load .*pytorch_model\.bin: it is not a plain tensor pickle "
                                         r"\(torch\.load\(weights_only=True\) rejected it: .*\)\. Loading it fully "
                                         r"could run arbitrary code; convert it to safetensors"):
        LLM(model=str(pickled), disable_log_stats=True)
    with pytest.raises(ValueError, match=r"holds only pickled PyTorch weights \(pytorch_model\.bin\)\. Loading a "
                                         r"pickle can run arbitrary code, so tokenleap reads only a folder's "
                                         r"pytorch_model\.bin \(through torch's restricted unpickler\)"):
        LLM(model=str(pickled / "pytorch_model.bin"), disable_log_stats=True)  # a loose .bin file: refused
    assert calls == [True]


def test_invalid_dtype_in_loader_lists_allowed(folder):
    from tokenleap.model.loader import load_checkpoint

    with pytest.raises(
        ValueError, match=r"dtype='float64' is not supported; allowed values: \['auto', 'float32'"
    ):
        load_checkpoint(folder, dtype="float64")


# ---- an error in the middle of generate() ---------------------------------------------------------------


def test_error_during_generate_leaves_no_leftovers(llm, baseline, monkeypatch):
    runner = llm.engine.runner
    real = runner.launch
    calls = {"n": 0}

    def failing(scheduled, ahead_of=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected failure in step 3")
        return real(scheduled, ahead_of)

    monkeypatch.setattr(runner, "launch", failing)
    prompts = [ok(5), ok(40), "Hello world!", ok(9)]
    with pytest.raises(RuntimeError, match="injected failure in step 3"):
        llm.generate(prompts, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), use_tqdm=False)
    eng = llm.engine
    assert not eng.has_unfinished_requests() and not eng.requests
    assert eng.blocks.num_free_blocks == eng.blocks.num_usable_blocks
    assert eng.counters.finished["abort"] >= len(prompts)
    monkeypatch.setattr(runner, "launch", real)
    assert [o.outputs[0].token_ids for o in llm.generate(GOOD, GREEDY, use_tqdm=False)] == baseline
    # and the aborted prompts now run to completion
    outs = llm.generate(
        prompts, SamplingParams(temperature=0, max_tokens=20, ignore_eos=True), use_tqdm=False
    )
    assert all(len(o.outputs[0].token_ids) == 20 for o in outs)
