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

``verify`` does the same for a graphed verify step (or decode step) of a speculative engine, synchronously: a row
per verified position (the grammar's bitmask after the drafts before it), one ``masked_argmax`` over the padded
batch, one read-back, greedy acceptance on the host. It replaces the general sampler there: a few kernel
launches instead of the sampler's many (its host work was 0.87 ms a step under cProfile, the step 1.15 ms
without it, for n-gram under a JSON schema on an H100, ``tests/benchmarks/constrained_profile.py``; most of it
overlapped the forward: tokens/s moved within noise).
"""

from __future__ import annotations

import torch

from tokenleap.engine.request import Request
from tokenleap.engine.scheduler import ScheduledRequest
from tokenleap.sample.masked_argmax import byte_bits, masked_argmax
from tokenleap.speculative.verify import greedy_emitted
from tokenleap.structured.constraints import StepRows, bitmask_words


class MaskedDecode:
    def __init__(self, max_batch: int, max_query_len: int, vocab_size: int, device: torch.device) -> None:
        self.device = device
        words = bitmask_words(vocab_size)
        pin = device.type == "cuda"
        rows = max_batch * max_query_len  # a verify step's padded batch: a row per position
        # two pinned host masks in turn: one may still be queued for upload while the next is filled
        self.host_masks = [torch.full((rows, words), -1, dtype=torch.int32, pin_memory=pin) for _ in range(2)]
        self._turn = 0
        self.masks = torch.full((rows, words), -1, dtype=torch.int32, device=device)  # [rows, words]
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
        tokens = self._argmax(logits[:n], rows)  # [n]
        last_tokens[:n].copy_(tokens)
        result = self.result[:n]
        result[:, 0].copy_(tokens)
        return result

    def verify(self, logits: torch.Tensor, scheduled: list[ScheduledRequest], q: int) -> list[list[int]]:
        """Greedy verification under constraints of a padded step of ``q`` rows per request (``logits`` [>= b * q,
        vocab], request i's verified positions at rows i * q ..): each request's emitted tokens. Waits for the
        device (the step's one host sync)."""
        rows = StepRows()
        for i, s in enumerate(scheduled):
            r = s.request
            if r.constraints is not None:
                r.constraints.add_rows(rows, i * q, r.output_token_ids, r.spec_token_ids[: s.num_spec_tokens])
        targets = self._argmax(logits[: len(scheduled) * q], rows).view(len(scheduled), q).tolist()  # [b, q]
        return [greedy_emitted(targets[i], s.request.spec_token_ids[: s.num_spec_tokens])
                for i, s in enumerate(scheduled)]

    def _argmax(self, logits: torch.Tensor, rows: StepRows) -> torch.Tensor:
        """The argmax of each row of ``logits`` [n, vocab] under ``rows``' masks, bans and biases: [n] int64."""
        n = logits.shape[0]
        bitmask = None
        if rows.mask_rows:
            host = self.host_masks[self._turn][:n]  # [n, words]
            self._turn ^= 1
            host.fill_(-1)
            host[torch.tensor(rows.mask_rows)] = torch.cat(rows.masks)  # the masked rows
            bitmask = self.masks[:n]
            bitmask.copy_(host, non_blocking=True)
        bans = bias = None
        if rows.ban_rows:
            bans = (self._ints(rows.ban_rows), self._ints(rows.ban_ids))
        if rows.bias_rows:
            bias = (self._ints(rows.bias_rows), self._ints(rows.bias_ids),
                    torch.tensor(rows.bias_values, dtype=torch.float32).to(self.device, non_blocking=True))
        return masked_argmax(logits, bitmask, self.bits, bans, bias)

    def _ints(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64).to(self.device, non_blocking=True)
