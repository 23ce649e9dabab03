"""What rank 0 broadcasts to the workers: a fixed-size header (a command, the model it is for, and its sizes), then
the command's tensor. Every rank runs the same collectives in the same order, so a step is two broadcasts before the
forward.

Commands: FORWARD (the step's flat batch: ids, positions, slots, block tables, query starts, seq lens), LOGITS (the
hidden rows to turn into logits), EMBED (token ids to embed: the target's embedding, for proposers that share it),
ALLOCATE (a KV cache: block count, block size, dtype), LOAD (a proposer's model to load sharded: its path and
settings as JSON; every rank then reports its status to rank 0), STOP.

Models: TARGET (the engine's model) or DRAFT (a proposer's model loaded sharded through the engine's
``ModelLoader``). Header: ``[command, model, sizes...]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tokenleap.model.attention import AttentionMetadata

STOP, FORWARD, LOGITS, ALLOCATE, EMBED, LOAD = 0, 1, 2, 3, 4, 5
TARGET, DRAFT = 0, 1
MODEL_NAMES = {TARGET: "target", DRAFT: "draft"}
HEADER_LEN = 8
DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # a KV cache's dtype, by index in ALLOCATE


def send_header(values: list[int], device: torch.device) -> None:
    header = torch.zeros(HEADER_LEN, dtype=torch.int64)
    header[: len(values)] = torch.tensor(values, dtype=torch.int64)
    dist.broadcast(header.to(device), src=0)


def recv_header(device: torch.device) -> list[int]:
    header = torch.empty(HEADER_LEN, dtype=torch.int64, device=device)
    dist.broadcast(header, src=0)
    return header.tolist()


def send_forward(ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, model: int = TARGET) -> None:
    """Rank 0: the step's flat batch, as built by the model runner (or a proposer, for its model)."""
    num_reqs, max_blocks = meta.block_tables.shape
    send_header([FORWARD, model, ids.shape[0], num_reqs, max_blocks, meta.max_query_len, meta.max_seq_len],
                ids.device)
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
    """A worker: the flat batch announced by ``header`` (FORWARD, model, tokens, requests, blocks per request, max
    query len, max seq len)."""
    _, _, t, r, mb, max_q, max_seq = header[:7]
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


def send_hidden(hidden: torch.Tensor, model: int = TARGET) -> None:
    """Rank 0: rows [n, hidden] whose logits are wanted."""
    send_header([LOGITS, model, hidden.shape[0], hidden.shape[1]], hidden.device)
    dist.broadcast(hidden.contiguous(), src=0)


def recv_hidden(header: list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    hidden = torch.empty(header[2], header[3], dtype=dtype, device=device)  # [n, hidden]
    dist.broadcast(hidden, src=0)
    return hidden


def send_ids(ids: torch.Tensor, model: int = TARGET) -> None:
    """Rank 0: token ids [n] to embed."""
    send_header([EMBED, model, ids.shape[0]], ids.device)
    dist.broadcast(ids.to(torch.int64).contiguous(), src=0)


def recv_ids(header: list[int], device: torch.device) -> torch.Tensor:
    ids = torch.empty(header[2], dtype=torch.int64, device=device)  # [n]
    dist.broadcast(ids, src=0)
    return ids


def send_allocate(num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device,
                  model: int = TARGET) -> None:
    """Rank 0: every worker allocates its shard of ``model``'s paged KV cache."""
    send_header([ALLOCATE, model, num_blocks, block_size, DTYPES.index(dtype)], device)


def send_load(settings: dict, device: torch.device, model: int = DRAFT) -> None:
    """Rank 0: every worker loads its shard of the model ``settings`` (JSON-able: path, load format, ...) names."""
    data = torch.frombuffer(bytearray(json.dumps(settings).encode()), dtype=torch.uint8)
    send_header([LOAD, model, data.numel()], device)
    dist.broadcast(data.to(device), src=0)


def recv_load(header: list[int], device: torch.device) -> dict:
    data = torch.empty(header[2], dtype=torch.uint8, device=device)
    dist.broadcast(data, src=0)
    return json.loads(bytes(data.cpu().tolist()).decode())


def gather_status(status: str) -> list[str] | None:
    """Every rank's status after a LOAD ("ok" or its error), gathered on rank 0 (None on the workers)."""
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(status, out, dst=0)
    return out
