"""SuffixDecoding (``{"method": "suffix"}``, k = the tree depth by default) on SmolLM2-135M-Instruct: greedy
output equals the non-speculative output token for token at batch size 1 and 8, with drafts accepted."""

from __future__ import annotations

import pytest
from helpers.spec_prompts import chat_prompts, chat_token_ids, code_prompts, summary_prompts
from tokenleap import SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]  # see tests/conftest.py

GREEDY = SamplingParams(temperature=0.0, max_tokens=32)




@pytest.fixture(scope="module")
def prompts(smollm2_llm):
    convs = code_prompts()[:3] + summary_prompts()[:2] + chat_prompts()[2:3]
    return chat_token_ids(smollm2_llm.get_tokenizer(), convs)


@pytest.mark.parametrize("batch", [1, 8])
def test_suffix_greedy_equals_plain(smollm2_llm_factory, prompts, batch):
    outs = {}
    for method in (None, "suffix"):
        llm = smollm2_llm_factory(
            max_num_seqs=batch,
            kv_cache_memory_bytes=64 << 20,
            speculative_config={"method": method} if method else None,
        )
        outs[method] = llm.generate(prompts, GREEDY, use_tqdm=False)
        if method:
            assert llm.engine.num_speculative_tokens == 24
            stats = llm.engine.counters.spec
    for i, (s, p) in enumerate(zip(outs["suffix"], outs[None], strict=True)):
        assert s.outputs[0].token_ids == p.outputs[0].token_ids, (i, s.outputs[0].text, p.outputs[0].text)
        assert (s.outputs[0].text, s.outputs[0].finish_reason) == (
            p.outputs[0].text,
            p.outputs[0].finish_reason,
        )
    assert 0 < stats.num_accepted_tokens <= stats.num_draft_tokens
    assert stats.mean_acceptance_length > 1.2
    per_request = [o.metrics.spec_decode for o in outs["suffix"]]
    assert sum(r.num_accepted_tokens for r in per_request) == stats.num_accepted_tokens
    assert sum(r.num_accepted_tokens > 0 for r in per_request) >= 3
