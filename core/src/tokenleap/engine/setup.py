"""Building the parts of an engine: device, model weights, KV cache size."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch

from tokenleap.config import EngineConfig
from tokenleap.kernels.dispatch import attention_backend
from tokenleap.kernels.ops import LayerOps, layer_ops
from tokenleap.model.arch import ModelArchConfig
from tokenleap.model.llama import KVCache, LlamaForCausalLM

log = structlog.get_logger("tokenleap")

CPU_DEFAULT_KV_BYTES = 1 << 30
_DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "float16": torch.float16, "half": torch.float16}


def pick_device(cfg: EngineConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is visible to torch; use device='cpu' or 'auto'")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def pick_backend(cfg: EngineConfig, device: torch.device) -> str:
    if cfg.quantization is not None and device.type != "cpu":
        raise ValueError(f"quantization={cfg.quantization!r} runs on the CPU (ATen's CPU kernels); the device is "
                         f"{device.type!r}: pass device='cpu'")
    dtype = _DTYPES.get(cfg.model_dtype)  # None for "auto"
    activations = str(dtype).removeprefix("torch.") if dtype is not None else cfg.model_dtype  # the canonical name
    return attention_backend(device.type, cfg.attention_backend, activations)


def warn_if_rows_vary(backend: str, dtype: torch.dtype) -> None:
    """Speculation on the CPU path in bfloat16 relies on a row's bits not depending on the rows beside it
    (``kernels/cpu_linear.py``); warn, once the engine has a proposer, where this process's matmul breaks that."""
    if backend != "cpu" or dtype != torch.bfloat16:
        return
    from tokenleap.kernels.cpu_linear import bf16_rows_invariant

    if not bf16_rows_invariant():
        log.warning("this process's bfloat16 matmul gives a row other bits in a batch than alone (oneDNN's AMX "
                    "kernels, initialized before tokenleap was imported): speculative output can differ from plain "
                    "decoding in rare tokens; set ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 before the process's first "
                    "matmul, or use dtype='float32'")


@dataclass
class LoadedModel:
    model: LlamaForCausalLM
    arch: ModelArchConfig
    tokenizer: Any  # transformers tokenizer, or None for dummy weights without tokenizer files
    dtype: torch.dtype


def load_model(cfg: EngineConfig, model_path: Path, device: torch.device, max_positions: int | None,
               backend: str) -> LoadedModel:
    return load_weights(model_path, cfg.model_dtype, device, max_positions, backend, cfg.load_format, cfg.seed,
                        cfg.tokenizer, cfg.quantization)


def load_weights(model_path: Path, dtype: str, device: torch.device, max_positions: int | None, backend: str,
                 load_format: str = "auto", seed: int = 0, tokenizer: str | None = None,
                 quantization: str | None = None) -> LoadedModel:
    """A Llama-family model from a checkpoint (or random weights of its config.json's shape with ``"dummy"``),
    on ``device``, its RoPE table long enough for ``max_positions`` (default: the model's). ``quantization``
    ("int8" / "int4", CPU): the linears packed from the float32 weights, the rest bfloat16 (``model/quantize``)."""
    ops = layer_ops(backend)
    if load_format == "dummy":
        loaded = _dummy_model("float32" if quantization else dtype, model_path, device, max_positions, ops, seed,
                              tokenizer)
        return _quantized(loaded, quantization)
    from tokenleap.model.loader import load_checkpoint

    ckpt = load_checkpoint(str(model_path), dtype="float32" if quantization else dtype, device=device.type)
    if tokenizer is not None:
        from transformers import AutoTokenizer

        ckpt.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    arch = ckpt.arch
    positions = max_positions or arch.max_position_embeddings
    model = LlamaForCausalLM.uninitialized(arch, positions + 64, ops, device, ckpt.torch_dtype)
    model.load_hf_weights(ckpt.weights)  # copy_ moves each tensor to the device; every parameter is written
    return _quantized(LoadedModel(model.eval(), arch, ckpt.tokenizer, ckpt.torch_dtype), quantization)


def _quantized(loaded: LoadedModel, quantization: str | None) -> LoadedModel:
    if quantization is None:
        return loaded
    from tokenleap.model.quantize import quantize_model_

    quantize_model_(loaded.model, quantization)
    return LoadedModel(loaded.model, loaded.arch, loaded.tokenizer, torch.bfloat16)


