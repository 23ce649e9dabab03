"""SuffixDecoding proposer for tokenleap (method ``suffix``). Model-free; imports no torch."""

from tokenleap_suffix.config import SuffixConfig
from tokenleap_suffix.proposer import SuffixProposer
from tokenleap_suffix.speculate import best_draft
from tokenleap_suffix.tree import SuffixTrie

__all__ = ["SuffixConfig", "SuffixProposer", "SuffixTrie", "best_draft"]
