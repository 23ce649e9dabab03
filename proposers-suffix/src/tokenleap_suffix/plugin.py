"""Entry point of the ``suffix`` method (group ``tokenleap.proposers``)."""

from __future__ import annotations

from tokenleap_plugins import ProposerContext, ProposerSpec, hookimpl

from tokenleap_suffix.config import SuffixConfig
from tokenleap_suffix.proposer import SuffixProposer


def build(config: SuffixConfig | None, context: ProposerContext) -> SuffixProposer:
    return SuffixProposer(config if config is not None else SuffixConfig(), context)


def default_num_speculative_tokens(config: SuffixConfig | None) -> int:
    """num_speculative_tokens defaults to the tree depth, as in vLLM."""
    return (config if config is not None else SuffixConfig()).suffix_decoding_max_tree_depth


SPEC = ProposerSpec(
    method="suffix",
    build=build,
    config_model=SuffixConfig,
    default_num_speculative_tokens=default_num_speculative_tokens,
    description="SuffixDecoding: drafts from suffix tries over the prompt, the output so far and "
    "earlier requests' outputs (model-free)",
)


@hookimpl
def tokenleap_register_proposers():
    return [SPEC]
