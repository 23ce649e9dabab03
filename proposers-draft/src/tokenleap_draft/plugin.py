"""The entry point of method ``"draft_model"`` (group ``tokenleap.proposers``)."""

from tokenleap_plugins import ProposerSpec, hookimpl

from tokenleap_draft.config import DraftModelConfig
from tokenleap_draft.proposer import DraftModelProposer, preflight

SPEC = ProposerSpec(
    method="draft_model",
    build=DraftModelProposer,
    config_model=DraftModelConfig,
    default_num_speculative_tokens=None,  # as in vLLM: num_speculative_tokens is required
    description="a smaller model with the target's tokenizer drafts k tokens on its own paged KV cache",
    common_keys=frozenset({"model", "max_model_len", "draft_tensor_parallel_size"}),
    requires_model=True,
    preflight=preflight,
)


@hookimpl
def tokenleap_register_proposers():
    return [SPEC]
