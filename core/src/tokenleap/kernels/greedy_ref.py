"""A graphed step's greedy head (torch reference): the argmax of every logits row, then greedy verification.

For ``b`` requests of ``q`` rows each (a decode step: q = 1; a verify step: the last token and q - 1 draft
slots), with the step's input ids laid out as the graphs lay them out (row ``i * q + j + 1`` holds request i's
draft j) and ``num_drafts`` [b] real drafts per request:

    greedy [b, q + 2] int64: argmax per row (torch.argmax: the first index of the maximum), then the number
                             of tokens the step emits (drafts accepted while equal to the argmax, plus one),
                             then num_drafts

``speculative.verify.verify_greedy`` is the rule. The graph's head also keeps copies for steps launched behind this
one: ``last_tokens`` [b] (the argmax of a 1-token step's row) and ``last_verify`` [b, w] (the argmax in its first
q columns, the emitted count and num_drafts in its last two). The Triton version is
``triton_greedy.greedy_head``; this one runs on any device (the CPU tests' path).
"""

from __future__ import annotations

import torch

from tokenleap.speculative.verify import verify_greedy


def greedy_head_ref(
    logits: torch.Tensor,  # [b * q, vocab], any float dtype
    ids: torch.Tensor,  # [b * q] int64, the step's input ids (drafts after each request's first row)
    num_drafts: torch.Tensor,  # [b] int64
    q: int,
    last_tokens: torch.Tensor | None = None,  # [>= b] int64, written when given (q == 1 steps)
    last_verify: torch.Tensor | None = None,  # [>= b, w >= q + 2] int64, written when given
) -> torch.Tensor:  # greedy [b, q + 2]
    b = num_drafts.shape[0]
    argmax, emitted = verify_greedy(logits.argmax(dim=-1).view(b, q), ids.view(b, q)[:, 1:], num_drafts)
    greedy = torch.cat([argmax, emitted[:, None], num_drafts[:, None]], dim=1)  # [b, q + 2]
    if last_tokens is not None:
        last_tokens[:b].copy_(argmax[:, 0])
    if last_verify is not None:
        w = last_verify.shape[1]
        last_verify[:b, :q].copy_(argmax)
        last_verify[:b, w - 2 :].copy_(greedy[:, q:])
    return greedy
