"""tokenleap-ngram: drafts equal a brute-force scan, config messages, conformance, discovery."""

import random

import pytest
from tokenleap_ngram import NgramConfig, NgramProposer, lookup_reference
from tokenleap_ngram.plugin import SPEC
from tokenleap_plugins import (
    ProposeBatch,
    ProposerConfigError,
    ProposerContext,
    ProposeRequest,
    ProposerManager,
    UnknownMethodError,
    VerifiedRequest,
    validate_method_config,
)
from tokenleap_plugins.testing import run_conformance


def make(lo=None, hi=None, k=4):
    keys = {n: v for n, v in (("prompt_lookup_min", lo), ("prompt_lookup_max", hi)) if v is not None}
    config = validate_method_config(SPEC, keys, common_keys=set())
    return NgramProposer(config, ProposerContext(num_speculative_tokens=k, vocab_size=100, max_model_len=1 << 16,
                                                 seed=0))


def propose_one(proposer, rid, tokens, max_num_drafts):
    batch = ProposeBatch([ProposeRequest(rid, tuple(tokens), 1, max_num_drafts)])
    return list(proposer.propose(batch).token_ids[0])


def stream(rng, length, vocab, repetitive):
    toks = [rng.randrange(vocab) for _ in range(3)]
    while len(toks) < length:
        if repetitive and rng.random() < 0.6:
            back = rng.randint(1, len(toks))
            toks += [toks[-back] for _ in range(rng.randint(2, 12))]  # extends periodically from `back`
        else:
            toks += [rng.randrange(vocab) for _ in range(rng.randint(1, 6))]
    return toks[:length]


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force_reference(seed):
    rng = random.Random(seed)
    lo = rng.randint(1, 4)
    hi = rng.randint(lo, 6)
    k = rng.randint(1, 6)
    repetitive = seed % 2 == 0
    tokens = stream(rng, 300, rng.choice((2, 5, 50)), repetitive)
    proposer = make(lo, hi, k)
    pos = rng.randint(0, 20)
    proposer.on_request_added("r", tokens[:pos])
    drafted = 0
    while pos < len(tokens):
        m = rng.randint(0, k + 2)
        got = propose_one(proposer, "r", tokens[:pos], m)
        assert got == lookup_reference(tokens[:pos], min(m, k), lo, hi), (pos, m)
        drafted += len(got)
        step = tokens[pos : pos + rng.randint(1, 4)]
        proposer.on_verified([VerifiedRequest("r", 0, 0, step)])
        pos += len(step)
    assert drafted > 0 or not repetitive


def test_resync_when_engine_tokens_disagree():
    rng = random.Random(7)
    tokens = stream(rng, 400, 6, True)
    proposer = make(2, 4, 5)
    proposer.on_request_added("r", tokens[:50])
    # no on_verified: the engine's token_ids run ahead, the proposer appends the tail
    for pos in (60, 61, 200, 400):
        assert propose_one(proposer, "r", tokens[:pos], 5) == lookup_reference(tokens[:pos], 5, 2, 4)
    # shorter than what we hold (a rollback): rebuilt from token_ids
    assert propose_one(proposer, "r", tokens[:120], 5) == lookup_reference(tokens[:120], 5, 2, 4)
    # a request never added is served too
    assert propose_one(proposer, "unknown", tokens[:90], 3) == lookup_reference(tokens[:90], 3, 2, 4)


