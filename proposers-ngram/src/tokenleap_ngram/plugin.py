"""The entry point of method ``"ngram"`` (group ``tokenleap.proposers``)."""

from tokenleap_plugins import ProposerSpec, hookimpl

from tokenleap_ngram.proposer import NgramConfig, NgramProposer

SPEC = ProposerSpec(
    method="ngram",
    build=NgramProposer,
    config_model=NgramConfig,
    default_num_speculative_tokens=None,  # as in vLLM: num_speculative_tokens is required
    description="prompt lookup: copy what followed the most recent earlier match of the last n tokens",
)


@hookimpl
def tokenleap_register_proposers():
    return [SPEC]
