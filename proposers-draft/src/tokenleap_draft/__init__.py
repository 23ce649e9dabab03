"""Method ``draft_model`` for tokenleap: a smaller model with the target's tokenizer drafts k tokens
autoregressively on its own paged KV cache (the engine's block tables)."""

from tokenleap_draft.config import DraftModelConfig
from tokenleap_draft.proposer import DraftModelProposer

__all__ = ["DraftModelConfig", "DraftModelProposer"]
