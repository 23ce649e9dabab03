"""Sampling controls under speculation, at engine level on a tiny random model: seeded sampling gives the same
tokens with or without speculation, whatever the proposer, batch or call; greedy output with structured
outputs / logit_bias / allowed_token_ids / bad_words is the same with ngram, suffix and an oracle proposer as
without speculation, and the constraint holds; a constrained sampling distribution is the target's.

Proposers: ``ngram`` and ``suffix`` as a user would configure them, the oracle of test_spec_decode (knows
the plain output, drafts a run of right tokens then a wrong and random ones, and checks that exactly the right
ones were accepted), which makes sure long runs are accepted and that drafts leaving the grammar are rejected,
and the model-based ``draft_model`` (the target as its own draft: long accepted runs, drafts that know nothing of
the constraint) and ``eagle3`` (a random EAGLE-3 head), each on its default (coupled) verification.
"""

from __future__ import annotations

import json
import random
import re

import pytest
from test_spec_decode import OraclePlugin
from tokenleap import LLM, SamplingParams
from tokenleap_plugins import ProposerManager

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # see tests/conftest.py

PEAKED = 1.0  # weights' init range: peaked next-token distributions, so sampled text repeats and n-grams match
KW = dict(max_model_len=256, disable_log_stats=True, kv_cache_memory_bytes=8 << 20)
SPECS = {
    "ngram": {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, "prompt_lookup_max": 3},
    "suffix": {"method": "suffix", "num_speculative_tokens": 6, "suffix_decoding_max_tree_depth": 12},
    "oracle": {"method": "oracle", "num_speculative_tokens": 4},
    "draft_model": {"method": "draft_model", "num_speculative_tokens": 3},  # "model": the target, set below
    "eagle3": {"method": "eagle3", "num_speculative_tokens": 3},  # "model": a random head, set below
}
MODEL_FREE = ("ngram", "suffix", "oracle")
TEXTS = [
    "The quick brown fox jumps over", "the cat sat on the mat; the dog sat on", "def add(a, b):\n    return",
    "Hello world! How are you today?", "Paged attention stores keys", "Speculative decoding drafts tokens and",
]
SCHEMA = {  # nested objects and enums; bounded so that a random model finishes
    "type": "object",
    "properties": {
        "kind": {"enum": ["cat", "dog", "fox"]},
        "owner": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 3}, "tier": {"enum": ["gold", "free"]}},
            "required": ["name", "tier"], "additionalProperties": False,
        },
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
    },
    "required": ["kind", "owner", "age", "ok"], "additionalProperties": False,
}
REGEX = r"[a-z]{2,6}( [a-z]{2,6}){1,3}\."
CHOICES = ["yes", "no", "maybe later", "the dog"]


@pytest.fixture(scope="module")
def engines(tiny_checkpoint, tmp_path_factory):
    """plain and one LLM per proposer over the same tiny model; ``truth`` feeds the oracle."""
    from helpers.eagle_heads import write_eagle3_head
    from helpers.tiny_models import TINY_VOCAB

    folder = str(tiny_checkpoint("llama", initializer_range=PEAKED))
    head = write_eagle3_head(tmp_path_factory.mktemp("eagle3-head"), 64, TINY_VOCAB, 128, seed=5)
    models = {"draft_model": folder, "eagle3": str(head)}
    truth: dict[tuple, list[int]] = {}
    manager = ProposerManager(env={})
    manager.register(OraclePlugin(truth))
    llms = {"plain": LLM(folder, **KW)}
    for name, spec in SPECS.items():
        spec = {**spec, "model": models[name]} if name in models else spec
        llms[name] = LLM(folder, speculative_config=spec, proposer_manager=manager, **KW)
    return llms, truth


def tokens(outs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outs]


def accepted(llm) -> tuple[int, int]:
    s = llm.engine.counters.spec
    return s.num_accepted_tokens, s.num_draft_tokens


def check_same_with_speculation(engines, prompts, params, what: str) -> list[list[int]]:
    """Plain output; each proposer's output equals it (batched); returns the plain tokens."""
    llms, truth = engines
    want = llms["plain"].generate(prompts, params, use_tqdm=False)
    truth.clear()
    truth.update({tuple(o.prompt_token_ids): list(o.outputs[0].token_ids) for o in want})
    for name in SPECS:
        got = llms[name].generate(prompts, params, use_tqdm=False)
        assert tokens(got) == tokens(want), (what, name)
        assert [o.outputs[0].finish_reason for o in got] == [o.outputs[0].finish_reason for o in want], (what, name)
    return tokens(want)


