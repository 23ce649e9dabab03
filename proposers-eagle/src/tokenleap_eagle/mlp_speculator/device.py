"""The MLP speculator's device drafter (``tokenleap_plugins.DeviceDrafter``): its k greedy stages run inside the
captured verify graph, from the previous step's emitted tokens and last-layer hidden states, so the engine launches
each verify step behind the one before it with no host sync between them.

Per fed row: the state after the last emitted token (the hidden row of the query that emitted it, and that token:
``tokenleap.speculative.device_inputs.draft_step_inputs``, which also writes the verify step's frame), the stages
(``greedy.greedy_chain``, what the host path runs), then the drafts' ids (``write_drafts``). The speculator keeps
no KV cache, so the only state a row carries between steps is how many tokens it knows (``ctx_len``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenleap.speculative.device_inputs import draft_input_ops
from tokenleap_plugins import DeviceDraftingSpec, DeviceDraftStep

from tokenleap_eagle.mlp_speculator.greedy import FinalNorm, greedy_chain
from tokenleap_eagle.mlp_speculator.model import MLPSpeculator

HIDDEN_LAYER = -1  # the target's last layer output, before its final norm (MLPSpeculatorProposer.needs)


class MLPDeviceDrafter:
    def __init__(self, model: MLPSpeculator, final_norm: FinalNorm, spec: DeviceDraftingSpec) -> None:
        self.model, self.final_norm = model, final_norm
        self.k = spec.max_query_len - 1
        self._inputs, self._write_drafts = draft_input_ops(spec.backend)
        device = torch.device(spec.device)
        self.ctx_len = torch.zeros(spec.max_rows, dtype=torch.int64, device=device)  # [rows] tokens known
        self._staging = torch.zeros(spec.max_rows, dtype=torch.int64, pin_memory=device.type == "cuda")

    def load_histories(self, token_ids: Sequence[Sequence[int]]) -> None:
        """Only the lengths matter (queued on the stream: a step launched after this call sees them)."""
        rows = len(token_ids)
        self._staging[:rows] = torch.tensor([len(t) for t in token_ids], dtype=torch.int64)
        self.ctx_len[:rows].copy_(self._staging[:rows], non_blocking=True)

    def draft(self, step: DeviceDraftStep) -> None:
        b = step.feed.shape[0]
        x = self._inputs(step, self.ctx_len, self.k)  # the verify step's frame written, ctx_len moved on
        h = step.hidden_states[HIDDEN_LAYER]  # [>= b, q', H]
        last = x.catch_up.rows[:, -1:].clamp(max=h.shape[1] - 1)  # [b, 1] the query row of the last emitted token
        hidden = h[:b].gather(1, last[:, :, None].expand(b, 1, h.shape[2])).squeeze(1)  # [b, H]
        drafts = greedy_chain(self.model, self.final_norm, hidden, x.token, self.k)  # [b, k]
        self._write_drafts(step, x.nd, drafts)