def dummy_arch(model_path: Path) -> ModelArchConfig:
    """The architecture ``load_format="dummy"`` builds: the config.json's."""
    config_file = model_path / "config.json" if model_path.is_dir() else model_path
    if not config_file.is_file():
        raise FileNotFoundError(f"load_format='dummy' needs a config.json; none at {config_file}")
    return ModelArchConfig.from_hf_config(json.loads(config_file.read_text()))


def _dummy_model(dtype_name: str, model_path: Path, device: torch.device, max_positions: int | None,
                 ops: LayerOps, seed: int, tokenizer_path: str | None):
    """Random weights of the config.json's shape (``load_format="dummy"``), built on the device."""
    arch = dummy_arch(model_path)
    dtype = _DTYPES.get(dtype_name) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    positions = max_positions or arch.max_position_embeddings
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(arch, positions + 64, ops).to(dtype)
    random_init_(model, gen)
    tokenizer = None
    if (model_path / "tokenizer.json").exists() or tokenizer_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or str(model_path))
    return LoadedModel(model.eval(), arch, tokenizer, dtype)


@torch.no_grad()
def random_init_(model: torch.nn.Module, generator: torch.Generator) -> None:
    """``load_format="dummy"``'s weights: norms 1, everything else N(0, 0.02)."""
    for name, param in model.named_parameters():
        if "norm" in name:
            param.fill_(1.0)
        else:
            param.normal_(0.0, 0.02, generator=generator)


def kv_bytes_per_block(arch: ModelArchConfig, block_size: int, dtype: torch.dtype) -> int:
    elem = torch.tensor([], dtype=dtype).element_size()
    return 2 * arch.num_hidden_layers * block_size * arch.num_key_value_heads * arch.head_dim * elem


def num_kv_blocks(cfg: EngineConfig, arch: ModelArchConfig, dtype: torch.dtype, device: torch.device,
                  max_num_batched_tokens: int, max_model_len: int, extra_bytes_per_block: int = 0) -> int:
    """Blocks from the memory budget, capped at what ``max_num_seqs`` full-length requests can use
    twice over (the spare half keeps prefixes cached); a small model does not take the whole GPU.
    ``extra_bytes_per_block``: a proposer's own KV cache, which has as many blocks as the target's."""
    if cfg.num_gpu_blocks_override is not None:
        return cfg.num_gpu_blocks_override
    per_block = kv_bytes_per_block(arch, cfg.block_size, dtype) + extra_bytes_per_block
    if cfg.kv_cache_memory_bytes is not None:
        budget = cfg.kv_cache_memory_bytes
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        in_use = total - free
        # Activations of the largest step: a generous estimate of the transient tensors of one layer
        # plus the logits rows.
        act = max_num_batched_tokens * (6 * arch.hidden_size + 3 * arch.intermediate_size) * 4
        act += min(max_num_batched_tokens, 4096) * arch.vocab_size * 4 * 3
        budget = int(total * cfg.gpu_memory_utilization) - in_use - act
    else:
        budget = CPU_DEFAULT_KV_BYTES
    blocks = min(budget // per_block, 2 * cfg.max_num_seqs * (-(-(max_model_len + 33) // cfg.block_size)) + 1)
    if blocks < 2:
        raise ValueError(
            f"the KV cache budget ({budget} bytes) holds {blocks} blocks of {per_block} bytes; "
            f"raise gpu_memory_utilization or kv_cache_memory_bytes"
        )
    return int(blocks)


def allocate_kv_caches(arch: ModelArchConfig, num_blocks: int, block_size: int, dtype: torch.dtype,
                       device: torch.device) -> list[KVCache]:
    return paged_kv_caches(arch.num_hidden_layers, arch.num_key_value_heads, arch.head_dim, num_blocks, block_size,
                           dtype, device)


def paged_kv_caches(num_layers: int, num_kv_heads: int, head_dim: int, num_blocks: int, block_size: int,
                    dtype: torch.dtype, device: torch.device) -> list[KVCache]:
    """Per layer (k, v), each [num_blocks, block_size, num_kv_heads, head_dim], zeroed."""
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    return [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(num_layers)]


def torch_dtype(name: str | None, default: torch.dtype) -> torch.dtype:
    """A dtype name ("bfloat16", "float32", ...) as a torch dtype; None gives ``default``."""
    if name is None:
        return default
    if name not in _DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[name]
