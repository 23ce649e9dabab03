"""Llama-family decoder (Llama 2/3/3.x, Mistral, Qwen2/2.5, SmolLM/SmolLM2) over a paged KV cache.

The forward takes one flat batch of new tokens of many requests (prefill chunks, decode tokens and
1 + k verification tokens alike) and never loops over tokens in Python. Parameters are loaded from
Hugging Face names; q/k/v and gate/up are fused into one projection each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from tokenleap.kernels.ops import LayerOps
from tokenleap.model.arch import ModelArchConfig
from tokenleap.model.attention import AttentionMetadata, paged_attention
from tokenleap.model.layers import RMSNorm, rope_cos_sin_cache, rope_inv_freq

KVCache = tuple[torch.Tensor, torch.Tensor]  # k, v: [num_blocks, block_size, num_kv_heads, head_dim]


class LlamaAttention(nn.Module):
    tp = None  # a tokenleap.distributed.parallel.TensorParallel on a tensor-parallel shard: o_proj's sum

    def __init__(self, cfg: ModelArchConfig, ops: LayerOps) -> None:
        super().__init__()
        self.ops = ops
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.sliding_window = cfg.sliding_window
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)

    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim], rotated (the layer's norm_qkv_rope wrote k and v)
        kv_cache: KVCache,
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, hidden]
        o = paged_attention(q, kv_cache[0], kv_cache[1], meta, self.scale, self.sliding_window)
        out = self.ops.linear(o.reshape(q.shape[0], self.q_size), self.o_proj.weight, self.o_proj.bias)
        return out if self.tp is None else self.tp.all_reduce(out)


class LlamaMLP(nn.Module):
    """Holds gate/up (fused) and down; the layer runs them through LayerOps.norm_swiglu / linear."""

    def __init__(self, cfg: ModelArchConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block on a residual stream: returns (block output, residual) without adding them, so the
    next block's norm fuses the add (HF: residual = residual + output, then norm). Each norm runs together with
    the projection after it, one kernel where that measured faster: the attention's input norm with the qkv
    projection, RoPE and the KV-cache write (LayerOps.norm_qkv_rope), the MLP's norm with the gate/up
    projection and SiLU-and-mul (LayerOps.norm_swiglu)."""

    tp = None  # on a tensor-parallel shard: down_proj's sum

    def __init__(self, cfg: ModelArchConfig, ops: LayerOps) -> None:
        super().__init__()
        self.ops = ops
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg, ops)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x, residual, positions, cos_sin_cache, kv_cache, meta):
        # x, residual: [num_tokens, hidden] (residual None before the first layer) -> (output, residual)
        ops, attn, mlp = self.ops, self.self_attn, self.mlp
        norm = self.input_layernorm
        q, new_residual = ops.norm_qkv_rope(x, residual, norm.weight, norm.eps, attn.qkv_proj.weight,
                                            attn.qkv_proj.bias, positions, cos_sin_cache, kv_cache[0], kv_cache[1],
                                            meta.slot_mapping, attn.num_heads, attn.num_kv_heads)
        residual = x if residual is None else new_residual
        h = attn(q, kv_cache, meta)
        norm = self.post_attention_layernorm
        act, residual = ops.norm_swiglu(h, residual, norm.weight, norm.eps, mlp.gate_up_proj.weight,
                                        mlp.gate_up_proj.bias)  # [num_tokens, intermediate]
        out = ops.linear(act, mlp.down_proj.weight, None)
        return (out if self.tp is None else self.tp.all_reduce(out)), residual