def test_seeded_sampling_does_not_depend_on_speculation(engines):
    """The same seeded requests (temperature 0.7 and 1.0, top_p) give the same tokens without speculation and
    with ngram, suffix and the oracle: batched, each alone, and called again (suffix then drafts from a global
    tree holding the earlier outputs); drafts were accepted and rejected."""
    llms, truth = engines
    params = [SamplingParams(temperature=(0.7, 1.0)[i % 2], top_p=0.95, seed=1000 + i, max_tokens=40)
              for i in range(len(TEXTS))]
    before = {name: accepted(llms[name]) for name in SPECS}
    want = check_same_with_speculation(engines, TEXTS, params, "seeded")
    assert len({tuple(t) for t in want}) == len(want)  # different seeds, different samples
    for name in ("ngram", "suffix"):
        llm = llms[name]
        for i in (0, 3, 5):
            assert tokens(llm.generate(TEXTS[i], params[i], use_tqdm=False)) == [want[i]], (name, i)
        assert tokens(llm.generate(TEXTS, params, use_tqdm=False)) == want, name
        assert tokens(llm.generate(TEXTS[::-1], params[::-1], use_tqdm=False)) == want[::-1], name
    for name in MODEL_FREE:
        acc, drafts = (a - b for a, b in zip(accepted(llms[name]), before[name]))
        assert 0 < acc < drafts, (name, acc, drafts)
    # the target drafting for itself with the target's own noise (coupled): every draft is the target's draw
    acc, drafts = (a - b for a, b in zip(accepted(llms["draft_model"]), before["draft_model"]))
    assert drafts > 50 and acc == drafts, (acc, drafts)
    assert accepted(llms["oracle"])[0] - before["oracle"][0] > 50
    # without a seed the same request samples differently, so the equality above is the seed's doing
    unseeded = [p.model_copy(update={"seed": None}) for p in params]
    assert tokens(llms["plain"].generate(TEXTS, unseeded, use_tqdm=False)) != want


@pytest.mark.parametrize("kind", ["json", "regex", "choice"])
def test_greedy_structured_outputs_equal_plain(engines, kind):
    so = {"json": {"json": SCHEMA}, "regex": {"regex": REGEX}, "choice": {"choice": CHOICES}}[kind]
    params = SamplingParams(temperature=0, max_tokens=120, structured_outputs=so)
    llms, _ = engines
    before = accepted(llms["oracle"])[0]
    check_same_with_speculation(engines, TEXTS, params, kind)
    assert accepted(llms["oracle"])[0] > before
    outs = llms["plain"].generate(TEXTS, params, use_tqdm=False)
    texts = [o.outputs[0].text for o in outs]
    assert all(o.outputs[0].finish_reason == "stop" for o in outs), texts
    for text in texts:
        if kind == "json":
            value = json.loads(text)
            assert set(value) == {"kind", "owner", "age", "ok"} and value["kind"] in ("cat", "dog", "fox"), text
            assert value["owner"]["tier"] in ("gold", "free") and len(value["owner"]["name"]) <= 3, text
            assert 0 <= value["age"] <= 99 and isinstance(value["ok"], bool), text
        elif kind == "regex":
            assert re.fullmatch(REGEX, text), text
        else:
            assert text in CHOICES, text
    if kind != "choice":
        assert len(set(texts)) > 1  # the model, not the constraint alone, decides the text


def test_greedy_token_controls_equal_plain(engines):
    """logit_bias, allowed_token_ids and bad_words: identical with speculation, and visibly in force."""
    llms, _ = engines
    tok = llms["plain"].get_tokenizer()
    free = tokens(llms["plain"].generate(TEXTS, SamplingParams(temperature=0, max_tokens=40), use_tqdm=False))
    counts: dict[int, int] = {}
    for t in (t for out in free for t in out):
        counts[t] = counts.get(t, 0) + 1
    frequent = sorted(counts, key=lambda t: -counts[t])[:3]
    rare = next(t for t in range(100, 300) if t not in counts)

    bias = {frequent[0]: -100.0, frequent[1]: -100.0, frequent[2]: -100.0, rare: 4.0}
    out = check_same_with_speculation(engines, TEXTS, SamplingParams(temperature=0, max_tokens=40, logit_bias=bias),
                                      "logit_bias")
    assert not any(t in frequent for o in out for t in o) and any(rare in o for o in out) and out != free

    allowed = list(range(40, 90))
    out = check_same_with_speculation(
        engines, TEXTS, SamplingParams(temperature=0, max_tokens=40, allowed_token_ids=allowed), "allowed")
    assert all(40 <= t < 90 for o in out for t in o)

    # bad words: a frequent single-token word and a two-token word seen in the free outputs
    pairs = [(a, b) for o in free for a, b in zip(o, o[1:]) if a not in frequent]
    two = next(tok.decode(list(p)) for p in pairs if tok.encode(tok.decode(list(p)), add_special_tokens=False)
               == list(p) and tok.decode(list(p)).strip() == tok.decode(list(p)))
    one = tok.decode([frequent[0]])
    params = SamplingParams(temperature=0, max_tokens=40, bad_words=[one, two])
    out = check_same_with_speculation(engines, TEXTS, params, "bad_words")
    from tokenleap.structured.constraints import bad_word_sequences

    seqs = bad_word_sequences([one, two], tok)
    assert any(len(s) == 2 for s in seqs)
    for o in out:
        for seq in seqs:
            assert all(o[i : i + len(seq)] != seq for i in range(len(o))), (seq, o)
    assert out != free


