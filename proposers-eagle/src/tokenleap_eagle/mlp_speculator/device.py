"""The MLP speculator's device drafter (``tokenleap_plugins.DeviceDrafter``): its k greedy stages run inside the
captured verify graph, from the previous step's emitted tokens and last-layer hidden states, so the engine launches
each verify step behind the one before it with no host sync between them.

Per fed row: the state after the last emitted token (the hidden row of the query that emitted it, and that token:
``tokenleap.speculative.device_inputs.draft_step_inputs``, which also writes the verify step's frame), the stages
(``greedy.greedy_chain``, what the host path runs), then the drafts' ids (``write_drafts``). The speculator keeps
no KV cache, so the only state a row carries between steps is how many tokens it knows (``KnownLengths``).
"""

from __future__ import annotations

from tokenleap.speculative.device_inputs import ModelDrafterBase
from tokenleap_plugins import DeviceDraftingSpec, DeviceDraftStep

from tokenleap_eagle.mlp_speculator.greedy import FinalNorm, greedy_chain
from tokenleap_eagle.mlp_speculator.model import MLPSpeculator

HIDDEN_LAYER = -1  # the target's last layer output, before its final norm (MLPSpeculatorProposer.needs)


class MLPDeviceDrafter(ModelDrafterBase):
    def __init__(self, model: MLPSpeculator, final_norm: FinalNorm, spec: DeviceDraftingSpec) -> None:
        self.model, self.final_norm = model, final_norm
        super().__init__(spec)

    def draft(self, step: DeviceDraftStep) -> None:
        b = step.feed.shape[0]
        x = self.inputs(step, self.lengths.tensor, self.k, self.shift)  # the verify frame written, lengths moved on
        h = step.hidden_states[HIDDEN_LAYER]  # [>= b, q', H]
        last = x.catch_up.rows[:, -1:].clamp(max=h.shape[1] - 1)  # [b, 1] the query row of the last emitted token
        hidden = h[:b].gather(1, last[:, :, None].expand(b, 1, h.shape[2])).squeeze(1)  # [b, H]
        drafts = greedy_chain(self.model, self.final_norm, hidden, x.token, self.k)  # [b, k]
        self.write_drafts(step, x.nd, drafts)
