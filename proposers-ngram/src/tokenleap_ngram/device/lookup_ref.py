"""The next verify step's inputs, drafted on the device by prompt lookup (torch reference).

The n-gram proposer's device drafter (``drafter.py``) runs this, or its Triton version, as the first kernel of a
captured verify graph.

A verify step can be launched before the previous one is read back when its drafts come from the tokens alone:
the device appends the previous step's emitted tokens to each request's token history, looks up the drafts
(``tokenleap_ngram.prompt_lookup``: for n from ``lookup_max`` down to ``lookup_min``, the most recent earlier
occurrence of the last n tokens; the up to k tokens that followed it), and writes the step's inputs in place:
token ids (the last emitted token, then the drafts, then padding), positions, KV slots, sequence lengths and
draft counts: the same drafts the n-gram proposer's ``propose`` makes on the host.

Only rows whose ``feed`` flag is set are touched; the others keep what the host staged. Shapes:

    hist       [rows, H] int32     token history per graph row (its first ``hist_len`` entries are valid)
    hist_len   [rows] int64        updated: + the previous step's emitted tokens
    last       [rows, q + 2] int64 the previous verify step of the same rows: argmax per query row, then the
                                   number of tokens it emitted (the first ones of the argmax), then its drafts
    feed       [b] int64           1: draft and build this row here
    limits     [b] int64           the most tokens the request may reach (max_model_len, prompt + max_tokens)
    tables     [b, max_blocks] int32
    ids, positions, slots [b * q] int64; seq_lens [b] int32; num_drafts [b] int64   (written)

The Triton version is ``lookup_triton.next_verify_inputs``; this one runs on any device (the CPU tests' path).
"""

from __future__ import annotations

import torch

from tokenleap_ngram.prompt_lookup import prompt_lookup_source


def next_verify_inputs_ref(
    hist: torch.Tensor, hist_len: torch.Tensor, last: torch.Tensor, feed: torch.Tensor, limits: torch.Tensor,
    tables: torch.Tensor, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, seq_lens: torch.Tensor,
    num_drafts: torch.Tensor, q: int, block_size: int, lookup_min: int, lookup_max: int,
) -> None:
    for i in range(feed.shape[0]):
        if not int(feed[i]):
            continue
        start, emitted = int(hist_len[i]), int(last[i, q])
        hist[i, start : start + emitted] = last[i, :emitted].to(hist.dtype)
        n = start + emitted  # tokens now known; the last one is this step's first input
        hist_len[i] = n
        tokens = hist[i, :n].tolist()
        src = prompt_lookup_source(tokens, lookup_min, lookup_max)
        room = max(0, int(limits[i]) - n - 1)  # drafts that keep the request within its limit
        nd = 0 if src < 0 else min(q - 1, n - src, room)
        row = slice(i * q, (i + 1) * q)
        step_ids = torch.zeros(q, dtype=torch.int64)
        step_ids[0] = tokens[-1]
        step_ids[1 : 1 + nd] = torch.tensor(tokens[src : src + nd], dtype=torch.int64)
        pos = torch.arange(n - 1, n - 1 + q, dtype=torch.int64)  # padding rows continue the positions
        step_slots = torch.zeros(q, dtype=torch.int64)  # padding writes land in the null block
        real = pos[: 1 + nd]
        step_slots[: 1 + nd] = tables[i, real // block_size].to(torch.int64) * block_size + real % block_size
        ids[row], positions[row], slots[row] = step_ids, pos, step_slots
        seq_lens[i] = n - 1 + q
        num_drafts[i] = nd
