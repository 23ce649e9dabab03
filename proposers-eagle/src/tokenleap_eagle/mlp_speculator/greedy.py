"""The MLP speculator's greedy drafts for a batch in one device pass: every stage's argmax feeds the next stage on
the device, and the [batch, steps] drafts are read back once.

Rows are padded to a bucket size (padding rows read hidden row 0 and token 0; their drafts are dropped). On CUDA
all k stages of a bucket run as one captured graph (``graph_capture``) whose static inputs are the gathered
hidden rows and the [2, bucket] index of (hidden row, last token) per request: a step pays one host-to-device
copy (the index), one gather of the hidden rows on the device, one replay and one read-back, instead of about
ten kernel launches per stage. Elsewhere, or with ``graphed`` off, the same padded computation runs eagerly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tokenleap.speculative.graph_capture import bucket_for, capture_or_eager

from tokenleap_eagle.head_sampling import upload_flat, upload_into
from tokenleap_eagle.mlp_speculator.model import MLPSpeculator

# no KV cache and small activations: graphs are cheap, so buckets reach the engine's largest batches
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

FinalNorm = Callable[[torch.Tensor], torch.Tensor]  # the target's final norm: [n, emb_dim] -> [n, emb_dim]


def greedy_chain(model: MLPSpeculator, final_norm: FinalNorm, hidden: torch.Tensor, tokens: torch.Tensor,
                 steps: int) -> torch.Tensor:
    """hidden [n, emb_dim]: each row's last hidden state of the target (before its final norm); tokens [n] int64:
    the token that state predicted -> [n, steps] int64 greedy drafts, stage j's argmax fed to stage j + 1."""
    state = model.input_state(final_norm(hidden).to(model.head[0].weight.dtype))  # [n, emb_dim]
    out = []
    for j in range(steps):
        state = model.stage(j, state, tokens)  # [n, inner]
        tokens = model.logits(j, state).argmax(dim=-1)  # [n]
        out.append(tokens)
    return torch.stack(out, dim=1)  # [n, steps]


def padded_index(rows: Sequence[int], tokens: Sequence[int], bucket: int) -> np.ndarray:
    """[2, bucket] int64: each request's hidden row and last token, then padding rows reading row 0 and token 0
    (row 0 exists in any step that computed a token)."""
    index = np.zeros((2, bucket), dtype=np.int64)
    index[0, : len(rows)] = rows
    index[1, : len(tokens)] = tokens
    return index


class GreedyDrafter:
    """Greedy drafts of ``steps`` (the proposer's k) stages at most, per padded bucket one graph of all of them."""

    def __init__(self, model: MLPSpeculator, final_norm: FinalNorm, steps: int, device: torch.device) -> None:
        self.model, self.final_norm, self.steps, self.device = model, final_norm, steps, device
        self.graphed = device.type == "cuda"  # off: the padded stages run eagerly (tests compare)
        self._graphs: dict[tuple[int, torch.dtype], tuple[object, dict[str, torch.Tensor]]] = {}
        self._pool = None

    @torch.inference_mode()
    def run(self, hidden_states: torch.Tensor, rows: Sequence[int], tokens: Sequence[int], steps: int
            ) -> list[list[int]]:
        """hidden_states [num_rows, emb_dim]: the step's last-layer hidden rows; rows, tokens: per request its row
        and last token -> per request its ``steps`` greedy drafts (host lists; the one read-back)."""
        b = len(rows)
        bucket = bucket_for(b, BUCKETS)
        graphed = self.graphed and bucket is not None and steps <= self.steps
        bucket = bucket or b
        index = padded_index(rows, tokens, bucket)  # [2, bucket]
        if graphed:
            graph, io = self._graph(bucket, hidden_states)
            upload_into(io["index"], index)
            torch.index_select(hidden_states, 0, io["index"][0], out=io["hidden"])  # [bucket, emb_dim]
            graph.replay()
            drafts = io["drafts"]  # [bucket, self.steps]
        else:
            dev = upload_flat(index, self.device)  # [2, bucket]
            drafts = greedy_chain(self.model, self.final_norm, hidden_states[dev[0]], dev[1], steps)
        return drafts[:b, :steps].tolist()

    def _graph(self, bucket: int, like: torch.Tensor):
        """The captured stages of ``bucket`` rows: inputs index [2, bucket] int64 (hidden row, last token) and
        hidden [bucket, emb_dim] (like ``like``: the gathered rows); output drafts [bucket, self.steps]."""
        key = (bucket, like.dtype)
        if key not in self._graphs:
            io = {"index": torch.zeros(2, bucket, dtype=torch.int64, device=self.device),
                  "hidden": torch.zeros(bucket, like.shape[1], dtype=like.dtype, device=self.device)}

            def forward():
                return greedy_chain(self.model, self.final_norm, io["hidden"], io["index"][1], self.steps)

            graph, io["drafts"] = capture_or_eager(forward, self.device, self._pool)
            self._pool = graph.pool()
            self._graphs[key] = (graph, io)
        return self._graphs[key]
