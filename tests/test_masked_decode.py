"""Greedy decoding under constraints on the graphed path (run eagerly on CPU, ``DecodeGraphs(use_cuda_graphs=False)``):
decode steps pick their token with ``masked_argmax`` after the forward, stay in flight, and with async scheduling
the next step's forward is launched before the token is read back (fed on the device), its own constrained argmax
launched once that token advanced the matchers. None of that changes a token: the same as eager decoding (the
synchronous sampler), as without async scheduling, and as with n-gram speculation; the constraints hold.

``masked_argmax`` itself equals the sampler (``sample``) on the same rows bit for bit, and ``greedy_emitted`` (the
host's greedy acceptance after it) equals ``verify_greedy``."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
from test_padded_decode_path import count_launches, tiny_llm, token_ids
from tokenleap import SamplingParams
from tokenleap.sample.masked_argmax import byte_bits, masked_argmax
from tokenleap.sample.sampler import SamplingBatch, sample
from tokenleap.speculative.verify import greedy_emitted, verify_greedy
from tokenleap.structured.constraints import ids_bitmask

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PEAKED = 1.0  # peaked next-token distributions: the model, not only the constraint, decides the text
TEXTS = ["The quick brown fox jumps over", "the cat sat on the mat; the dog sat on", "def add(a, b):\n    return",
         "Hello world! How are you today?"]
SCHEMA = {  # nested objects and an enum, bounded so that a random model finishes
    "type": "object",
    "properties": {
        "kind": {"enum": ["cat", "dog", "fox"]},
        "owner": {"type": "object",
                  "properties": {"name": {"type": "string", "maxLength": 3}, "tier": {"enum": ["gold", "free"]}},
                  "required": ["name", "tier"], "additionalProperties": False},
        "age": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["kind", "owner", "age"], "additionalProperties": False,
}
REGEX = r"[a-z]{2,6}( [a-z]{2,6}){1,3}\."
CHOICES = ["yes", "no", "maybe later", "the dog"]
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 3}
KW = dict(max_model_len=256)


def kinds(tokenizer) -> dict[str, SamplingParams]:
    """One greedy SamplingParams per kind of constraint."""
    common = dict(temperature=0, max_tokens=120)
    the = tokenizer.encode(" the", add_special_tokens=False)
    return {
        "json": SamplingParams(**common, structured_outputs={"json": SCHEMA}),
        "regex": SamplingParams(**common, structured_outputs={"regex": REGEX}),
        "choice": SamplingParams(**common, structured_outputs={"choice": CHOICES}),
        "logit_bias": SamplingParams(**common, logit_bias={the[-1]: 4.0, 17: -50.0, 40: 2.5}),
        "allowed": SamplingParams(**common, allowed_token_ids=list(range(3, 120, 3)) + [2]),
        "bad_words": SamplingParams(**common, bad_words=["the", "on", "sat"]),
        "json+bias": SamplingParams(**common, structured_outputs={"json": SCHEMA}, logit_bias={40: 3.0, 41: -2.0}),
        # synchronous while the EOS ban lasts, then masked decode steps
        "min_tokens": SamplingParams(**common, logit_bias={40: 3.0}, bad_words=["the"], min_tokens=12),
    }


@pytest.fixture(scope="module")
def folder(tiny_checkpoint):
    return tiny_checkpoint("llama", initializer_range=PEAKED)


@pytest.fixture(scope="module")
def params(folder):
    from transformers import AutoTokenizer

    return kinds(AutoTokenizer.from_pretrained(str(folder)))


@pytest.fixture(scope="module")
def eager(folder, params):
    """Eager decoding (the synchronous sampler), batched: kind -> token ids per text."""
    llm = tiny_llm(folder, padded=False, **KW)
    return {kind: token_ids(llm.generate(TEXTS, p, use_tqdm=False)) for kind, p in params.items()}


def check(kind: str, out, params) -> None:
    """The constraint holds in the output."""
    text, ids = out.outputs[0].text, out.outputs[0].token_ids
    so = params[kind].structured_outputs
    if kind.startswith("json"):
        value = json.loads(text)
        assert value["kind"] in ("cat", "dog", "fox") and value["owner"]["tier"] in ("gold", "free")
    elif kind == "regex":
        assert re.fullmatch(REGEX, text), text
    elif kind == "choice":
        assert text in CHOICES
    elif kind == "allowed":
        assert set(ids) <= set(params[kind].allowed_token_ids)
    assert so is None or out.outputs[0].finish_reason == "stop"


@pytest.mark.parametrize("max_num_seqs", [1, 4])
def test_async_constrained_decode_equals_eager(folder, params, eager, max_num_seqs):
    """Every kind of constraint, each request alone and four at once: the tokens of eager decoding, and most
    decode steps were launched ahead of the one before."""
    llm = tiny_llm(folder, padded=True, max_num_seqs=max_num_seqs, **KW)
    counts = count_launches(llm)
    for kind, p in params.items():
        before = dict(counts)
        outs = llm.generate(TEXTS, p, use_tqdm=False)
        assert token_ids(outs) == eager[kind], kind
        for out in outs:
            check(kind, out, params)
        decode_steps = sum(len(t) - 1 for t in eager[kind]) / max_num_seqs
        assert counts["ahead"] - before["ahead"] > 0.4 * decode_steps, (kind, counts, before)
    assert llm.engine._in_flight is None
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_usable_blocks


def test_without_async_scheduling_and_with_ngram(folder, params, eager):
    """async_scheduling off (masked decode steps launched and waited for in turn) and n-gram speculation (with a
    proposer every step of a constrained request is verified synchronously by ``MaskedDecode.verify``, drafts or
    none: no masked steps launched ahead): the same tokens."""
    sync = tiny_llm(folder, padded=True, max_num_seqs=4, async_scheduling=False, **KW)
    counts = count_launches(sync)
    spec = tiny_llm(folder, padded=True, max_num_seqs=4, speculative_config=NGRAM, **KW)
    spec_counts = count_launches(spec)
    picks, verified = [], []
    pick = spec.engine.runner._pick_masked
    spec.engine.runner._pick_masked = lambda *args: picks.append(1) or pick(*args)
    masked = spec.engine.runner._masked_decode()
    verify = masked.verify
    masked.verify = lambda logits, scheduled, q: verified.append(q) or verify(logits, scheduled, q)
    for kind, p in params.items():
        assert token_ids(sync.generate(TEXTS, p, use_tqdm=False)) == eager[kind], kind
        assert token_ids(spec.generate(TEXTS, p, use_tqdm=False)) == eager[kind], kind
    assert counts["ahead"] == 0 and spec_counts["ahead"] == 0
    assert spec.engine.counters.spec.num_draft_tokens > 0 and not picks
    assert 1 in verified and NGRAM["num_speculative_tokens"] + 1 in verified, sorted(set(verified))


def test_mixed_batch_plain_and_constrained(folder, params, eager):
    """Plain greedy and constrained greedy requests in one batch: one masked step for all (plain rows unmasked),
    launched ahead; each request gets what it gets alone."""
    plain = SamplingParams(temperature=0, max_tokens=25, ignore_eos=True)
    want_plain = token_ids(tiny_llm(folder, padded=False, **KW).generate(TEXTS[:2], plain, use_tqdm=False))
    llm = tiny_llm(folder, padded=True, max_num_seqs=4, **KW)
    counts = count_launches(llm)
    outs = llm.generate(TEXTS[:2] * 2, [plain, plain, params["regex"], params["json"]], use_tqdm=False)
    assert token_ids(outs) == want_plain + [eager["regex"][0], eager["json"][1]]
    assert counts["ahead"] > 10


def run_with_aborts(llm, texts: list[str], sp: SamplingParams, prefix: str) -> list:
    """Generate ``texts`` with ``sp`` step by step: abort the second request at step 5 (a masked step launched ahead
    is in flight then), the others at step 9 (the step in flight is then dropped). Returns the requests."""
    eng = llm.engine
    reqs = [r for (r,) in llm._make_requests(texts, [sp] * len(texts), None, None,
                                               [f"{prefix}{i}" for i in range(len(texts))])]
    for r in reqs:
        eng.add_request(r)
    steps = 0
    while eng.has_unfinished_requests():
        eng.step()
        steps += 1
        if steps == 5:
            assert eng._in_flight is not None and eng._in_flight.masked
            eng.abort_request(f"{prefix}1")
        if steps == 9:
            for r in reqs:
                eng.abort_request(r.request_id)
            assert eng._in_flight is None
    return reqs


def test_abort_with_a_masked_step_in_flight(folder, params, eager):
    """Aborting a request while a masked step launched ahead is in flight: the others continue unchanged; aborting
    all of them drops the step (it is settled before the next launch), and the engine serves the next call."""
    llm = tiny_llm(folder, padded=True, max_num_seqs=4, **KW)
    eng = llm.engine
    reqs = run_with_aborts(llm, TEXTS, params["json"], "r")
    for req, want in zip(reqs, eager["json"]):  # what each got before it was aborted is its output's start
        assert req.finish_reason == "abort" and 4 < req.num_output_tokens and req.output_token_ids == want[
            : req.num_output_tokens]
    assert eng.blocks.num_free_blocks == eng.blocks.num_usable_blocks
    assert token_ids(llm.generate(TEXTS, params["json"], use_tqdm=False)) == eager["json"]


def test_masked_argmax_equals_sampler():
    """Random logits (bf16 and fp32), rows with and without bitmasks, bans and biases, ties: the sampler's tokens
    on a batch without drafts."""
    rng = random.Random(3)
    vocab = 101
    bits = byte_bits(torch.device("cpu"))
    for trial in range(80):
        n = rng.randint(1, 6)
        dtype = (torch.bfloat16, torch.float32)[trial % 2]
        logits = (torch.randn(n, vocab) * 3).round().to(dtype)  # rounded: many ties
        masks = torch.full((n, (vocab + 31) // 32), -1, dtype=torch.int32)
        mask_rows = [i for i in range(n) if rng.random() < 0.7]
        for i in mask_rows:
            masks[i] = torch.from_numpy(ids_bitmask(rng.sample(range(vocab), rng.randint(1, 30)), vocab))
        ban_rows = [rng.randrange(n) for _ in range(rng.randint(0, 5))]
        ban_ids = [rng.randrange(vocab) for _ in ban_rows]
        bias = [(i, t, rng.uniform(-5, 5)) for i in range(n) for t in rng.sample(range(vocab), rng.randint(0, 4))
                if trial % 4 < 2]  # half the trials without biases (the logits stay in their dtype)
        i64 = torch.int64
        batch = SamplingBatch(row_index=torch.arange(n)[:, None], draft_ids=torch.zeros(n, 0, dtype=i64),
                              num_drafts=torch.zeros(n, dtype=i64), draft_probs=None, rows=None, req_seeds=None,
                              req_streams=None, req_output_lens=None)
        bans = bias_t = bitmask = None
        if ban_rows:
            bans = batch.ban_rows, batch.ban_token_ids = torch.tensor(ban_rows), torch.tensor(ban_ids)
        if bias:
            bias_t = (torch.tensor([b[0] for b in bias]), torch.tensor([b[1] for b in bias]),
                      torch.tensor([b[2] for b in bias], dtype=torch.float32))
            batch.bias_rows, batch.bias_token_ids, batch.bias_values = bias_t
        if mask_rows:
            batch.mask_rows, batch.bitmask = torch.tensor(mask_rows), masks[mask_rows]
            bitmask = masks
        want, emitted = sample(logits.float(), batch)
        assert emitted.tolist() == [1] * n
        assert torch.equal(masked_argmax(logits, bitmask, bits, bans, bias_t), want[:, 0]), trial


def test_greedy_emitted_equals_verify_greedy():
    """Random targets and drafts (matching prefixes of every length, 0 to k drafts): the host rule emits what the
    batched device rule does."""
    rng = random.Random(5)
    for _ in range(300):
        k = rng.randint(0, 5)
        d = rng.randint(0, k)
        targets = [rng.randrange(4) for _ in range(k + 1)]
        drafts = [t if rng.random() < 0.7 else rng.randrange(4) for t in targets[:d]]
        tokens, emitted = verify_greedy(torch.tensor([targets]), torch.tensor([drafts + [0] * (k - d)]),
                                        torch.tensor([d]))
        assert greedy_emitted(targets, drafts) == tokens[0, : int(emitted[0])].tolist(), (targets, drafts)
