"""The MLP speculator of "Accelerating Production LLMs with Combined Token/Embedding Speculators"
(arXiv 2404.19124; IBM fms-extras), with the parameter names and maths of its published checkpoints.

Stage ``i`` (0 .. n_predict - 1) turns the state and the last token into the next state and its logits::

    state_{i+1} = GELU(LN_i(proj_i(state_i) + emb_i(token_i) * emb_weight / state_weight))
    logits_i    = head_i(state_{i+1})

``LN_i`` is an RMS normalisation with a learned scale and shift (no mean subtraction); since it is
scale-invariant, the sum equals ``state_weight * proj + emb_weight * emb`` up to its eps.
``state_weight = 0.5 ** (0.5 / n_predict)``, ``emb_weight = sqrt((1 - state_weight**2) * inner_dim / 2)``.
``state_0`` is the target's final (normed) hidden state of the last token it computed, ``token_0`` the token that
hidden state predicted; with ``scale_input`` it first goes through an RMS normalisation without parameters and a
division by sqrt(2). ``tie_weights`` shares one embedding, one head, one LN and one inner projection
(``proj_1``) across the stages (``proj_0`` keeps its own: it maps emb_dim to inner_dim).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

LN_EPS = 1e-6


@dataclass(frozen=True)
class MLPSpeculatorConfig:
    emb_dim: int  # the target's hidden size
    inner_dim: int  # the state's size (0 in config.json means emb_dim)
    vocab_size: int
    n_predict: int  # stages: the most tokens drafted per step
    tie_weights: bool = False
    scale_input: bool = False
    top_k_tokens_per_head: tuple[int, ...] = ()  # tree drafting in fms-extras; chains use the top 1

    @property
    def state_weight(self) -> float:
        return 0.5 ** (0.5 / self.n_predict)

    @property
    def emb_weight(self) -> float:
        return math.sqrt((1 - self.state_weight**2) * (self.inner_dim / 2))

    def to_json(self) -> dict:
        return {
            "architectures": ["MLPSpeculatorPreTrainedModel"], "model_type": "mlp_speculator",
            "emb_dim": self.emb_dim, "inner_dim": self.inner_dim, "vocab_size": self.vocab_size,
            "n_predict": self.n_predict, "tie_weights": self.tie_weights, "scale_input": self.scale_input,
            "top_k_tokens_per_head": list(self.top_k_tokens_per_head) or [1] * self.n_predict,
        }


def rms_layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float = LN_EPS) -> torch.Tensor:  # [..., d] -> [..., d]
    """fms-extras' LayerNormParameterized as the MLP speculator uses it: x / rms(x), then * weight + bias."""
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight + bias
    return y


class SpeculatorLayerNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_layer_norm(x, self.weight, self.bias)


class MLPSpeculator(nn.Module):
    """Parameters under the checkpoint's names: emb.{i}.weight [vocab, inner], proj.{i}.weight [inner, emb_dim
    or inner], head.{i}.weight [vocab, inner], ln.{i}.weight / ln.{i}.bias [inner]."""

    def __init__(self, cfg: MLPSpeculatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n, d, inner, vocab = cfg.n_predict, cfg.emb_dim, cfg.inner_dim, cfg.vocab_size
        if cfg.tie_weights:
            emb, head, ln = nn.Embedding(vocab, inner), nn.Linear(inner, vocab, bias=False), SpeculatorLayerNorm(inner)
            proj_first, proj_tied = nn.Linear(d, inner, bias=False), nn.Linear(inner, inner, bias=False)
            self.emb = nn.ModuleList([emb] * n)
            self.proj = nn.ModuleList([proj_first] + [proj_tied] * (n - 1))
            self.head = nn.ModuleList([head] * n)
            self.ln = nn.ModuleList([ln] * n)
        else:
            self.emb = nn.ModuleList(nn.Embedding(vocab, inner) for _ in range(n))
            self.proj = nn.ModuleList(nn.Linear(d if i == 0 else inner, inner, bias=False) for i in range(n))
            self.head = nn.ModuleList(nn.Linear(inner, vocab, bias=False) for _ in range(n))
            self.ln = nn.ModuleList(SpeculatorLayerNorm(inner) for _ in range(n))

    def input_state(self, hidden: torch.Tensor) -> torch.Tensor:  # [..., emb_dim] final-normed target hidden
        if self.cfg.scale_input:
            return rms_layer_norm(hidden, None, None) / math.sqrt(2)
        return hidden

    def stage(self, i: int, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """state [..., emb_dim or inner], tokens [...] int64 -> next state [..., inner]."""
        cfg = self.cfg
        z = self.emb[i](tokens)  # [..., inner]
        s = self.proj[i](state) + z * (cfg.emb_weight / cfg.state_weight)
        return F.gelu(self.ln[i](s))

    def logits(self, i: int, state: torch.Tensor) -> torch.Tensor:  # [..., inner] -> [..., vocab] float32
        return self.head[i](state).float()

    def forward_teacher_forced(self, hidden: torch.Tensor, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Training: hidden [b, t, emb_dim] (final-normed; row j predicts token j + 1), tokens [b, t + n_predict]
        with tokens[:, j + 1] the token row j predicted. Stage i at row j sees the true tokens up to j + 1 + i
        and predicts token j + 2 + i. Returns per stage logits [b, t, vocab] (rows whose target falls past the
        sequence are the caller's to mask)."""
        t = hidden.shape[1]
        state = self.input_state(hidden)
        out = []
        for i in range(self.cfg.n_predict):
            state = self.stage(i, state, tokens[:, 1 + i : 1 + i + t])
            out.append(self.logits(i, state))
        return out
