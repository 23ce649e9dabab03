"""Constrained greedy decoding pipelined on real CUDA graphs (run on the GPU machine:
`python -m pytest -q tests/gpu/test_constrained_ahead.py`).

A decode step of constrained greedy requests picks its token after the graph's forward under each request's
constraints (``engine.masked_decode``); with async scheduling the next step's forward is launched before that token
is on the host, fed it on the device. The tokens must be those of: async scheduling off, eager execution
(``enforce_eager``), and the synchronous sampler on the same graphs (``_masked_greedy`` patched off: the path from
before this mode). Constraints: a JSON schema (nested objects, enums), a regex, a choice, logit_bias,
allowed_token_ids, bad_words; batch 1 and 4; without and with n-gram speculation. On a tiny random model (float32,
where eager and graphed runs agree bit for bit) and on SmolLM2-135M-Instruct (its default dtype)."""

from __future__ import annotations

import gc
import importlib.util
from pathlib import Path

import pytest
import torch
from helpers.tiny_models import make_tiny_checkpoint
from test_masked_decode import NGRAM, TEXTS, check, kinds, run_with_aborts
from tokenleap import LLM, SamplingParams
from tokenleap.engine import model_runner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _benchmark():
    """tests/benchmarks/constrained_speed.py (its schema, prompts and validator)."""
    path = Path(__file__).parents[1] / "benchmarks" / "constrained_speed.py"
    spec = importlib.util.spec_from_file_location("constrained_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("constrained"), "llama", initializer_range=1.0))


@pytest.fixture(scope="module")
def params(tiny):
    from transformers import AutoTokenizer

    return kinds(AutoTokenizer.from_pretrained(tiny))


def release(llm) -> None:
    del llm
    gc.collect()
    torch.cuda.empty_cache()


def count_ahead(llm) -> list[bool]:
    """One entry per runner.launch: whether it was launched ahead of the step in flight."""
    noted, launch = [], llm.engine.runner.launch

    def noting(scheduled, ahead_of=None, q=1):
        noted.append(ahead_of is not None)
        return launch(scheduled, ahead_of, q)

    llm.engine.runner.launch = noting
    return noted


def run(llm, prompts, params_by_kind, chat=False) -> dict[str, list]:
    """kind -> RequestOutput per prompt."""
    go = llm.chat if chat else llm.generate
    return {kind: go(prompts, p, use_tqdm=False) for kind, p in params_by_kind.items()}


def ids(outs: dict[str, list]) -> dict[str, list[list[int]]]:
    return {kind: [list(o.outputs[0].token_ids) for o in got] for kind, got in outs.items()}


def modes(model: str, monkeypatch, prompts, params_by_kind, chat=False, eager=True, **kw) -> dict[str, dict]:
    """Token ids per mode (one engine on the GPU at a time); the pipelined mode's launch notes under "ahead"."""
    common = dict(model=model, device="cuda", disable_log_stats=True, **kw)
    got: dict[str, dict] = {}
    llm = LLM(**common)
    eng = llm.engine
    assert eng.cfg.async_scheduling and eng.runner.graphs is not None
    assert eng.runner.masked_decode == (eng.driver is None)  # with a proposer: the synchronous sampler
    ahead = count_ahead(llm)
    outs = run(llm, prompts, params_by_kind, chat)
    got["pipelined"], got["outputs"], got["ahead"] = ids(outs), outs, ahead
    got["draft_tokens"] = eng.counters.spec.num_draft_tokens
    got["device_drafting"] = eng.runner.graphs.drafter is not None
    del eng
    release(llm)
    llm = LLM(**common, async_scheduling=False)
    got["async off"] = ids(run(llm, prompts, params_by_kind, chat))
    release(llm)
    with monkeypatch.context() as m:  # graphed steps of constrained requests sample synchronously, as before
        m.setattr(model_runner, "_masked_greedy", lambda request: False)
        llm = LLM(**common)
        got["synchronous sampler"] = ids(run(llm, prompts, params_by_kind, chat))
        release(llm)
    if eager:
        llm = LLM(**common, enforce_eager=True)
        got["eager"] = ids(run(llm, prompts, params_by_kind, chat))
        release(llm)
    return got


@pytest.mark.parametrize("max_num_seqs", [1, 4])
def test_tiny_constrained_greedy_same_tokens_in_every_mode(tiny, params, monkeypatch, max_num_seqs):
    got = modes(tiny, monkeypatch, TEXTS, params, dtype="float32", max_num_seqs=max_num_seqs, max_model_len=256)
    for mode in ("async off", "synchronous sampler", "eager"):
        for kind in params:
            assert got[mode][kind] == got["pipelined"][kind], (mode, kind)
    for kind, outs in got["outputs"].items():
        for out in outs:
            check(kind, out, params)
    assert sum(got["ahead"]) > 0.4 * len(got["ahead"])  # most decode steps went ahead of the one before


def test_tiny_constrained_greedy_with_ngram(tiny, params, monkeypatch):
    """n-gram speculation (device drafting on for unconstrained steps; with a proposer every step of a constrained
    request samples synchronously, none launched ahead): the tokens of eager decoding without speculation, and
    drafts were verified."""
    common = dict(dtype="float32", max_num_seqs=4, max_model_len=256)
    spec = modes(tiny, monkeypatch, TEXTS, params, eager=False, speculative_config=NGRAM, **common)
    llm = LLM(model=tiny, device="cuda", disable_log_stats=True, enforce_eager=True, **common)
    want = ids(run(llm, TEXTS, params))
    release(llm)
    for mode in ("pipelined", "async off", "synchronous sampler"):
        for kind in params:
            assert spec[mode][kind] == want[kind], (mode, kind)
    assert spec["device_drafting"] and spec["draft_tokens"] > 0 and not any(spec["ahead"])


def test_tiny_abort_with_a_masked_step_in_flight(tiny, params):
    llm = LLM(model=tiny, device="cuda", dtype="float32", disable_log_stats=True, max_num_seqs=4, max_model_len=256)
    want = ids(run(llm, TEXTS, {"json": params["json"]}))["json"]
    eng = llm.engine
    reqs = run_with_aborts(llm, TEXTS, params["json"], "a")
    for r, w in zip(reqs, want):
        assert r.finish_reason == "abort" and r.output_token_ids == w[: r.num_output_tokens]
    assert eng.blocks.num_free_blocks == eng.blocks.num_usable_blocks
    assert ids(run(llm, TEXTS, {"json": params["json"]}))["json"] == want
    release(llm)


@pytest.mark.parametrize("max_num_seqs", [1, 4])
def test_smollm2_json_regex_choice(monkeypatch, max_num_seqs):
    """SmolLM2-135M-Instruct on the speed benchmark's prompts and schema (and a regex, a choice): pipelined,
    async off and the synchronous sampler on the same graphs give the same tokens; finished JSON validates."""
    bench = _benchmark()
    chats = bench.prompts(4)
    common = dict(temperature=0, max_tokens=160)
    by_kind = {"json": SamplingParams(**common, structured_outputs={"json": bench.SCHEMA}),
               "regex": SamplingParams(**common, structured_outputs={"regex": r"[A-Z][a-z]+ is [0-9]{2}\."}),
               "choice": SamplingParams(**common, structured_outputs={"choice": ["engineer", "doctor", "other"]})}
    got = modes("smollm2-135m-instruct", monkeypatch, chats, by_kind, chat=True, eager=False,
                max_num_seqs=max_num_seqs, max_model_len=2048)
    for mode in ("async off", "synchronous sampler"):
        assert got[mode] == got["pipelined"], mode
    done = {kind: [o.outputs[0].text for o in outs if o.outputs[0].finish_reason == "stop"]
            for kind, outs in got["outputs"].items()}  # (a JSON output may reach max_tokens: the benchmark's 14/16)
    assert len(done["json"]) >= 2 and all(bench.validates(t) for t in done["json"]), done["json"]
    assert len(done["choice"]) == 4 and all(t in ("engineer", "doctor", "other") for t in done["choice"])
    assert sum(got["ahead"]) > 0.4 * len(got["ahead"])


def test_smollm2_json_equals_eager(monkeypatch):
    """Against eager execution on SmolLM2 (bf16): compared on each prompt where eager and graphed runs agree without
    the constraint (bf16 kernels may part them), which must be most of them: a comparison, never a skip."""
    bench = _benchmark()
    chats = bench.prompts(4)
    by_kind = {"plain": SamplingParams(temperature=0, max_tokens=160),
               "json": SamplingParams(temperature=0, max_tokens=160, structured_outputs={"json": bench.SCHEMA})}
    got = modes("smollm2-135m-instruct", monkeypatch, chats, by_kind, chat=True, max_num_seqs=1, max_model_len=2048)
    same = [i for i in range(len(chats)) if got["eager"]["plain"][i] == got["pipelined"]["plain"][i]]
    assert len(same) >= 2, f"eager and graphed SmolLM2 agree without constraints on prompts {same} only"
    for i in same:
        assert got["eager"]["json"][i] == got["pipelined"]["json"][i], i
    assert got["synchronous sampler"]["json"] == got["pipelined"]["json"]
