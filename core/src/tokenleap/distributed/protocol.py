"""What rank 0 broadcasts to the workers: a fixed-size header (a command and its sizes), then the command's
tensor. Every rank runs the same collectives in the same order, so a step is two broadcasts before the forward.

Commands: FORWARD (the step's flat batch: ids, positions, slots, block tables, query starts, seq lens),
LOGITS (the hidden rows to turn into logits), ALLOCATE (the KV cache's block count), STOP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from tokenleap.model.attention import AttentionMetadata

STOP, FORWARD, LOGITS, ALLOCATE = 0, 1, 2, 3
HEADER_LEN = 8


def send_header(values: list[int], device: torch.device) -> None:
    header = torch.zeros(HEADER_LEN, dtype=torch.int64)
    header[: len(values)] = torch.tensor(values, dtype=torch.int64)
    dist.broadcast(header.to(device), src=0)


def recv_header(device: torch.device) -> list[int]:
    header = torch.empty(HEADER_LEN, dtype=torch.int64, device=device)
    dist.broadcast(header, src=0)
    return header.tolist()


def send_forward(ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> None:
    """Rank 0: the step's flat batch, as built by the model runner."""
    num_reqs, max_blocks = meta.block_tables.shape
    send_header([FORWARD, ids.shape[0], num_reqs, max_blocks, meta.max_query_len, meta.max_seq_len], ids.device)
    i64 = torch.int64
    payload = torch.cat([ids.to(i64), positions.to(i64), meta.slot_mapping.to(i64),
                         meta.block_tables.reshape(-1).to(i64), meta.query_start_loc.to(i64), meta.seq_lens.to(i64)])
    dist.broadcast(payload, src=0)


@dataclass
class ForwardInputs:
    ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    meta: AttentionMetadata


def recv_forward(header: list[int], device: torch.device, backend: str) -> ForwardInputs:
    """A worker: the flat batch announced by ``header`` (FORWARD, tokens, requests, blocks per request, max query
    len, max seq len)."""
    _, t, r, mb, max_q, max_seq = header[:6]
    payload = torch.empty(3 * t + r * mb + 2 * r + 1, dtype=torch.int64, device=device)
    dist.broadcast(payload, src=0)
    ids, positions, slots, tables, qsl, seq_lens = payload.split([t, t, t, r * mb, r + 1, r])
    qsl_host = qsl.tolist()
    meta = AttentionMetadata(
        slot_mapping=slots, block_tables=tables.view(r, mb).to(torch.int32), query_start_loc=qsl.to(torch.int32),
        seq_lens=seq_lens.to(torch.int32), query_lens_host=[b - a for a, b in zip(qsl_host, qsl_host[1:])],
        seq_lens_host=seq_lens.tolist(), max_query_len=max_q, max_seq_len=max_seq, backend=backend,
    )
    return ForwardInputs(ids, positions, meta)


def send_hidden(hidden: torch.Tensor) -> None:
    """Rank 0: rows [n, hidden] whose logits are wanted."""
    send_header([LOGITS, hidden.shape[0], hidden.shape[1]], hidden.device)
    dist.broadcast(hidden.contiguous(), src=0)


def recv_hidden(header: list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    hidden = torch.empty(header[1], header[2], dtype=dtype, device=device)  # [n, hidden]
    dist.broadcast(hidden, src=0)
    return hidden
