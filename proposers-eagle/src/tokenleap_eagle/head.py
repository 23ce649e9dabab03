"""The EAGLE head: one decoder layer over (token embedding, hidden state) rows, attending over its own paged KV.

Row alignment (both kinds): the row at position p takes the embedding of token x_{p+1} and a hidden state for
position p (the target's, or the head's own output of the previous draft step), and its output predicts x_{p+2}.

    eagle   x = fc([embed, h]);  attention input x (no input norm); residual x
    eagle3  a = [input_layernorm(embed), hidden_norm(h)] (2H); residual h (hidden_norm(h) when norm_before_residual)
    both    x = o_proj(attn(qkv_proj(a))) + residual;  out = x + down(silu(gate) * up)(post_attention_layernorm(x))

``out`` (pre-norm) is what the next draft step takes as h. Logits: eagle3 ``lm_head(norm(out))`` over the draft
vocabulary, mapped to target ids by ``draft_to_target``; eagle the target's LM head on ``out``.

The math lives in ``project`` (everything before attention) and ``finish`` (everything after), shared by the
paged forward here and the dense training forward (train/ttt.py), so the two cannot drift. Both run on the head's
``ops`` (``HeadOps``): the torch references by default (what training differentiates through), the Triton kernels
of core (few-row linears, RMSNorm, RoPE with the KV write, SiLU-and-mul) when the proposer runs it on CUDA, where
each reference op is several small kernels in the captured verify graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from tokenleap.kernels.fused_ref import rms_norm_ref, rope_and_write_kv_ref, rotary_embedding_ref, silu_and_mul_ref
from tokenleap.model.attention import AttentionMetadata, paged_attention
from tokenleap.model.layers import rope_cos_sin_cache, rope_inv_freq
from torch import nn
from torch.nn import functional as F

from tokenleap_eagle.config import HeadConfig


class HeadOps(NamedTuple):
    linear: Callable  # (x [n, K], weight [N, K], bias [N] | None) -> [n, N]
    rms_norm: Callable  # (x [n, H], weight [H], eps) -> [n, H]
    # (positions [n], q [n, heads, d], k, v [n, kv_heads, d], cos_sin_cache, k_cache, v_cache, slots [n]) -> q rotated;
    # k rotated and v written at the slots
    rope_and_write_kv: Callable
    silu_and_mul: Callable  # [n, 2 * I] -> [n, I]


def _torch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)  # looked up at each call (tests swap torch's linear for a row-invariant one)


TORCH_OPS = HeadOps(_torch_linear, rms_norm_ref, rope_and_write_kv_ref, silu_and_mul_ref)


def head_ops(backend: str) -> HeadOps:
    """The head's ops for an attention backend: core's Triton kernels for "triton", the torch references
    otherwise."""
    if backend != "triton":
        return TORCH_OPS
    from tokenleap.kernels import triton_fused as t
    from tokenleap.kernels.ops import layer_ops

    return HeadOps(layer_ops("triton").linear, t.rms_norm, t.rope_and_write_kv, t.silu_and_mul)


class EagleHead(nn.Module):
    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        lc = cfg.layer
        h, d = lc.hidden_size, lc.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = lc.num_attention_heads, lc.num_key_value_heads, d
        self.scale = d**-0.5
        self.eps = lc.rms_norm_eps
        self.fc = nn.Linear(cfg.fc_in_features, h, bias=cfg.fc_bias)
        self.qkv_proj = nn.Linear(cfg.qkv_in_features, (self.num_heads + 2 * self.num_kv_heads) * d,
                                  bias=lc.attention_bias)
        self.o_proj = nn.Linear(self.num_heads * d, h, bias=False)
        self.gate_up_proj = nn.Linear(h, 2 * lc.intermediate_size, bias=False)
        self.down_proj = nn.Linear(lc.intermediate_size, h, bias=False)
        self.post_attention_layernorm = nn.Parameter(torch.ones(h))
        if cfg.kind == "eagle3":
            self.input_layernorm = nn.Parameter(torch.ones(h))
            self.hidden_norm = nn.Parameter(torch.ones(h))
            self.norm = nn.Parameter(torch.ones(h))
            self.lm_head = nn.Linear(h, cfg.draft_vocab_size, bias=False)
            # d2t: target id = draft id + d2t[draft id] (the checkpoints' convention)
            self.register_buffer("d2t", torch.zeros(cfg.draft_vocab_size, dtype=torch.int64))
        self.embed_tokens = nn.Embedding(lc.vocab_size, h) if cfg.has_embedding else None
        inv_freq = rope_inv_freq(d, lc.rope_theta, lc.rope_type, lc.rope_factor, lc.rope_low_freq_factor,
                                 lc.rope_high_freq_factor, lc.rope_original_max_position)
        # A plain attribute (not a buffer): stays float32 when the weights are cast.
        self.cos_sin_cache = rope_cos_sin_cache(inv_freq, lc.max_position_embeddings + 64)  # [P, head_dim]
        self.ops = TORCH_OPS  # a plain attribute: the proposer sets head_ops(backend) for inference

    # ---- the math before and after attention (shared with training) ----

    def combine(self, aux: torch.Tensor) -> torch.Tensor:
        """eagle3: the target's three aux hidden states [n, 3 * target_hidden] -> h [n, hidden] (fc)."""
        return self.ops.linear(aux, self.fc.weight, self.fc.bias)

    def _project(self, embeds: torch.Tensor, h: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """embeds, h: [n, hidden] -> (q [n, heads, d], k, v [n, kv_heads, d] before RoPE, residual [n, hidden])."""
        ops = self.ops
        if self.cfg.kind == "eagle":
            x = ops.linear(torch.cat([embeds, h], dim=-1), self.fc.weight, self.fc.bias)  # [n, hidden]
            attn_in, residual = x, x
        else:
            normed_h = ops.rms_norm(h, self.hidden_norm, self.eps)
            attn_in = torch.cat([ops.rms_norm(embeds, self.input_layernorm, self.eps), normed_h], dim=-1)  # [n, 2H]
            residual = normed_h if self.cfg.norm_before_residual else h
        n, d = attn_in.shape[0], self.head_dim
        qkv = ops.linear(attn_in, self.qkv_proj.weight, self.qkv_proj.bias)
        q, k, v = qkv.split([self.num_heads * d, self.num_kv_heads * d, self.num_kv_heads * d], dim=-1)
        return (q.reshape(n, self.num_heads, d), k.reshape(n, self.num_kv_heads, d),
                v.reshape(n, self.num_kv_heads, d), residual)

    def _rope_cache(self, device: torch.device) -> torch.Tensor:
        if self.cos_sin_cache.device != device:
            self.cos_sin_cache = self.cos_sin_cache.to(device)
        return self.cos_sin_cache

    def project(self, embeds: torch.Tensor, h: torch.Tensor, positions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """embeds, h: [n, hidden]; positions [n] -> (q [n, heads, d], k, v [n, kv_heads, d] rotated, residual
        [n, hidden])."""
        q, k, v, residual = self._project(embeds, h)
        q, k = rotary_embedding_ref(positions, q, k, self._rope_cache(q.device))
        return q, k, v, residual

    def finish(self, attn: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """attn [n, heads * d], residual [n, hidden] -> the layer's output [n, hidden] (pre-norm)."""
        ops = self.ops
        x = ops.linear(attn, self.o_proj.weight, None) + residual
        act = ops.silu_and_mul(ops.linear(ops.rms_norm(x, self.post_attention_layernorm, self.eps),
                                          self.gate_up_proj.weight, None))
        return x + ops.linear(act, self.down_proj.weight, None)

    def draft_logits(self, out: torch.Tensor) -> torch.Tensor:
        """eagle3: out [n, hidden] -> [n, draft_vocab] float32 logits over the draft vocabulary."""
        return self.ops.linear(self.ops.rms_norm(out, self.norm, self.eps), self.lm_head.weight, None).float()

    def draft_to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """eagle3: draft-vocabulary ids -> target ids."""
        return draft_ids + self.d2t[draft_ids]

    def target_ids(self) -> torch.Tensor:
        """eagle3: [draft_vocab] the target id of every draft id."""
        return self.draft_to_target(torch.arange(self.cfg.draft_vocab_size, device=self.d2t.device))

    # ---- the paged forward (inference) ----

    def forward(
        self,
        embeds: torch.Tensor,  # [n, hidden]: embeddings of x_{p+1}
        h: torch.Tensor,  # [n, hidden]: hidden state of position p
        positions: torch.Tensor,  # [n] int64: p
        kv_cache: tuple[torch.Tensor, torch.Tensor],  # [num_blocks, block_size, kv_heads, d] each
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [n, hidden]
        q, k, v, residual = self._project(embeds, h)
        q = self.ops.rope_and_write_kv(positions, q, k, v, self._rope_cache(q.device), kv_cache[0], kv_cache[1],
                                       meta.slot_mapping)  # k rotated and v written at the slots
        o = paged_attention(q, kv_cache[0], kv_cache[1], meta, self.scale, None)  # [n, heads, d]
        return self.finish(o.reshape(q.shape[0], -1), residual)