def test_bad_inputs_fail_before_work_starts(engines):
    llms, _ = engines
    llm = llms["ngram"]
    cases = {
        "structured_outputs.json": SamplingParams(structured_outputs={"json": {"type": "objekt"}}),
        "structured_outputs.regex": SamplingParams(structured_outputs={"regex": "(ab"}),
        "structured_outputs.grammar": SamplingParams(structured_outputs={"grammar": "root ::= missing"}),
        "sampling_params.logit_bias has token id(s) [320]": SamplingParams(logit_bias={5: 1.0, 320: 2.0}),
        "sampling_params.allowed_token_ids has token id(s) [-1]": SamplingParams(allowed_token_ids=[3, -1]),
    }
    for field, params in cases.items():
        with pytest.raises(ValueError, match=re.escape(field)) as info:
            llm.generate(["ok", "fine"], [SamplingParams(), params], use_tqdm=False)
        assert not llm.engine.requests and not llm.engine.has_unfinished_requests(), field
        if "token id" in field:
            assert "outside the vocabulary [0, 320)" in str(info.value)
    for bad, field in (({"choice": []}, "structured_outputs.choice"), ({"regex": "a", "json": {}}, "exactly one"),
                       ({"jsn": {}}, "unknown key(s) ['jsn']")):
        with pytest.raises(ValueError, match=re.escape(field)):
            SamplingParams(structured_outputs=bad)
    with pytest.raises(ValueError, match="allowed_token_ids"):
        SamplingParams(allowed_token_ids=[])
    with pytest.raises(ValueError, match="use structured_outputs"):
        SamplingParams(guided_decoding={"regex": "a+"})
    with pytest.raises(ValueError, match="ignore_eos"):
        SamplingParams(structured_outputs={"regex": "a+"}, ignore_eos=True)


def test_constrained_sampling_distribution_with_speculation(tiny_checkpoint, tiny_hf):
    """Regex-constrained sampling at temperature 1: the distribution of whole outputs (token sequences) from
    2000 seeded requests with speculation (a drafter proposing random letters, so drafts are both accepted
    and refused by the grammar), and from 2000 without it (other seeds), against the exact distribution from
    transformers' model under the grammar's masks. Pearson chi-square, cells with expected count < 5 merged;
    each of the 2 tests at alpha = 1e-4 / 2 (Bonferroni); total variation < 0.1 (noise ~0.04)."""
    import torch
    from test_verifier import chi_square
    from tokenleap.sample.logits import unpack_bitmask
    from tokenleap.structured.constraints import StepRows, for_request
    from tokenleap_plugins import Drafts, ProposerSpec, hookimpl
    from tokenleap_plugins.testing import EchoProposer

    regex = "[abcd]{3}"
    folder = tiny_checkpoint("llama")
    hf = tiny_hf("llama")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    letters = [tok.convert_tokens_to_ids(c) for c in "abcd"]
    base = SamplingParams(temperature=1.0, max_tokens=8, structured_outputs={"regex": regex})
    prompt = tok.encode("the cat sat on", add_special_tokens=False)

    # exact distribution over whole outputs: walk the grammar, masking transformers' logits
    def exact(prefix: list[int], prob: float, out: dict) -> None:
        c = for_request(base, tok, 320, [2])
        c.accept(prefix)
        rows = StepRows()
        c.add_rows(rows, 0, prefix, [])
        allowed = unpack_bitmask(rows.masks[0], 320)[0]
        with torch.no_grad():
            logits = hf(torch.tensor([prompt + prefix])).logits[0, -1].float()
        p = torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1)
        for t in allowed.nonzero()[:, 0].tolist():
            if t == 2:
                out[tuple(prefix + [2])] = prob * p[t].item()
            else:
                exact(prefix + [t], prob * p[t].item(), out)

    dist: dict[tuple, float] = {}
    exact([], 1.0, dist)
    assert abs(sum(dist.values()) - 1) < 1e-4 and len(dist) >= 20
    cells = sorted(dist)

    class LetterDrafter(EchoProposer):
        def propose(self, batch):
            out = []
            for r in batch.requests:
                rng = random.Random(f"{r.request_id}/{len(r.token_ids)}")
                out.append([rng.choice(letters + [2, 40]) for _ in range(min(3, r.max_num_drafts))])
            return Drafts(out)

    class Plugin:
        @hookimpl
        def tokenleap_register_proposers(self):
            return [ProposerSpec(method="letters", build=lambda cfg, ctx: LetterDrafter(cfg, ctx))]

    manager = ProposerManager(env={})
    manager.register(Plugin())
    common = dict(KW, max_num_seqs=256)
    n = 2000
    runs = {
        "speculative": (LLM(str(folder), speculative_config={"method": "letters", "num_speculative_tokens": 3},
                            proposer_manager=manager, **common), 0),
        "plain": (LLM(str(folder), **common), n),
    }
    for name, (llm, offset) in runs.items():
        params = [base.model_copy(update={"seed": offset + i}) for i in range(n)]
        outs = llm.generate([{"prompt_token_ids": prompt}] * n, params, use_tqdm=False)
        counts = torch.zeros(len(cells))
        for o in outs:
            assert re.fullmatch(regex, o.outputs[0].text), o.outputs[0].text
            counts[cells.index(tuple(o.outputs[0].token_ids))] += 1
        stat, pv, tv = chi_square(counts, torch.tensor([dist[c] for c in cells]))
        assert pv > 1e-4 / 2 and tv < 0.1, (name, stat, pv, tv)
        if name == "speculative":
            acc, drafts = accepted(llm)
            assert 0.03 * drafts < acc < 0.5 * drafts, (acc, drafts)  # accepted and refused (token 40 always)


