"""The ``suffix`` method's own keys of ``speculative_config`` (names and defaults as vLLM has them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SuffixConfig(BaseModel):
    """Validated settings of SuffixDecoding. Unknown keys are rejected (``extra="forbid"``).

    suffix_decoding_max_tree_depth: depth of both tries; bounds match length + draft length together.
        Also the default ``num_speculative_tokens``.
    suffix_decoding_max_cached_requests: finished requests whose outputs stay in the global trie
        (FIFO eviction beyond it); 0 disables the global trie.
    suffix_decoding_max_spec_factor: a match of length m drafts at most ``floor(factor * m)`` tokens.
    suffix_decoding_min_token_prob: drafting stops once the path probability (product of the
        per-token continuation frequencies) would fall below this.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    suffix_decoding_max_tree_depth: int = Field(24, ge=1)
    suffix_decoding_max_cached_requests: int = Field(10000, ge=0)
    suffix_decoding_max_spec_factor: float = Field(1.0, gt=0)
    suffix_decoding_min_token_prob: float = Field(0.1, ge=0.0, le=1.0)
