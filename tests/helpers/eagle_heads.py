"""Random EAGLE heads written in the exact public checkpoint layouts (tensor names, shapes, config keys), for tests.

Each writer takes the target's dimensions and returns the folder. Names and config keys as the public heads
carry them: yuhuili/EAGLE-* (EAGLE-1/2), yuhuili/EAGLE3-* and SpecForge (EAGLE-3), vllm-project/speculators.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _layer_dims(hidden: int, vocab: int, heads: int = 4, kv_heads: int = 2, intermediate: int = 96) -> dict:
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_attention_heads=heads,
                num_key_value_heads=kv_heads, num_hidden_layers=1, vocab_size=vocab, rms_norm_eps=1e-6,
                rope_theta=10000.0, max_position_embeddings=256, hidden_act="silu", model_type="llama")


def _rand(g: torch.Generator, *shape: int, scale: float | None = None) -> torch.Tensor:
    scale = scale if scale is not None else shape[-1] ** -0.5
    return torch.randn(*shape, generator=g) * scale


def _layer_tensors(g, prefix: str, hidden: int, qkv_in: int, heads: int, kv_heads: int, inter: int,
                   eagle3: bool) -> dict[str, torch.Tensor]:
    d = hidden // heads
    t = {
        f"{prefix}self_attn.q_proj.weight": _rand(g, heads * d, qkv_in),
        f"{prefix}self_attn.k_proj.weight": _rand(g, kv_heads * d, qkv_in),
        f"{prefix}self_attn.v_proj.weight": _rand(g, kv_heads * d, qkv_in),
        f"{prefix}self_attn.o_proj.weight": _rand(g, hidden, heads * d),
        f"{prefix}mlp.gate_proj.weight": _rand(g, inter, hidden),
        f"{prefix}mlp.up_proj.weight": _rand(g, inter, hidden),
        f"{prefix}mlp.down_proj.weight": _rand(g, hidden, inter),
        f"{prefix}post_attention_layernorm.weight": 1 + 0.1 * torch.randn(hidden, generator=g),
    }
    if eagle3:
        t[f"{prefix}input_layernorm.weight"] = 1 + 0.1 * torch.randn(hidden, generator=g)
        t[f"{prefix}hidden_norm.weight"] = 1 + 0.1 * torch.randn(hidden, generator=g)
    return t


def _save(folder: Path, config: dict, tensors: dict[str, torch.Tensor], fmt: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if fmt == "bin":
        torch.save(tensors, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def write_eagle1_head(folder: Path, hidden: int, vocab: int, seed: int = 0, fmt: str = "bin",
                      with_embedding: bool = True) -> Path:
    """yuhuili/EAGLE-*: LlamaConfig + ``bias``; fc [H, 2H] with bias; layers.0.* without input_layernorm."""
    g = torch.Generator().manual_seed(seed)
    cfg = {"architectures": ["LlamaForCausalLM"], "bias": True, "torch_dtype": "float16",
           **_layer_dims(hidden, vocab)}
    t = {"fc.weight": _rand(g, hidden, 2 * hidden), "fc.bias": 0.02 * torch.randn(hidden, generator=g)}
    t.update(_layer_tensors(g, "layers.0.", hidden, hidden, 4, 2, 96, eagle3=False))
    if with_embedding:
        t["embed_tokens.weight"] = torch.randn(vocab, hidden, generator=g)
    return _save(folder, cfg, t, fmt)


def _vocab_map(g, vocab: int, draft_vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(d2t [draft_vocab] int64 offsets, t2d [vocab] bool) for a random sorted subset of the target vocabulary."""
    keep = torch.randperm(vocab, generator=g)[:draft_vocab].sort().values
    d2t = keep - torch.arange(draft_vocab)
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[keep] = True
    return d2t, t2d


def write_eagle3_head(folder: Path, hidden: int, vocab: int, draft_vocab: int, seed: int = 0, fmt: str = "bin",
                      aux_layers: list[int] | None = None, heads: int = 4, kv_heads: int = 2,
                      intermediate: int = 96, dtype: torch.dtype = torch.float32) -> Path:
    """yuhuili/EAGLE3-* / SpecForge: midlayer.* (q/k/v in 2H, hidden_norm), fc [H, 3H], norm, lm_head
    [draft_vocab, H], d2t, t2d; config with draft_vocab_size, architectures LlamaForCausalLMEagle3. ``heads``,
    ``kv_heads``, ``intermediate`` and ``dtype`` (of the float tensors) give a full-size head for benchmarks."""
    g = torch.Generator().manual_seed(seed)
    cfg = {"architectures": ["LlamaForCausalLMEagle3"], "draft_vocab_size": draft_vocab, "torch_dtype": "bfloat16",
           **_layer_dims(hidden, vocab, heads, kv_heads, intermediate)}
    if aux_layers is not None:
        cfg["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": aux_layers, "use_aux_hidden_state": True}
    t = {"fc.weight": _rand(g, hidden, 3 * hidden), "norm.weight": 1 + 0.1 * torch.randn(hidden, generator=g),
         "lm_head.weight": _rand(g, draft_vocab, hidden, scale=1.0)}
    t.update(_layer_tensors(g, "midlayer.", hidden, 2 * hidden, heads, kv_heads, intermediate, eagle3=True))
    t = {k: v.to(dtype) if v.is_floating_point() else v for k, v in t.items()}
    t["d2t"], t["t2d"] = _vocab_map(g, vocab, draft_vocab)
    return _save(folder, cfg, t, fmt)


def write_speculators_eagle3_head(folder: Path, hidden: int, vocab: int, draft_vocab: int, seed: int = 0,
                                  aux_layers: list[int] | None = None, norm_before_residual: bool = False) -> Path:
    """vllm-project/speculators: speculators_model_type eagle3, transformer_layer_config, layers.0.*."""
    g = torch.Generator().manual_seed(seed)
    layer = {"architectures": ["LlamaForCausalLM"], **_layer_dims(hidden, vocab)}
    cfg = {
        "architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3", "speculators_version": "0.1.0",
        "transformer_layer_config": layer, "draft_vocab_size": draft_vocab,
        "norm_before_residual": norm_before_residual, "target_hidden_size": None,
        "speculators_config": {
            "algorithm": "eagle3", "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 5}],
            "verifier": {"name_or_path": "tiny-llama", "architectures": ["LlamaForCausalLM"]},
        },
    }
    if aux_layers is not None:
        cfg["eagle_aux_hidden_state_layer_ids"] = aux_layers
    t = {"fc.weight": _rand(g, hidden, 3 * hidden), "norm.weight": 1 + 0.1 * torch.randn(hidden, generator=g),
         "lm_head.weight": _rand(g, draft_vocab, hidden, scale=1.0)}
    t.update(_layer_tensors(g, "layers.0.", hidden, 2 * hidden, 4, 2, 96, eagle3=True))
    t["d2t"], t["t2d"] = _vocab_map(g, vocab, draft_vocab)
    return _save(folder, cfg, t, "safetensors")
