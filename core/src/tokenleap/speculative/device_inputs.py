"""Building the next verify step on the device, for device drafters (``tokenleap_plugins.DeviceDrafter``).

A drafter that runs a model beside the target works in three moves inside the captured verify graph: read where
each fed row stands after the step before (``last_emitted``), draft from that (its own model: a head with a KV
cache first catches up on the rows the step before kept, ``catch_up_inputs``, then chains one-token steps,
``chain_step_inputs``), and write the verify step's inputs from the drafts (``write_verify_inputs``). These moves
are the same for every such drafter and live here; all are fixed-shape torch ops (capturable: no host sync, no
data-dependent shapes) and each has a row-by-row reference (``*_ref``) that says the same more plainly
(``tests/test_device_inputs.py`` checks they agree). The padded layouts are the host's
(``padded_inputs.first_inputs``, ``chain_inputs.chain_inputs``), so the head's forwards see what they see there.

Shapes, for ``b`` graph rows (requests, padding rows included) of a verify step of ``q = 1 + k`` query rows:

    last        [>= b, w] int64     the previous step of the same rows (``DeviceDraftStep.last``): argmax per query
                                    row in its first columns, the number of tokens it emitted at ``w - 2``
    ctx_len     [>= b] int64        tokens each row knew before that step's emitted ones
    hidden      [>= b, q', H]       a hidden-state layer of that step (``DeviceDraftStep.hidden_states[layer]``)
    n           [b] int64           tokens each row knows now; the last one is the verify step's first input
    token       [b] int64           that last token
    drafts      [b, k] int64        the drafter's tokens; row i keeps ``min(k, limits[i] - n[i] - 1)`` of them
    nd          [b] int64           that count (``kept_drafts``)

``shift``: 0 for a head whose row p feeds the token after p (x_{p+1}; EAGLE and MTP heads, which read the target's
hidden state at p): the kept rows sit at the previous step's positions; 1 for a model whose row p feeds x_p (a
draft model): one position later. The chain follows from there.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from tokenleap_plugins import DeviceDraftStep


def last_emitted(last: torch.Tensor, ctx_len: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the tokens known now (n [b]) and the last of them (token [b]). Rows that emitted nothing
    (padding) read column 0."""
    w = last.shape[1]
    emitted = last[:b, w - 2]  # [b]
    col = (emitted - 1).clamp(0, w - 3)  # [b] query row of the last emitted token
    token = last[:b].gather(1, col[:, None]).squeeze(1)  # [b]
    return ctx_len[:b] + emitted, token


