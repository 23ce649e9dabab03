"""``ProposerContext.model_loader`` as the engine implements it: a proposer's own model (a draft) loaded as the
engine runs models. With ``draft_tensor_parallel_size`` 1 the model is whole, on this process's device (rank 0
under tensor parallelism); with the target's size every rank loads its shard (``TensorParallelGroup.load_draft``),
and the model's KV cache, which the proposer declares for the whole model, is split by KV heads like the model and
allocated on every rank. See docs/tensor-parallel.md."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenleap_plugins import KVCacheNeeds, ModelLoader

from tokenleap.config import EngineConfig
from tokenleap.engine import setup
from tokenleap.model.arch import ModelArchConfig
from tokenleap.model.hub import resolve_model

DRAFT_TP = "speculative_config.draft_tensor_parallel_size"


class EngineModelLoader:
    def __init__(self, cfg: EngineConfig, device: torch.device, backend: str) -> None:
        self.cfg, self.device, self.backend = cfg, device, backend
        self.draft_tp = (cfg.speculative_config or {}).get("draft_tensor_parallel_size") or 1
        self.dtype: torch.dtype | None = None  # the target's, once it is loaded
        self.group = None  # the TensorParallelGroup, when the target runs sharded
        self.sharded: ModelArchConfig | None = None  # the whole architecture of the model loaded sharded

    def contract(self) -> ModelLoader:
        return ModelLoader(load=self.load, check=self.check)

    def target_loaded(self, dtype: torch.dtype, group) -> None:
        self.dtype, self.group = dtype, group

    def check(self, path: str, load_format: str = "auto") -> None:
        """The model can run at the draft's tensor-parallel size: its heads, KV heads and MLP split over the
        ranks. Reads the architecture only."""
        if self.draft_tp == 1:
            return
        from tokenleap.distributed.sharding import check_divisible

        check_divisible(self._arch(path, load_format), self.draft_tp, DRAFT_TP, "the draft's",
                        f" (speculative_config.model={path!r})")

    def load(self, path: str, load_format: str = "auto", max_positions: int | None = None):
        if self.dtype is None:
            raise RuntimeError("ModelLoader.load is called from the proposer's build, once the target is loaded")
        path = str(path)
        if self.draft_tp == 1:
            return setup.load_weights(resolve_model(path), str(self.dtype).removeprefix("torch."), self.device,
                                      max_positions, self.backend, load_format, self.cfg.seed).model
        self.check(path, load_format)
        model = self.group.load_draft(path, load_format, self.dtype, max_positions)
        self.sharded = model.cfg
        return model

    def local_kv_heads(self, needs: KVCacheNeeds) -> int:
        """KV heads of this rank's share of the proposer's cache: all of them, or the sharded model's shard."""
        if self.sharded is None:
            return needs.num_kv_heads
        from tokenleap.distributed.sharding import shard_arch

        arch = self.sharded
        want = (arch.num_hidden_layers, arch.num_key_value_heads, arch.head_dim)
        if (needs.num_layers, needs.num_kv_heads, needs.head_dim) != want:
            raise ValueError(
                f"the proposer's KVCacheNeeds (layers, KV heads, head size) = "
                f"{(needs.num_layers, needs.num_kv_heads, needs.head_dim)} are not those of the model it loaded "
                f"sharded {want}: at {DRAFT_TP}={self.draft_tp} the engine splits that model's cache by its KV heads")
        return shard_arch(arch, self.draft_tp).num_key_value_heads

    def allocate_on_workers(self, num_blocks: int, block_size: int, dtype: torch.dtype) -> None:
        """Every worker allocates its shard of the sharded model's KV cache (rank 0's is the proposer's)."""
        if self.sharded is not None:
            from tokenleap.distributed import protocol

            self.group.allocate(num_blocks, block_size, dtype, protocol.DRAFT)

    def _arch(self, path: str, load_format: str) -> ModelArchConfig:
        model_path = resolve_model(path)
        if load_format == "dummy":
            return setup.dummy_arch(Path(model_path))
        from tokenleap.model.loader import read_arch

        return read_arch(model_path)
