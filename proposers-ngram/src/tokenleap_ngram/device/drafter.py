"""``PromptLookupDrafter``: the n-gram proposer's ``DeviceDrafter`` (``tokenleap_plugins.DeviceDrafter``).

It keeps each graph row's token history on the device; ``draft`` appends the previous step's emitted tokens and
writes the next verify step's inputs by prompt lookup (``lookup_ref`` / ``lookup_triton``), so the engine can launch
a verify step before reading the previous one back. Its drafts are ``prompt_lookup.prompt_lookup``'s, as
``NgramProposer.propose``'s are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenleap_plugins import DeviceDraftingSpec, DeviceDraftStep

from tokenleap_ngram.device.lookup_ref import next_verify_inputs_ref
from tokenleap_ngram.prompt_lookup import DEVICE_MAX_LOOKUP as MAX_LOOKUP


class PromptLookupDrafter:
    def __init__(self, spec: DeviceDraftingSpec, lookup_min: int, lookup_max: int) -> None:
        if not 1 <= lookup_min <= lookup_max <= MAX_LOOKUP:
            raise ValueError(f"device prompt lookup needs 1 <= lookup_min <= lookup_max <= {MAX_LOOKUP}, "
                             f"got {lookup_min}, {lookup_max}")
        self.lo, self.hi = lookup_min, lookup_max
        device = torch.device(spec.device)
        pin = device.type == "cuda"
        width = spec.max_model_len + 2 * spec.max_query_len  # room for a verify step's tokens past the limit
        self.hist = torch.zeros(spec.max_rows, width, dtype=torch.int32, device=device)  # [rows, width]
        self.hist_len = torch.zeros(spec.max_rows, dtype=torch.int64, device=device)  # [rows]
        self.hist_staging = torch.zeros(spec.max_rows, width, dtype=torch.int32, pin_memory=pin)
        self.hist_len_staging = torch.zeros(spec.max_rows, dtype=torch.int64, pin_memory=pin)
        if spec.backend == "triton":
            from tokenleap_ngram.device.lookup_triton import next_verify_inputs

            self._kernel = next_verify_inputs
        else:
            self._kernel = next_verify_inputs_ref

    def load_histories(self, token_ids: Sequence[Sequence[int]]) -> None:
        """Queued on the stream: a step launched after this call sees them."""
        for i, tokens in enumerate(token_ids):
            n = len(tokens)
            self.hist_staging[i, :n] = torch.as_tensor(list(tokens), dtype=torch.int32)
            self.hist_len_staging[i] = n
            self.hist[i, :n].copy_(self.hist_staging[i, :n], non_blocking=True)
        rows = len(token_ids)
        self.hist_len[:rows].copy_(self.hist_len_staging[:rows], non_blocking=True)

    def draft(self, step: DeviceDraftStep) -> None:
        self._kernel(self.hist, self.hist_len, step.last, step.feed, step.limits, step.tables, step.ids,
                     step.positions, step.slots, step.seq_lens, step.num_drafts, q=step.q,
                     block_size=step.block_size, lookup_min=self.lo, lookup_max=self.hi)
