"""The token of a graphed decode step whose requests have constraints (structured outputs, logit_bias,
allowed_token_ids, bad_words), picked on the device after the graph's forward.

The graph's own head takes the argmax of the unmasked logits, which is wrong for these requests. After the
forward, ``MaskedDecode.pick`` builds each request's constraint row on the host (``RequestConstraints.add_rows``,
as the synchronous sampler does: the grammar's bitmask for the next token, bans, biases), uploads it with one copy
from a pinned buffer and launches ``masked_argmax``, whose tokens overwrite the graph's ``last_tokens`` (what a
decode step launched behind this one is fed) and fill the ``[n, 3]`` result the host reads back (token, 1 emitted,
0 drafts: the layout of the graph's greedy result).

The host builds the masks from the matchers as they are: each must already have accepted the tokens before this
step. A step launched ahead of the previous one's read-back therefore calls ``pick`` only once that token is on
the host and applied (``LaunchedStep.launch_sampling``); the forward itself is already running by then.
"""

from __future__ import annotations

import torch

from tokenleap.engine.request import Request
from tokenleap.sample.masked_argmax import byte_bits, masked_argmax
from tokenleap.structured.constraints import StepRows, bitmask_words


class MaskedDecode:
    def __init__(self, max_batch: int, vocab_size: int, device: torch.device) -> None:
        self.device = device
        words = bitmask_words(vocab_size)
        pin = device.type == "cuda"
        # two pinned host masks in turn: one may still be queued for upload while the next is filled
        self.host_masks = [torch.full((max_batch, words), -1, dtype=torch.int32, pin_memory=pin) for _ in range(2)]
        self._turn = 0
        self.masks = torch.full((max_batch, words), -1, dtype=torch.int32, device=device)  # [max_batch, words]
        # the step's result as the graphs lay it out: [max_batch, 3] (token, tokens emitted = 1, drafts = 0)
        self.result = torch.zeros(max_batch, 3, dtype=torch.int64, device=device)
        self.result[:, 1] = 1
        self.bits = byte_bits(device)  # [256, 8] bool: unpacks the bitmask

    def pick(self, logits: torch.Tensor, requests: list[Request], last_tokens: torch.Tensor) -> torch.Tensor:
        """Launch the constrained argmax of ``logits`` [>= n, vocab] (row i: request i's next token) for the
        ``n`` requests; returns the device result [n, 3] (valid in stream order). Finished requests (ended in
        the step before, or aborted) get an unconstrained row: nobody reads their token."""
        n = len(requests)
        rows = StepRows()
        for i, r in enumerate(requests):
            if r.constraints is not None and not r.status.finished:
                r.constraints.add_rows(rows, i, r.output_token_ids, [])
        bitmask = None
        if rows.mask_rows:
            host = self.host_masks[self._turn][:n]  # [n, words]
            self._turn ^= 1
            host.fill_(-1)
            host[torch.tensor(rows.mask_rows)] = torch.cat(rows.masks)  # one row per request with a mask
            bitmask = self.masks[:n]
            bitmask.copy_(host, non_blocking=True)
        bans = bias = None
        if rows.ban_rows:
            bans = (self._ints(rows.ban_rows), self._ints(rows.ban_ids))
        if rows.bias_rows:
            bias = (self._ints(rows.bias_rows), self._ints(rows.bias_ids),
                    torch.tensor(rows.bias_values, dtype=torch.float32).to(self.device, non_blocking=True))
        tokens = masked_argmax(logits[:n], bitmask, self.bits, bans, bias)  # [n]
        last_tokens[:n].copy_(tokens)
        result = self.result[:n]
        result[:, 0].copy_(tokens)
        return result

    def _ints(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64).to(self.device, non_blocking=True)
