"""EAGLE-3 drafts at temperature > 0 keep the target's output distribution (sampled drafts + their probabilities).

Test: for output positions 1, 2 and 3 (position 0 is sampled by the target alone), the token marginals of N
seeded samples with the head and N without it are compared with a chi-square test of homogeneity (tokens seen
fewer than 10 times in both runs together pooled into one cell). Three tests: Bonferroni, each at 0.01 / 3; the
test fails when any p-value is below that.
"""

from __future__ import annotations

from collections import Counter

import torch
from tokenleap import LLM, SamplingParams

from tests.helpers.eagle_heads import write_eagle3_head
from tests.helpers.tiny_models import TINY_VOCAB, make_tiny_checkpoint

N = 1500
POSITIONS = (1, 2, 3)
ALPHA = 0.01 / len(POSITIONS)


def _samples(llm, seed0):
    prompt = {"prompt_token_ids": [1, 40, 41, 42, 7]}
    params = [SamplingParams(max_tokens=4, temperature=0.8, seed=seed0 + i) for i in range(N)]
    return [list(o.outputs[0].token_ids) for o in llm.generate([prompt] * N, params, use_tqdm=False)]


def chi2_homogeneity_p(table: list[list[int]]) -> float:
    """p-value of Pearson's chi-square test of homogeneity of a 2 x C table (no continuity correction)."""
    t = torch.tensor(table, dtype=torch.float64)  # [2, C]
    expected = t.sum(1, keepdim=True) * t.sum(0, keepdim=True) / t.sum()
    stat = ((t - expected) ** 2 / expected).sum()
    df = t.shape[1] - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))  # chi2 sf


def _chi2_p(a: Counter, b: Counter) -> float:
    keys = sorted(set(a) | set(b))
    big = [t for t in keys if a[t] + b[t] >= 10]
    rest_a = sum(a[t] for t in keys if t not in big)
    rest_b = sum(b[t] for t in keys if t not in big)
    table = [[a[t] for t in big] + ([rest_a] if rest_a + rest_b else []),
             [b[t] for t in big] + ([rest_b] if rest_a + rest_b else [])]
    return chi2_homogeneity_p(table)


def test_chi2_p_value_matches_a_known_value():
    # 2 x 2 table [[10, 20], [20, 10]]: statistic 6.667 on 1 degree of freedom, p = 0.00982
    assert abs(chi2_homogeneity_p([[10, 20], [20, 10]]) - 0.009823) < 1e-5
    assert chi2_homogeneity_p([[50, 50], [50, 50]]) == 1.0


def test_sampled_output_distribution_is_the_targets(tmp_path):
    target = make_tiny_checkpoint(tmp_path, "llama", num_hidden_layers=4, initializer_range=0.3)
    head = write_eagle3_head(tmp_path / "head", 64, TINY_VOCAB, 200, seed=5)
    plain = _samples(LLM(model=str(target), max_num_seqs=64), 0)
    spec_llm = LLM(model=str(target), max_num_seqs=64,
                   speculative_config={"method": "eagle3", "model": str(head), "num_speculative_tokens": 3})
    spec = _samples(spec_llm, 10**6)
    counters = spec_llm.engine.counters.spec
    assert counters.num_draft_tokens > 0 and counters.num_accepted_tokens > 0  # drafts were made and some kept
    for pos in POSITIONS:
        p = _chi2_p(Counter(s[pos] for s in plain if len(s) > pos), Counter(s[pos] for s in spec if len(s) > pos))
        assert p > ALPHA, f"position {pos}: chi-square p={p:.2e} <= {ALPHA:.2e}"