def last_emitted_ref(last: torch.Tensor, ctx_len: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = last.shape[1]
    n, token = [], []
    for i in range(b):
        e = int(last[i, w - 2])
        n.append(int(ctx_len[i]) + e)
        token.append(int(last[i, min(max(e - 1, 0), w - 3)]))
    as_long = lambda v: torch.tensor(v, dtype=torch.int64, device=last.device)  # noqa: E731
    return as_long(n), as_long(token)


def kept_drafts(limits: torch.Tensor, n: torch.Tensor, k: int) -> torch.Tensor:
    """[b] drafts each row may take: as many as keep it within its token limit, at most k."""
    return (limits[: n.shape[0]] - n - 1).clamp(0, k)


class CatchUpInputs(NamedTuple):
    """A head's catch-up over the rows the previous step kept, padded as ``padded_inputs.first_inputs`` pads: row
    i owns rows ``i * q ..``, its ``e`` kept rows last. Kept row j feeds the token emitted j-th (``x_{p+1}``) at
    position ``p = n - e - 1 + j`` with the previous step's hidden row j; padding rows (and unfed rows) feed token 0
    at position 0 into the null slot, reading hidden row 0."""

    ids: torch.Tensor  # [b * q] int64
    positions: torch.Tensor  # [b * q] int64
    slots: torch.Tensor  # [b * q] int64
    rows: torch.Tensor  # [b, q] int64: the previous step's query row each row's hidden state comes from
    seq_lens: torch.Tensor  # [b] int32: n - 1 (the last kept position + 1); unfed rows q
    query_start: torch.Tensor  # [b + 1] int32: 0, q, 2q, ..
    last_rows: torch.Tensor  # [b] int64: i * q + q - 1, the row whose output gives the first draft


def catch_up_inputs(last: torch.Tensor, n: torch.Tensor, tables: torch.Tensor, feed: torch.Tensor, q: int,
                    block_size: int, shift: int = 0) -> CatchUpInputs:
    b, w = n.shape[0], last.shape[1]
    dev = n.device
    e = last[:b, w - 2].clamp(1, q)  # [b] kept rows
    j = torch.arange(q, device=dev)  # [q]
    src = j[None, :] - (q - e)[:, None]  # [b, q] index into the kept rows; < 0: padding
    real = (src >= 0) & (feed[:b] != 0)[:, None]
    rows = src.clamp(min=0) * real
    ids = torch.where(real, last[:b].gather(1, rows), 0)
    pos = torch.where(real, (n - e - 1 + shift)[:, None] + rows, 0)
    block = (pos // block_size).clamp(0, tables.shape[1] - 1)
    slots = torch.where(real, tables[:b].gather(1, block).to(torch.int64) * block_size + pos % block_size, 0)
    seq_lens = torch.where(feed[:b] != 0, n - 1 + shift, q).to(torch.int32)
    query_start = (torch.arange(b + 1, device=dev) * q).to(torch.int32)
    return CatchUpInputs(ids.reshape(-1), pos.reshape(-1), slots.reshape(-1), rows, seq_lens, query_start,
                         j[-1] + q * torch.arange(b, device=dev))


def catch_up_inputs_ref(last: torch.Tensor, n: torch.Tensor, tables: torch.Tensor, feed: torch.Tensor, q: int,
                        block_size: int, shift: int = 0) -> CatchUpInputs:
    b, w = n.shape[0], last.shape[1]
    ids, pos, slots, rows = (torch.zeros(b, q, dtype=torch.int64) for _ in range(4))
    seq_lens = torch.full((b,), q, dtype=torch.int32)
    for i in range(b):
        if not int(feed[i]):
            continue
        e = min(max(int(last[i, w - 2]), 1), q)
        start = int(n[i]) - e - 1 + shift  # the previous step's first row's position (+ shift)
        for jj in range(e):
            r = q - e + jj
            p = start + jj
            ids[i, r], pos[i, r], rows[i, r] = int(last[i, jj]), p, jj
            slots[i, r] = int(tables[i, p // block_size]) * block_size + p % block_size
        seq_lens[i] = start + e
    return CatchUpInputs(ids.reshape(-1), pos.reshape(-1), slots.reshape(-1), rows, seq_lens,
                         torch.arange(b + 1, dtype=torch.int32) * q, torch.arange(b) * q + q - 1)


def chain_step_inputs(n: torch.Tensor, nd: torch.Tensor, tables: torch.Tensor, s: int, block_size: int,
                      shift: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chain step ``s`` (0-based: it feeds draft s + 1 and gives draft s + 2) as ``chain_inputs.chain_inputs``
    lays it out: at position ``n - 1 + s`` for rows that want draft s + 2 (``s + 2 <= nd``), else at position 0 into
    the null slot with sequence length 1. Returns positions [b] int64, slots [b] int64, seq_lens [b] int32."""
    wanted = nd >= s + 2
    pos = torch.where(wanted, n - 1 + shift + s, 0)
    block = (pos // block_size).clamp(0, tables.shape[1] - 1)[:, None]
    slot = torch.where(wanted, tables[: n.shape[0]].gather(1, block).squeeze(1).to(torch.int64) * block_size
                       + pos % block_size, 0)
    return pos, slot, torch.where(wanted, pos + 1, 1).to(torch.int32)


def chain_step_inputs_ref(n: torch.Tensor, nd: torch.Tensor, tables: torch.Tensor, s: int, block_size: int,
                          shift: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = n.shape[0]
    pos, slot = torch.zeros(b, dtype=torch.int64), torch.zeros(b, dtype=torch.int64)
    seq = torch.ones(b, dtype=torch.int32)
    for i in range(b):
        if int(nd[i]) >= s + 2:
            p = int(n[i]) - 1 + shift + s
            pos[i], slot[i], seq[i] = p, int(tables[i, p // block_size]) * block_size + p % block_size, p + 1
    return pos, slot, seq


def write_verify_frame(step: DeviceDraftStep, n: torch.Tensor, token: torch.Tensor, nd: torch.Tensor) -> None:
    """Write the fed rows of ``step`` but for the drafts' ids: ids (the last token, then token 0), positions
    (continuing from ``n - 1``), KV slots (from the block table for the token and the ``nd`` drafts kept; the null
    slot 0 after them), sequence lengths (``n - 1 + q``) and draft counts. Other rows keep what the host staged."""
    q, bs = step.q, step.block_size
    b = step.feed.shape[0]
    fed = step.feed[:b] != 0  # [b]
    j = torch.arange(q, device=n.device)  # [q]
    real = j[None, :] <= nd[:, None]  # [b, q] the last token and the drafts kept
    ids = torch.where(j[None, :] == 0, token[:, None], 0)  # [b, q]
    pos = (n - 1)[:, None] + j[None, :]  # [b, q]
    block = (pos // bs).clamp(0, step.tables.shape[1] - 1)
    slot = step.tables[:b].gather(1, block).to(torch.int64) * bs + pos % bs  # [b, q]
    slot = torch.where(real, slot, torch.zeros_like(slot))
    keep = fed[:, None]
    step.ids.view(b, q).copy_(torch.where(keep, ids, step.ids.view(b, q)))
    step.positions.view(b, q).copy_(torch.where(keep, pos, step.positions.view(b, q)))
    step.slots.view(b, q).copy_(torch.where(keep, slot, step.slots.view(b, q)))
    step.seq_lens[:b].copy_(torch.where(fed, (n - 1 + q).to(step.seq_lens.dtype), step.seq_lens[:b]))
    step.num_drafts[:b].copy_(torch.where(fed, nd, step.num_drafts[:b]))


def write_drafts(step: DeviceDraftStep, nd: torch.Tensor, drafts: torch.Tensor) -> None:
    """The drafts' ids of the fed rows: row i's first ``nd[i]`` drafts after its last token."""
    q = step.q
    b = step.feed.shape[0]
    j = torch.arange(1, q, device=nd.device)  # [k]
    put = (step.feed[:b] != 0)[:, None] & (j[None, :] <= nd[:, None])  # [b, k]
    ids = step.ids.view(b, q)[:, 1:]
    ids.copy_(torch.where(put, drafts[:, : q - 1], ids))


def write_verify_inputs(step: DeviceDraftStep, n: torch.Tensor, token: torch.Tensor, drafts: torch.Tensor) -> None:
    """The verify step's inputs from the drafts (``write_verify_frame``, then ``write_drafts``)."""
    nd = kept_drafts(step.limits, n, step.q - 1)
    write_verify_frame(step, n, token, nd)
    write_drafts(step, nd, drafts)


class DraftStepInputs(NamedTuple):
    """What a head's device drafter runs on, for ``b`` rows and k drafts (``draft_step_inputs``)."""

    n: torch.Tensor  # [b] int64 tokens known
    token: torch.Tensor  # [b] int64 the last of them
    nd: torch.Tensor  # [b] int64 drafts kept
    catch_up: CatchUpInputs
    chain_positions: torch.Tensor  # [k - 1, b] int64: chain step s's row (``chain_step_inputs``)
    chain_slots: torch.Tensor  # [k - 1, b] int64
    chain_seq_lens: torch.Tensor  # [k - 1, b] int32


def draft_step_inputs(step: DeviceDraftStep, ctx_len: torch.Tensor, k: int, shift: int = 0) -> DraftStepInputs:
    """Everything a drafter needs before it drafts, from ``step`` and ``ctx_len`` alone, and the verify step's
    inputs but for the drafts' ids (``write_verify_frame``); ``ctx_len`` of the fed rows moves on to ``n``. After
    drafting, ``write_drafts`` completes the step. (``triton_draft_inputs.draft_step_inputs_triton`` does the same
    in one kernel.)"""
    b, bs = step.feed.shape[0], step.block_size
    n, token = last_emitted(step.last, ctx_len, b)
    nd = kept_drafts(step.limits, n, k)
    cu = catch_up_inputs(step.last, n, step.tables, step.feed, step.q, bs, shift)
    chain = [chain_step_inputs(n, nd, step.tables, s, bs, shift) for s in range(k - 1)]
    if chain:
        positions, slots, seq_lens = (torch.stack(t) for t in zip(*chain))
    else:
        positions = slots = torch.zeros(0, b, dtype=torch.int64, device=n.device)
        seq_lens = torch.zeros(0, b, dtype=torch.int32, device=n.device)
    write_verify_frame(step, n, token, nd)
    ctx_len[:b].copy_(torch.where(step.feed[:b] != 0, n, ctx_len[:b]))
    return DraftStepInputs(n, token, nd, cu, positions, slots, seq_lens)


def write_verify_inputs_ref(step: DeviceDraftStep, n: torch.Tensor, token: torch.Tensor,
                            drafts: torch.Tensor) -> None:
    q, bs = step.q, step.block_size
    for i in range(step.feed.shape[0]):
        if not int(step.feed[i]):
            continue
        known = int(n[i])
        nd = min(q - 1, max(0, int(step.limits[i]) - known - 1))
        for j in range(q):
            p = known - 1 + j
            real = j <= nd
            step.ids[i * q + j] = (int(token[i]) if j == 0 else int(drafts[i, j - 1])) if real else 0
            step.positions[i * q + j] = p
            step.slots[i * q + j] = int(step.tables[i, p // bs]) * bs + p % bs if real else 0
        step.seq_lens[i] = known - 1 + q
        step.num_drafts[i] = nd


class KnownLengths:
    """Per graph row, how many tokens it knows (``ctx_len`` of ``draft_step_inputs``, which moves it on): set from
    the token histories the engine hands a drafter's ``load_histories`` (only their lengths matter to a drafter
    whose model keeps its own state). The copy is queued on the stream: a step launched after it sees them."""

    def __init__(self, max_rows: int, device: torch.device) -> None:
        self.tensor = torch.zeros(max_rows, dtype=torch.int64, device=device)  # [rows]
        self._staging = torch.zeros(max_rows, dtype=torch.int64, pin_memory=device.type == "cuda")

    def load(self, token_ids) -> None:
        rows = len(token_ids)
        self._staging[:rows] = torch.tensor([len(t) for t in token_ids], dtype=torch.int64)
        self.tensor[:rows].copy_(self._staging[:rows], non_blocking=True)


def draft_input_ops(backend: str):
    """(draft_step_inputs, write_drafts) for a drafter of ``backend``: the two Triton kernels of
    ``kernels.triton_draft_inputs`` for "triton", the torch composition above otherwise."""
    if backend == "triton":
        from tokenleap.kernels.triton_draft_inputs import draft_step_inputs_triton, write_drafts_triton

        return draft_step_inputs_triton, write_drafts_triton
    return draft_step_inputs, write_drafts


class ModelDrafterBase:
    """What a model-based device drafter shares: k, the input ops of its backend (``draft_input_ops``) and the
    rows' known lengths, set by ``load_histories`` (only the lengths matter: its model keeps its own state).
    Subclasses write ``draft``: ``self.inputs(step, self.lengths.tensor, self.k, self.shift)``, their model, then
    ``self.write_drafts(step, x.nd, drafts)``."""

    def __init__(self, spec, shift: int = 0) -> None:  # spec: tokenleap_plugins.DeviceDraftingSpec
        self.k, self.shift = spec.max_query_len - 1, shift
        self.inputs, self.write_drafts = draft_input_ops(spec.backend)
        self.lengths = KnownLengths(spec.max_rows, torch.device(spec.device))

    def load_histories(self, token_ids) -> None:
        self.lengths.load(token_ids)
