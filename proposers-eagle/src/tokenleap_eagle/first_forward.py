"""The head's catch-up and first draft of a decode or verify step (every run at most ``q = k + 1`` rows) over rows
padded to ``bucket`` requests of ``q`` (``tokenleap.speculative.padded_inputs``): on CUDA with the Triton kernels
one captured graph per bucket (``PaddedFirstForward``), elsewhere the same padded forward run eagerly.

The graph runs the head's whole catch-up: the target's hidden rows combined (eagle3: fc of the three layers;
eagle: the target's final norm), the embedding, the head layer (keys and values written at the runs' slots, the
padding rows' at the null slot 0), and the argmax of each drafting run's last row. The target's hidden-state
tensors are not the same from step to step, so the rows are gathered by index (on the device, from the uploaded
``gather`` field) into a static buffer just before the replay: one ``index_select`` per layer outside the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from tokenleap.model.attention import AttentionMetadata
from tokenleap.speculative.padded_forward import PaddedFirstForward
from tokenleap.speculative.padded_inputs import Run

from tokenleap_eagle.chain import BUCKETS, Pick

# (ids [n] int64, the target's hidden rows per layer [n, target_hidden] each, positions [n] int64, meta) -> the
# head's output [n, hidden]; writes the head's KV
RowsForward = Callable[[torch.Tensor, list[torch.Tensor], torch.Tensor, AttentionMetadata], torch.Tensor]


class FirstForward(PaddedFirstForward):
    def __init__(self, rows_forward: RowsForward, pick: Pick, layers: Sequence[int], target_hidden: int,
                 block_size: int, max_len: int, backend: str, device: torch.device, width: int, q: int) -> None:
        """``rows_forward``, ``pick``: the proposer's head over catch-up rows and greedy choice; ``layers``: the
        target layers the head reads (keys of the step's hidden states), each ``target_hidden`` wide; ``width``:
        blocks per padded block table; ``q``: the longest run that takes this path (k + 1)."""
        super().__init__(self._head_rows, block_size, max_len, backend, device, width, q, BUCKETS)
        self.rows_forward, self.pick = rows_forward, pick
        self.layers, self.target_hidden = tuple(layers), target_hidden
        self.hidden_dtype: torch.dtype | None = None  # the target's, fixed at the first step seen
        self._hidden: dict[int, torch.Tensor] = {}  # bucket -> [len(layers), bucket * q, target_hidden]

    def fits(self, hidden_states: Mapping[int, torch.Tensor]) -> bool:
        """Whether the step's hidden states can be gathered into the static buffers (the dtype, width and device
        they were made for)."""
        if self.hidden_dtype is None and self.layers[0] in hidden_states:
            self.hidden_dtype = hidden_states[self.layers[0]].dtype
        return all(i in hidden_states and hidden_states[i].dtype == self.hidden_dtype
                   and hidden_states[i].shape[-1] == self.target_hidden
                   and hidden_states[i].device.type == self.device.type for i in self.layers)

    def run(self, runs: Sequence[Run], drafting: Sequence[int], bucket: int,  # type: ignore[override]
            hidden_rows: Sequence[int], hidden_states: Mapping[int, torch.Tensor]
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes the head's KV of the runs' rows; returns (g [len(drafting), hidden]: the head's output at each
        drafting run's last row, first [len(drafting)] int64: its greedy draft). On CUDA views of the graph's
        output buffers, valid until the next run of this bucket."""

        def gather(b: int, io: dict[str, torch.Tensor]) -> None:
            rows = self._buffer(b)
            for j, i in enumerate(self.layers):
                torch.index_select(hidden_states[i], 0, io["gather"], out=rows[j])

        self._buffer(bucket)  # before a capture: the graph reads it, the gather writes it
        g, first = super().run(runs, drafting, bucket, hidden_rows, gather)
        return g[: len(drafting)], first[: len(drafting)]

    def _buffer(self, bucket: int) -> torch.Tensor:  # [len(layers), bucket * q, target_hidden]
        if bucket not in self._hidden:
            self._hidden[bucket] = torch.zeros(len(self.layers), bucket * self.q, self.target_hidden,
                                               dtype=self.hidden_dtype or torch.float32, device=self.device)
        return self._hidden[bucket]

    def _head_rows(self, io: dict[str, torch.Tensor], meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded catch-up: (g [bucket, hidden] at the rows ``last_rows`` names, their argmax [bucket])."""
        hidden = self._buffer(io["last_rows"].shape[0])
        out = self.rows_forward(io["ids"], list(hidden.unbind(0)), io["positions"], meta)  # [bucket * q, hidden]
        g = out.index_select(0, io["last_rows"])  # [bucket, hidden]
        return g, self.pick(g)