@pytest.mark.parametrize("mode", ["auto", "coupled", "rejection"])
def test_draft_verification_of_drafts_with_probabilities(tiny_checkpoint, mode):
    """Drafts with probabilities (test_verifier's SampledDraftProposer, its own rng): seeded requests equal plain
    sampling under "auto" and "coupled"; "rejection" verifies by rejection sampling, so some differ."""
    from test_verifier import SampledDraftPlugin

    folder = str(tiny_checkpoint("llama", initializer_range=PEAKED))
    manager = ProposerManager(env={})
    manager.register(SampledDraftPlugin())
    params = [SamplingParams(temperature=1.0, seed=50 + i, max_tokens=24) for i in range(len(TEXTS))]
    want = tokens(LLM(folder, **KW).generate(TEXTS, params, use_tqdm=False))
    llm = LLM(folder, speculative_config={"method": "sampled_draft", "num_speculative_tokens": 2,
                                          "draft_verification": mode}, proposer_manager=manager, **KW)
    got = tokens(llm.generate(TEXTS, params, use_tqdm=False))
    assert llm.engine.counters.spec.num_draft_tokens > 100
    if mode == "rejection":
        assert got != want
    else:
        assert got == want
    with pytest.raises(ValueError, match="draft_verification"):
        LLM(folder, speculative_config={"method": "sampled_draft", "draft_verification": "maybe"},
            proposer_manager=manager, **KW)


@pytest.mark.slow
def test_smollm2_json_schema_with_ngram_equals_plain(smollm2_llm_factory):
    """SmolLM2 with its GGUF tokenizer (a byte-level vocabulary behind a composite decoder): a JSON answer that
    quotes the prompt, greedy, the same with ngram as without, drafts accepted, and it parses."""
    schema = {"type": "object", "properties": {
        "function": {"type": "string", "maxLength": 20}, "language": {"enum": ["python", "javascript"]},
        "arguments": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 4}},
        "required": ["function", "language", "arguments"], "additionalProperties": False}
    code = "def area(width, height):\n    return width * height\n"
    example = 'For example: {"function": "f", "language": "python", "arguments": ["x", "y"]}'
    convs = [[{"role": "user", "content": f"Describe this function as JSON. {example}\n{code}"}],
             [{"role": "user", "content": f"Give JSON for the JavaScript function square(n). {example}"}]]
    params = SamplingParams(temperature=0, max_tokens=64, structured_outputs={"json": schema})
    outs = {}
    for method in (None, "ngram"):
        spec = ({"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, "prompt_lookup_max": 3}
                if method else None)
        llm = smollm2_llm_factory(kv_cache_memory_bytes=64 << 20, speculative_config=spec)
        outs[method] = llm.chat(convs, params, use_tqdm=False)
    assert tokens(outs["ngram"]) == tokens(outs[None])
    assert llm.engine.counters.spec.num_accepted_tokens > 5
    for o in outs[None]:
        value = json.loads(o.outputs[0].text)
        assert list(value) == ["function", "language", "arguments"], value  # the schema's order
        assert value["language"] in ("python", "javascript") and len(value["arguments"]) <= 4, value
        assert all(isinstance(a, str) and len(a) <= 10 for a in value["arguments"]), value
