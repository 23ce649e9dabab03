"""The draft's first forward of a step (catch-up over the tokens the target kept, then the last token, whose logits
give the first draft) over inputs padded to ``bucket`` requests of ``q`` rows (``tokenleap.speculative.
padded_inputs``): on CUDA with the Triton kernels a captured graph per bucket, elsewhere the same padded forward run
eagerly (the CPU tests' path). The buffers, the upload and the graphs are ``PaddedFirstForward``'s; this module
gives it the draft model's forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tokenleap.model.attention import AttentionMetadata
from tokenleap.model.llama import KVCache, LlamaForCausalLM
from tokenleap.speculative.padded_forward import PaddedFirstForward
from tokenleap.speculative.padded_inputs import Run

from tokenleap_draft.chain import BUCKETS


class FirstForward(PaddedFirstForward):
    def __init__(self, model: LlamaForCausalLM, kv_caches: Sequence[KVCache], block_size: int, max_seq_len: int,
                 backend: str, device: torch.device, width: int, q: int) -> None:
        """``width``: blocks per padded block table (static); ``q``: the longest run that takes this path (1 + k
        tokens a verify step kept and the last token: k + 2); a bucket of ``b`` requests has ``b * q`` rows."""
        self.model, self.kv = model, kv_caches
        super().__init__(self._logits, block_size, max_seq_len, backend, device, width, q, BUCKETS)

    def run(self, runs: Sequence[Run], drafting: Sequence[int], bucket: int) -> torch.Tensor:  # type: ignore[override]
        """Writes the runs' keys and values; returns the logits [len(drafting), vocab] fp32 of the drafting runs'
        (indices into ``runs``) last tokens. On CUDA the result is the graph's output buffer, valid until the next
        run of this bucket."""
        return super().run(runs, drafting, bucket)[0][: len(drafting)]

    def _logits(self, io: dict[str, torch.Tensor], meta: AttentionMetadata) -> tuple[torch.Tensor]:
        """[bucket, vocab] fp32 logits of the rows ``last_rows`` names."""
        hidden, _ = self.model(io["ids"], io["positions"], self.kv, meta)  # [bucket * q, hidden]
        return (self.model.compute_logits(hidden.index_select(0, io["last_rows"])),)