class LlamaForCausalLM(nn.Module):
    tp = None  # on a tensor-parallel shard (cfg then holds the shard's heads / columns / vocabulary rows)

    def __init__(self, cfg: ModelArchConfig, max_positions: int, ops: LayerOps) -> None:
        super().__init__()
        self.cfg = cfg
        self.ops = ops
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, ops) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # A plain attribute, not a buffer: it stays float32 when the weights are cast to bf16/fp16.
        self.cos_sin_cache = _rope_cache(cfg, max_positions)  # [max_positions, head_dim] fp32

    @classmethod
    def uninitialized(cls, cfg: ModelArchConfig, max_positions: int, ops: LayerOps, device: torch.device,
                      dtype: torch.dtype) -> LlamaForCausalLM:
        """The model with its parameters allocated on ``device`` but not initialized, for ``load_hf_weights`` to
        fill: the random initialization it skips costs seconds on a CPU (135M values for SmolLM2)."""
        with torch.device("meta"):
            model = cls(cfg, max_positions, ops)
        model = model.to_empty(device=device).to(dtype)
        with torch.device(device):
            model.cos_sin_cache = _rope_cache(cfg, max_positions)
        return model

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens]
        positions: torch.Tensor,  # [num_tokens]
        kv_caches: Sequence[KVCache],
        meta: AttentionMetadata,
        hidden_state_layers: Sequence[int] = (),
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Returns the final-norm hidden states [num_tokens, hidden] and {layer: [num_tokens, hidden]} for the
        requested layers: ``i >= 0`` the input of decoder layer ``i`` (the residual stream before it: the
        embedding for 0), ``i < 0`` the output of decoder layer ``N + i`` (``-1``: the last layer's output, before
        the final norm)."""
        wanted = hidden_state_boundaries(hidden_state_layers, len(self.layers))  # boundary -> requested indices
        aux: dict[int, torch.Tensor] = {}
        if self.tp is None:
            x, residual = self.embed_tokens(input_ids), None  # [num_tokens, hidden]
        else:
            x, residual = self.tp.embed(input_ids, self.embed_tokens.weight), None
        x, residual = self.run_layers(x, residual, positions, kv_caches, meta, 0, len(self.layers), wanted, aux)
        return self.final_norm(x, residual), aux

    def run_layers(self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
                   kv_caches: Sequence[KVCache], meta: AttentionMetadata, start: int, stop: int,
                   wanted: Mapping[int, Sequence[int]] | None = None, aux: dict[int, torch.Tensor] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder layers ``start..stop-1`` on the residual stream (``residual`` None before layer 0):
        returns (block output, residual), both [num_tokens, hidden]. ``wanted`` (layer boundary -> requested
        indices, ``hidden_state_boundaries``): the residual stream at each boundary in ``start..stop-1`` (and at
        ``stop`` when it is the last layer's output) is put in ``aux`` under the requested indices."""
        last = len(self.layers)
        for i in range(start, stop):
            if wanted and i in wanted:
                _capture(aux, wanted[i], x, residual)
            x, residual = self.layers[i](x, residual, positions, self.cos_sin_cache, kv_caches[i], meta)
        if wanted and stop == last and last in wanted:
            _capture(aux, wanted[last], x, residual)
        return x, residual

    def final_norm(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:  # [num_tokens, hidden]
        normed, _ = self.ops.fused_add_rms_norm(x, residual, self.norm.weight, self.norm.eps)
        return normed

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, vocab] fp32
        return self.raw_logits(hidden).float()

    def raw_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, vocab] in the weights' dtype
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return self.ops.linear(hidden, weight, None)

    def use_tensor_parallel(self, tp) -> None:
        """Make this model a tensor-parallel shard: its row-parallel outputs and embedding are summed over
        the ranks through ``tp`` (tokenleap.distributed.parallel.TensorParallel)."""
        self.tp = tp
        for layer in self.layers:
            layer.tp = layer.self_attn.tp = tp

    @torch.no_grad()
    def load_hf_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Copy Hugging Face-named tensors in, fusing q/k/v and gate/up. Fails on missing or extra names."""
        params = dict(self.named_parameters())
        expected = _hf_names(self.cfg)
        missing = sorted(set(expected) - set(weights))
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensor(s), e.g. {missing[:5]}")
        for i in range(self.cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            attn = self.layers[i].self_attn
            attn.qkv_proj.weight.copy_(torch.cat([weights[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]))
            if self.cfg.attention_bias:
                attn.qkv_proj.bias.copy_(torch.cat([weights[p + f"self_attn.{n}_proj.bias"] for n in "qkv"]))
            attn.o_proj.weight.copy_(weights[p + "self_attn.o_proj.weight"])
            mlp = self.layers[i].mlp
            mlp.gate_up_proj.weight.copy_(
                torch.cat([weights[p + "mlp.gate_proj.weight"], weights[p + "mlp.up_proj.weight"]])
            )
            mlp.down_proj.weight.copy_(weights[p + "mlp.down_proj.weight"])
            self.layers[i].input_layernorm.weight.copy_(weights[p + "input_layernorm.weight"])
            self.layers[i].post_attention_layernorm.weight.copy_(weights[p + "post_attention_layernorm.weight"])
        params["embed_tokens.weight"].copy_(weights["model.embed_tokens.weight"])
        params["norm.weight"].copy_(weights["model.norm.weight"])
        if self.lm_head is not None:
            self.lm_head.weight.copy_(weights["lm_head.weight"])


def _capture(aux: dict[int, torch.Tensor], layers: Sequence[int], x: torch.Tensor,
             residual: torch.Tensor | None) -> None:
    stream = x if residual is None else x + residual  # [num_tokens, hidden]
    for layer in layers:
        aux[layer] = stream


def hidden_state_boundaries(layers: Sequence[int], num_layers: int) -> dict[int, list[int]]:
    """Layer-boundary index (0: the embedding, ``num_layers``: the last layer's output) -> the requested layer
    indices that name it (``i >= 0``: input of layer ``i``; ``i < 0``: output of layer ``num_layers + i``)."""
    out: dict[int, list[int]] = {}
    for i in layers:
        boundary = i if i >= 0 else num_layers + 1 + i
        if not 0 <= boundary <= num_layers:
            raise ValueError(f"hidden_state_layers: {i} is outside a model of {num_layers} layers "
                             f"(allowed {-num_layers}..{num_layers})")
        out.setdefault(boundary, []).append(i)
    return out


def _rope_cache(cfg: ModelArchConfig, max_positions: int) -> torch.Tensor:  # [max_positions, head_dim] fp32
    inv_freq = rope_inv_freq(
        cfg.head_dim, cfg.rope_theta, cfg.rope_type, cfg.rope_factor, cfg.rope_low_freq_factor,
        cfg.rope_high_freq_factor, cfg.rope_original_max_position,
    )
    return rope_cos_sin_cache(inv_freq, max_positions)


def _hf_names(cfg: ModelArchConfig) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        names += [p + f"self_attn.{n}_proj.weight" for n in "qkvo"]
        if cfg.attention_bias:
            names += [p + f"self_attn.{n}_proj.bias" for n in "qkv"]
        names += [p + f"mlp.{n}_proj.weight" for n in ("gate", "up", "down")]
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    return names
