"""N-gram (prompt lookup) proposer for tokenleap, method ``"ngram"``."""

from tokenleap_ngram.proposer import DEFAULT_PROMPT_LOOKUP, NgramConfig, NgramProposer, lookup_reference

__all__ = ["DEFAULT_PROMPT_LOOKUP", "NgramConfig", "NgramProposer", "lookup_reference"]
