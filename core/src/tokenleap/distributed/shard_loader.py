"""Reading a checkpoint and building one rank's shard of it (rank 0 and the workers run the same code)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenleap.config import EngineConfig
from tokenleap.distributed.sharding import shard_arch, shard_weights
from tokenleap.engine.setup import _DTYPES, LoadedModel, random_init_
from tokenleap.kernels.ops import layer_ops
from tokenleap.model.arch import ModelArchConfig
from tokenleap.model.llama import LlamaForCausalLM


@dataclass
class Checkpoint:
    arch: ModelArchConfig  # the whole model's
    weights: dict[str, torch.Tensor] | None  # one rank's slices, HF names, on CPU; None for load_format="dummy"
    tokenizer: Any
    dtype: torch.dtype


def read_arch(model_path: Path) -> ModelArchConfig | None:
    """The architecture alone from a folder's config.json (no tensor read), else None: a GGUF's header takes
    about as long to parse as its tensors to read, so its checkpoint is read whole first."""
    if model_path.is_dir() and (model_path / "config.json").is_file():
        return ModelArchConfig.from_hf_config(json.loads((model_path / "config.json").read_text()))
    return None


def read_checkpoint(cfg: EngineConfig, model_path: Path, device: torch.device, rank: int, tp: int,
                    need_tokenizer: bool = True) -> Checkpoint:
    """Rank ``rank``'s slices of the checkpoint's weights (safetensors: only those are read), the whole model's
    architecture, and the tokenizer when asked."""
    if cfg.load_format == "dummy":
        config_file = model_path / "config.json" if model_path.is_dir() else model_path
        if not config_file.is_file():
            raise FileNotFoundError(f"load_format='dummy' needs a config.json; none at {config_file}")
        arch = ModelArchConfig.from_hf_config(json.loads(config_file.read_text()))
        dtype = _DTYPES.get(cfg.dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        tokenizer = None
        if need_tokenizer and ((model_path / "tokenizer.json").exists() or cfg.tokenizer):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or str(model_path))
        return Checkpoint(arch, None, tokenizer, dtype)
    from tokenleap.model.loader import load_checkpoint

    ckpt = load_checkpoint(str(model_path), dtype=cfg.dtype, device=device.type, with_tokenizer=need_tokenizer,
                           select=lambda weights, arch: shard_weights(weights, arch, rank, tp))
    if cfg.tokenizer is not None and need_tokenizer:
        from transformers import AutoTokenizer

        ckpt.tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    return Checkpoint(ckpt.arch, ckpt.weights, ckpt.tokenizer, ckpt.torch_dtype)


def build_shard(cfg: EngineConfig, ckpt: Checkpoint, device: torch.device, backend: str, rank: int, tp: int,
                ) -> LoadedModel:
    """Rank ``rank``'s ``LlamaForCausalLM`` of shard shapes on ``device`` (its ``cfg`` is the shard's
    architecture; ``LoadedModel.arch`` stays the whole model's). Dummy weights are random per rank (seeded by
    seed and rank): a benchmark shape, not the TP = 1 dummy model cut in pieces."""
    arch = shard_arch(ckpt.arch, tp)
    positions = cfg.max_model_len or ckpt.arch.max_position_embeddings
    with torch.device(device):
        model = LlamaForCausalLM(arch, positions + 64, layer_ops(backend)).to(ckpt.dtype)
    if ckpt.weights is None:
        random_init_(model, torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank))
    else:
        model.load_hf_weights(ckpt.weights)
    return LoadedModel(model.eval(), ckpt.arch, ckpt.tokenizer, ckpt.dtype)


def load_shard(cfg: EngineConfig, model_path: Path, device: torch.device, backend: str, rank: int, tp: int,
               ) -> LoadedModel:
    """Rank ``rank``'s shard of the checkpoint at ``model_path`` (no tokenizer), ready to run with the other ranks:
    its collectives set (``use_tensor_parallel``). ``LoadedModel.arch`` is the whole model's."""
    from tokenleap.distributed.parallel import TensorParallel

    loaded = build_shard(cfg, read_checkpoint(cfg, model_path, device, rank, tp, need_tokenizer=False), device,
                         backend, rank, tp)
    loaded.model.use_tensor_parallel(TensorParallel(rank, tp, loaded.arch.vocab_size, loaded.model.cfg.vocab_size))
    loaded.model.attention_backend = backend
    return loaded


def proposer_model_config(cfg: EngineConfig, settings: dict) -> EngineConfig:
    """The engine's settings with a proposer's model's load settings in (``settings``, as rank 0 broadcasts them:
    path, load_format, dtype name, max_positions, seed): what every rank loads its shard of that model with."""
    return cfg.model_copy(update={
        "model": settings["path"], "load_format": settings["load_format"], "dtype": settings["dtype"],
        "max_model_len": settings["max_positions"], "tokenizer": None, "seed": settings["seed"]})
