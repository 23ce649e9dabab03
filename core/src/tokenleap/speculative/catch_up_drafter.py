"""The device drafter of a model with its own KV cache that catches up and then chains (EAGLE / EAGLE-3 heads and MTP
layers over the target's hidden states, draft models over tokens alone; ``tokenleap_plugins.DeviceDrafter``):
inside the captured verify graph it does what the proposer's ``propose`` does for a greedy decode or verify step,
from the previous step's argmax (and hidden states) on the device, so the engine launches each verify step behind
the one before it with no host sync.

The proposer lends three functions: its model over catch-up rows, one chain step, and the greedy choice. What
passes between them (``g``: the model's output, its state) is the proposer's business: an EAGLE head passes its
output, an MTP layer its next state and LM-head input side by side, a draft model its final hidden state.

Per fed row, in the layouts of the host's padded path (``tokenleap.speculative.device_inputs``):

1. the catch-up: the model over the rows the previous step kept (each the token emitted there, with a head the
   target's hidden state of the row before it), q = k + 1 rows per request with the kept ones last, writing the
   model's KV at their positions; its last row's output g and argmax give the first draft;
2. the chain: k - 1 one-token steps, each fed the previous draft (and, for a head, its previous output) at the next
   position, rows wanting fewer drafts writing the null slot;
3. the verify step's inputs from the drafts.

The model's KV cache stays what the host path keeps (the host catches up on exactly the rows the target computed
in the step it is shown, so it goes on where the device left off). Padding rows of a context shorter than q (a
prompt of at most k + 1 tokens) see no key and compute NaN; they write only the null slot, which no real row
reads, and their outputs are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tokenleap_plugins import DeviceDraftingSpec, DeviceDraftStep

from tokenleap.model.attention import AttentionMetadata
from tokenleap.speculative.device_inputs import ModelDrafterBase

# the proposer's model over catch-up rows, one draft step, and the greedy choice
RowsForward = Callable[[torch.Tensor, list[torch.Tensor], torch.Tensor, AttentionMetadata], torch.Tensor]
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata], torch.Tensor]
Pick = Callable[[torch.Tensor], torch.Tensor]


class CatchUpChainDrafter(ModelDrafterBase):
    def __init__(self, rows_forward: RowsForward, step: Step, pick: Pick, layers: Sequence[int], max_len: int,
                 spec: DeviceDraftingSpec, shift: int = 0) -> None:
        """``layers``: the target layers a head reads (keys of ``DeviceDraftStep.hidden_states``; none for a draft
        model, whose ``rows_forward`` gets no parts); ``max_len``: the model's longest context; ``shift``: 0 for a
        head (row p feeds x_{p+1}), 1 for a draft model (row p feeds x_p; ``device_inputs``)."""
        self.rows_forward, self.step, self.pick, self.layers = rows_forward, step, pick, tuple(layers)
        self.max_len, self.backend = max_len, spec.backend
        super().__init__(spec, shift)

    def draft(self, step: DeviceDraftStep) -> None:
        b, q = step.feed.shape[0], step.q
        x = self.inputs(step, self.lengths.tensor, self.k, self.shift)  # the verify frame written, lengths moved on
        cu, tables = x.catch_up, step.tables
        # 1. the catch-up over the kept rows, and the first draft
        parts = []
        for layer in self.layers:
            h = step.hidden_states[layer]  # [>= b, q', H]
            rows = cu.rows.clamp(max=h.shape[1] - 1)  # [b, q]
            parts.append(h[:b].gather(1, rows[:, :, None].expand(b, q, h.shape[2])).reshape(b * q, -1))
        out = self.rows_forward(cu.ids, parts, cu.positions, self._meta(cu.slots, tables, cu.query_start,
                                                                         cu.seq_lens, q))  # [b * q, hidden]
        g = out.index_select(0, cu.last_rows)  # [b, hidden]
        ids = self.pick(g)  # [b] the first drafts
        drafts = [ids]
        # 2. the chain
        one_each = torch.arange(b + 1, dtype=torch.int32, device=ids.device)  # query start offsets
        for s in range(self.k - 1):
            meta = self._meta(x.chain_slots[s], tables, one_each, x.chain_seq_lens[s], 1)
            g = self.step(ids, g, x.chain_positions[s], meta)
            ids = self.pick(g)
            drafts.append(ids)
        # 3. the verify step's drafts
        self.write_drafts(step, x.nd, torch.stack(drafts, dim=1))  # drafts [b, k]

    def _meta(self, slots: torch.Tensor, tables: torch.Tensor, query_start: torch.Tensor, seq_lens: torch.Tensor,
              q: int) -> AttentionMetadata:
        """``q`` query rows per request; host lengths only for the torch attention (the Triton kernels read the
        device ones, and a captured graph cannot read them back)."""
        b = seq_lens.shape[0]
        host = seq_lens.tolist() if self.backend != "triton" else [self.max_len] * b
        return AttentionMetadata(
            slot_mapping=slots, block_tables=tables, query_start_loc=query_start, seq_lens=seq_lens,
            query_lens_host=[q] * b, seq_lens_host=host, max_query_len=q, max_seq_len=self.max_len,
            backend=self.backend)
