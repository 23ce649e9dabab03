"""What the speculative-decoding tests compare between engines: counters, and a model whose drafts get accepted."""

from __future__ import annotations

import torch


def spec_totals(llm) -> tuple[int, int, list[int]]:
    """(draft tokens, accepted tokens, accepted per draft position) the engine counted so far."""
    spec = llm.engine.counters.spec
    return spec.num_draft_tokens, spec.num_accepted_tokens, list(spec.num_accepted_tokens_per_pos)


def without_attention_output(llm):
    """Zero every o_proj of ``llm``'s model: a tiny random model then decodes like a bigram table and soon
    cycles, so prompt lookup's drafts are often accepted (several tokens per step, partial acceptance early
    on). Returns ``llm``."""
    with torch.no_grad():
        for name, p in llm.engine.model.named_parameters():
            if "o_proj" in name:
                p.zero_()
    return llm
