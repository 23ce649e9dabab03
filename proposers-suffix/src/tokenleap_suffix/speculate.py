"""Choosing a draft from matched trie nodes (SuffixDecoding's greedy path and scoring).

For a match of length m (the node of the path ``context[-m:]``), the candidate is the greedy path
below that node: repeatedly take the most frequent child (ties: smallest token id), multiplying the
path probability by ``count(child) / total(parent)``; stop before the probability would drop below
``min_token_prob``, at a node with no continuation, or at ``limit(m) = min(floor(spec_factor * m),
max_drafts, max_depth - m)`` tokens. Its score is the sum of the path probabilities after each token
(the expected number of accepted tokens when the probabilities are right).

The draft is the candidate with the highest score over every match length and every source (the
request's trie, then the global trie). Ties go to the earlier candidate in that order: the request's
trie before the global one, a longer match before a shorter one. A score of 0 means no drafts.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenleap_suffix.tree import SuffixTrie


def best_draft(
    sources: Sequence[tuple[SuffixTrie, Sequence[int]]],
    *,
    max_depth: int,
    max_drafts: int,
    spec_factor: float,
    min_token_prob: float,
) -> list[int]:
    """The best-scoring draft. ``sources[s] = (trie, nodes)``; ``nodes[m - 1]`` matches the last m tokens."""
    best_score = 0.0
    best: list[int] = []
    if max_drafts <= 0:
        return best
    for trie, nodes in sources:
        tok, count, total_of, best_of = trie.token, trie.count, trie.total, trie.best
        for m in range(len(nodes), 0, -1):
            limit = min(int(spec_factor * m), max_drafts, max_depth - m)
            if limit <= best_score:  # score <= number of tokens <= limit: cannot win
                continue
            node = nodes[m - 1]
            prob = 1.0
            score = 0.0
            draft: list[int] = []
            while len(draft) < limit:
                total = total_of[node]
                if total == 0:
                    break
                child = best_of[node]
                if child < 0:
                    child = trie.best_child(node)
                prob *= count[child] / total
                if prob < min_token_prob:
                    break
                draft.append(tok[child])
                score += prob
                node = child
            if score > best_score:
                best_score = score
                best = draft
    return best
