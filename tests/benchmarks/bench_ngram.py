"""Cost of the ngram proposer per request per step at an 8k-token context (CPU, pure Python).

    python -m pytest tests/benchmarks/bench_ngram.py --benchmark-only

One round = one engine step for one request: on_verified with the step's new tokens (1 + accepted), then
propose for the next step (k = 5). Not collected by the default test run (file name is not test_*.py).
"""

import random

import pytest
from tokenleap_ngram import NgramProposer
from tokenleap_ngram.plugin import SPEC
from tokenleap_plugins import ProposeBatch, ProposerContext, ProposeRequest, VerifiedRequest, validate_method_config

CONTEXT = 8192
ROUNDS = 2000


def text_like(rng, length, vocab=32000):
    toks = [rng.randrange(vocab) for _ in range(64)]
    while len(toks) < length:  # fresh text with copied spans, like code edits or quoted documents
        if rng.random() < 0.5:
            start = rng.randrange(len(toks) - 32)
            toks += toks[start : start + rng.randint(8, 32)]
        else:
            toks += [rng.randrange(vocab) for _ in range(rng.randint(4, 40))]
    return toks[:length]


@pytest.mark.parametrize("keys", [{}, {"prompt_lookup_min": 1, "prompt_lookup_max": 5}], ids=["5-5", "1-5"])
def test_ngram_step_8k(benchmark, keys):
    rng = random.Random(0)
    tokens = text_like(rng, CONTEXT + 4 * ROUNDS + 16)
    config = validate_method_config(SPEC, keys, common_keys=set())
    proposer = NgramProposer(config, ProposerContext(num_speculative_tokens=5, vocab_size=32000,
                                                     max_model_len=1 << 16, seed=0))
    proposer.on_request_added("r", tokens[:CONTEXT])
    engine_tokens = tokens[:CONTEXT]  # the engine's own list, passed as the read-only view (no copy)
    state = {"drafted": 0}

    def step():
        pos = len(engine_tokens)
        new = tokens[pos : pos + 1 + (pos % 3)]  # 1 to 3 tokens per step
        engine_tokens.extend(new)
        proposer.on_verified([VerifiedRequest("r", 0, 0, new)])
        drafts = proposer.propose(ProposeBatch([ProposeRequest("r", engine_tokens, CONTEXT, 5)]))
        state["drafted"] += bool(drafts.token_ids[0])

    benchmark.pedantic(step, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["context_tokens"] = CONTEXT
    benchmark.extra_info["steps_with_drafts"] = state["drafted"]


def test_ngram_add_8k_prompt(benchmark):
    """One-off cost of indexing an 8k-token prompt (on_request_added), defaults (5, 5)."""
    tokens = text_like(random.Random(1), CONTEXT)
    config = validate_method_config(SPEC, {}, common_keys=set())
    proposer = NgramProposer(config, ProposerContext(num_speculative_tokens=5, vocab_size=32000,
                                                     max_model_len=1 << 16, seed=0))
    benchmark.pedantic(proposer.on_request_added, args=("r", tokens), rounds=50, iterations=1)
