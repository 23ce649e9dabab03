"""Building a proposer: the context it is told, the KV cache it asks for, the device drafter it offers."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenleap_plugins import (
    DeviceDrafter,
    DeviceDraftingSpec,
    Proposer,
    ProposerContext,
    ProposerKVCache,
    TargetHandles,
)

from tokenleap.distributed.errors import TensorParallelWorkerError
from tokenleap.engine import setup
from tokenleap.model.arch import ModelArchConfig
from tokenleap.model.llama import LlamaForCausalLM
from tokenleap.model.quantize import dense_weight
from tokenleap.speculative.config import ResolvedSpeculativeConfig
from tokenleap.speculative.model_loader import EngineModelLoader


def target_handles(model: LlamaForCausalLM, tokenizer) -> TargetHandles:
    # tied: the embedding (a quantized model's LM head is a packed copy of it); untied: the head, dense
    lm_head = model.embed_tokens.weight if model.cfg.tie_word_embeddings else dense_weight(model.lm_head.weight)
    return TargetHandles(
        embed=model.embed_tokens, compute_logits=model.compute_logits,
        final_norm=lambda h: model.final_norm(h, torch.zeros_like(h)),
        embedding_weight=model.embed_tokens.weight, lm_head_weight=lm_head, tokenizer=tokenizer,
    )


def proposer_context(spec_cfg: ResolvedSpeculativeConfig, arch: ModelArchConfig, max_model_len: int, seed: int,
                     device: torch.device, dtype: str, block_size: int, backend: str, model_path: Path,
                     load_format: str, loader: EngineModelLoader | None = None,
                     cuda_graphs: bool = True) -> ProposerContext:
    """What the proposer is told, less the target's handles (added once the target is loaded)."""
    return ProposerContext(
        num_speculative_tokens=spec_cfg.num_speculative_tokens, vocab_size=arch.vocab_size,
        max_model_len=max_model_len, seed=seed, device=str(device), dtype=dtype,
        hidden_size=arch.hidden_size, num_hidden_layers=arch.num_hidden_layers, eos_token_ids=arch.eos_token_ids,
        block_size=block_size, attention_backend=backend, speculative=spec_cfg.settings,
        target_model_path=str(model_path), target_load_format=load_format,
        model_loader=loader.contract() if loader is not None else None, cuda_graphs=cuda_graphs,
    )


def preflight(spec_cfg: ResolvedSpeculativeConfig, context: ProposerContext) -> None:
    """The method's checks that need no weights, before the target's load."""
    if spec_cfg.spec.preflight is not None:
        spec_cfg.spec.preflight(spec_cfg.method_config, context)


def build_proposer(spec_cfg: ResolvedSpeculativeConfig, context: ProposerContext) -> Proposer:
    arch_layers = context.num_hidden_layers
    method = spec_cfg.common.method
    try:
        proposer = spec_cfg.spec.build(spec_cfg.method_config, context)
    except (ValueError, FileNotFoundError, TypeError, TensorParallelWorkerError):
        raise  # the method's own configuration errors, as it worded them; a rank of the engine that failed
    except Exception as exc:
        raise RuntimeError(f"building the proposer of method {method!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(proposer, Proposer):
        raise TypeError(f"method {method!r}: build() returned {type(proposer).__name__}, not a Proposer")
    for i in proposer.needs.hidden_state_layers:
        if not -arch_layers <= i <= arch_layers:
            raise ValueError(f"method {method!r} asks for hidden state layer {i}; the target has {arch_layers} "
                             f"layers (allowed {-arch_layers}..{arch_layers})")
    return proposer


def proposer_kv_bytes_per_block(proposer: Proposer, block_size: int, target_dtype: torch.dtype,
                                loader: EngineModelLoader | None = None) -> int:
    """Bytes per block of this process's share of the proposer's KV cache."""
    needs = proposer.needs.kv_cache
    if needs is None:
        return 0
    heads = loader.local_kv_heads(needs) if loader is not None else needs.num_kv_heads
    elem = torch.tensor([], dtype=setup.torch_dtype(needs.dtype, target_dtype)).element_size()
    return 2 * needs.num_layers * block_size * heads * needs.head_dim * elem


def bind_proposer_kv_cache(proposer: Proposer, num_blocks: int, block_size: int, target_dtype: torch.dtype,
                           device: torch.device, loader: EngineModelLoader | None = None) -> None:
    """The proposer's KV cache: this process's share, bound to the proposer; the workers allocate theirs when its
    model runs sharded."""
    needs = proposer.needs.kv_cache
    if needs is None:
        return
    dtype = setup.torch_dtype(needs.dtype, target_dtype)
    heads = loader.local_kv_heads(needs) if loader is not None else needs.num_kv_heads
    layers = setup.paged_kv_caches(needs.num_layers, heads, needs.head_dim, num_blocks, block_size, dtype, device)
    if loader is not None:
        loader.allocate_on_workers(num_blocks, block_size, dtype)
    proposer.bind_kv_cache(ProposerKVCache(layers, num_blocks, block_size))


def device_drafter(proposer: Proposer, max_rows: int, k: int, max_model_len: int, block_size: int,
                   device: torch.device, backend: str) -> DeviceDrafter | None:
    """The proposer's device drafter, when it offers one: it drafts what ``propose`` drafts, from the tokens and
    the previous step's hidden states of ``needs.hidden_state_layers`` (``DeviceDraftStep.hidden_states``). A
    proposer whose state follows every step offers one only if the drafter keeps that state itself."""
    offer = getattr(proposer, "device_drafter", None)
    if offer is None:
        return None
    return offer(DeviceDraftingSpec(max_rows, 1 + k, max_model_len, block_size, str(device), backend))