def test_edge_cases():
    p = make(2, 2, k=3)
    assert propose_one(p, "a", [5, 6, 7, 5, 6], 3) == [7, 5, 6]  # most recent earlier (5, 6), not the suffix
    assert propose_one(p, "b", [5, 6, 7, 8], 3) == []  # the suffix itself is no match
    assert propose_one(p, "c", [1, 1, 1, 1], 3) == [1]  # match ending at 3: only one token follows it
    assert propose_one(p, "d", [5, 6], 3) == []  # too short for an earlier 2-gram
    assert propose_one(p, "e", [5, 6, 7, 5, 6], 0) == []  # max_num_drafts = 0
    assert propose_one(p, "f", [5, 6, 7, 9, 5, 6], 9) == [7, 9, 5]  # capped at k = 3
    q = make(1, 3, k=4)  # largest n first: 3-gram (2, 3, 4) beats the more recent 1-gram 4
    assert propose_one(q, "g", [2, 3, 4, 10, 11, 4, 12, 2, 3, 4], 2) == [10, 11]
    assert propose_one(q, "h", [9, 4, 8, 4], 2) == [8, 4]  # falls back to n = 1
    r = make(1, 1, k=2)
    assert propose_one(r, "i", [3], 2) == []
    assert propose_one(r, "j", [3, 3], 2) == [3]


def test_finish_and_abort_drop_state():
    p = make(1, 2)
    p.on_request_added("a", [1, 2, 1])
    p.on_request_added("b", [1, 2, 1])
    p.on_request_finished("a", [1, 2, 1])
    p.on_request_aborted("b")
    p.on_request_aborted("never-added")  # ignored
    assert p._requests == {}


@pytest.mark.parametrize(
    ("keys", "expected"),
    [({}, (5, 5)), ({"prompt_lookup_max": 3}, (3, 3)), ({"prompt_lookup_min": 2}, (2, 2)),
     ({"prompt_lookup_min": 1, "prompt_lookup_max": 4}, (1, 4))],
)
def test_config_defaults_follow_vllm(keys, expected):
    config = validate_method_config(SPEC, keys, common_keys=set())
    assert isinstance(config, NgramConfig)
    assert (config.prompt_lookup_min, config.prompt_lookup_max) == expected


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"prompt_lookup_maxx": 3}, r"unknown key\(s\) \['prompt_lookup_maxx'\] for method 'ngram'; allowed keys: "
                                    r"\['method', 'num_speculative_tokens', 'prompt_lookup_max', 'prompt_lookup_min'\]"),
        ({"prompt_lookup_min": 6, "prompt_lookup_max": 3},
         r"speculative_config\.prompt_lookup_max=3: Value error, prompt_lookup_max=3 must be >= prompt_lookup_min=6"),
        ({"prompt_lookup_min": 0}, r"speculative_config\.prompt_lookup_min=0: Input should be greater than or equal to 1"),
        ({"prompt_lookup_max": -2}, r"speculative_config\.prompt_lookup_max=-2: Input should be greater than or equal to 1"),
        ({"prompt_lookup_max": "many"}, r"speculative_config\.prompt_lookup_max='many': Input should be a valid integer"),
    ],
)
def test_config_errors_name_key_and_value(keys, message):
    with pytest.raises(ProposerConfigError, match=message):
        validate_method_config(SPEC, keys, common_keys={"method", "num_speculative_tokens"})


def test_conformance():
    run_conformance(SPEC)  # the defaults (5, 5), 10k requests in the memory check


@pytest.mark.parametrize("config", [{"prompt_lookup_min": 1, "prompt_lookup_max": 3}, {"prompt_lookup_max": 2}])
def test_conformance_other_configs(config):
    run_conformance(SPEC, config, num_speculative_tokens=3, seed=1, num_memory_requests=2000)


def test_discovered_through_entry_point():
    manager = ProposerManager(env={})
    assert manager.load("ngram") is SPEC
    [installed] = [m for m in manager.installed_methods() if m.method == "ngram"]
    assert installed.package == "tokenleap-ngram"
    assert ProposerManager(env={"TOKENLEAP_PLUGINS": "suffix, ngram"}).load("ngram") is SPEC


def test_allowlist_refuses_ngram():
    manager = ProposerManager(env={"TOKENLEAP_PLUGINS": "suffix"})
    with pytest.raises(UnknownMethodError, match=r"'ngram' is installed but not allowed: TOKENLEAP_PLUGINS='suffix'"):
        manager.load("ngram")
