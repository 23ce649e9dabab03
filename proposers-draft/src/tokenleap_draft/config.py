"""Keys of ``speculative_config`` for method ``"draft_model"`` beyond the common ones (``model`` is required;
``max_model_len`` caps speculation; ``draft_tensor_parallel_size`` 1 runs the draft whole on the engine's process,
the target's tensor_parallel_size shards it over the target's ranks)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class DraftModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # "dummy": random weights of the draft's config.json shape (for speed measurements, as the target's
    # load_format="dummy"); drafts are then mostly rejected, output stays exact.
    draft_load_format: Literal["auto", "dummy"] = "auto"
