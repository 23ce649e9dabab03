"""One MTP layer over its own paged KV cache (core's Llama-family decoder layer in the middle).

Row at position ``p`` takes ``(embed(x_{p+1}), h_p)``, where ``h_p`` is the target's final-normed hidden state at
``p`` (or, for the 2nd.. draft, this layer's own state of the row before), and predicts ``x_{p+2}``. As in vLLM,
the embedding of a row at position 0 is zeroed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from tokenleap.kernels.fused_ref import rms_norm_ref
from tokenleap.kernels.ops import LayerOps
from tokenleap.model.arch import ModelArchConfig
from tokenleap.model.attention import AttentionMetadata
from tokenleap.model.layers import rope_cos_sin_cache, rope_inv_freq
from tokenleap.model.llama import KVCache, LlamaDecoderLayer
from torch import nn

from tokenleap_eagle.mtp.layouts import MTPWeights


class MTPLayer(nn.Module):
    def __init__(self, arch: ModelArchConfig, weights: MTPWeights, ops: LayerOps, max_positions: int) -> None:
        super().__init__()
        h = arch.hidden_size
        self.eps = arch.rms_norm_eps
        self.embed_first = weights.embed_first
        self.state_is_normed = weights.state_is_normed
        self.embed_norm = nn.Parameter(weights.embed_norm.clone(), requires_grad=False)
        self.hidden_norm = nn.Parameter(weights.hidden_norm.clone(), requires_grad=False)
        self.output_norm = nn.Parameter(weights.output_norm.clone(), requires_grad=False)
        if tuple(weights.input_proj.shape) != (h, 2 * h):
            raise ValueError(f"MTP input projection has shape {tuple(weights.input_proj.shape)}; the target's "
                             f"hidden size {h} implies {(h, 2 * h)}")
        self.input_proj = nn.Linear(2 * h, h, bias=False)
        self.decoder = LlamaDecoderLayer(arch, ops)
        self.ops = ops
        inv_freq = rope_inv_freq(arch.head_dim, arch.rope_theta, arch.rope_type, arch.rope_factor,
                                 arch.rope_low_freq_factor, arch.rope_high_freq_factor, arch.rope_original_max_position)
        self.cos_sin_cache = rope_cos_sin_cache(inv_freq, max_positions)  # [max_positions, head_dim] fp32
        with torch.no_grad():
            self.input_proj.weight.copy_(weights.input_proj)
            load_decoder_layer(self.decoder, weights.decoder, arch.attention_bias)

    def forward(
        self,
        embeds: torch.Tensor,  # [n, hidden]: embeddings of x_{p+1}
        states: torch.Tensor,  # [n, hidden]: h_p (target, final-normed) or this layer's previous state
        positions: torch.Tensor,  # [n] int64
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (next states [n, hidden], LM-head inputs [n, hidden])
        embeds = torch.where((positions == 0)[:, None], torch.zeros_like(embeds), embeds)
        e = rms_norm_ref(embeds, self.embed_norm, self.eps)
        s = rms_norm_ref(states, self.hidden_norm, self.eps)
        x = self.ops.linear(torch.cat([e, s] if self.embed_first else [s, e], dim=-1), self.input_proj.weight, None)
        out, residual = self.decoder(x, None, positions, self.cos_sin_cache.to(x.device), kv_cache, meta)
        h = out + residual
        normed = rms_norm_ref(h, self.output_norm, self.eps)
        return (normed if self.state_is_normed else h), normed


@torch.no_grad()
def load_decoder_layer(layer: LlamaDecoderLayer, t: Mapping[str, torch.Tensor], bias: bool) -> None:
    """HF-named tensors of one decoder layer (``self_attn.q_proj.weight``, ...) into core's fused layer."""
    attn, mlp = layer.self_attn, layer.mlp
    attn.qkv_proj.weight.copy_(torch.cat([t[f"self_attn.{n}_proj.weight"] for n in "qkv"]))
    if bias:
        attn.qkv_proj.bias.copy_(torch.cat([t[f"self_attn.{n}_proj.bias"] for n in "qkv"]))
    attn.o_proj.weight.copy_(t["self_attn.o_proj.weight"])
    mlp.gate_up_proj.weight.copy_(torch.cat([t["mlp.gate_proj.weight"], t["mlp.up_proj.weight"]]))
    mlp.down_proj.weight.copy_(t["mlp.down_proj.weight"])
    layer.input_layernorm.weight.copy_(t["input_layernorm.weight"])
    layer.post_attention_layernorm.weight.copy_(t["post_attention_layernorm.weight"])
