"""The shape of an EAGLE head as plain values, whatever checkpoint layout it came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tokenleap.model.arch import ModelArchConfig

KINDS = ("eagle", "eagle3")


@dataclass(frozen=True)
class HeadConfig:
    """kind: "eagle" (EAGLE-1/2: fc over [embed, h] then one decoder layer without input norm; the target's LM
    head) or "eagle3" (fc over three aux hidden states; a layer whose q/k/v read [norm(embed), norm(h)]; its own
    norm and LM head over a draft vocabulary mapped to the target's through d2t).

    layer: the decoder layer's dimensions and RoPE (a Llama config); layer.vocab_size is the target vocabulary.
    """

    kind: str
    layer: ModelArchConfig
    draft_vocab_size: int  # eagle: == layer.vocab_size (the target's LM head)
    target_hidden_size: int  # the hidden size of the target whose states feed fc
    fc_bias: bool = False
    norm_before_residual: bool = False  # eagle3: the residual is hidden_norm(h) instead of h
    aux_layer_ids: tuple[int, ...] | None = None  # eagle3: the target layers it was trained on, if recorded
    has_embedding: bool = False  # the checkpoint carries its own embed_tokens (else the target's is shared)
    layout: str = ""  # which checkpoint layout it was read from (for messages)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"head kind={self.kind!r}; allowed: {list(KINDS)}")

    @property
    def hidden_size(self) -> int:
        return self.layer.hidden_size

    @property
    def fc_in_features(self) -> int:
        if self.kind == "eagle":
            return 2 * self.hidden_size  # [embed, h]
        return 3 * self.target_hidden_size  # three aux hidden states

    @property
    def qkv_in_features(self) -> int:
        return self.hidden_size * (2 if self.kind == "eagle3" else 1)


def layer_config(cfg: Mapping[str, Any], max_model_len: int | None = None) -> ModelArchConfig:
    """The Llama layer config of a head's config dict; ``max_position_embeddings`` raised to max_model_len."""
    cfg = dict(cfg)
    cfg["model_type"] = "llama"
    cfg.setdefault("num_hidden_layers", 1)
    if max_model_len is not None:
        cfg["max_position_embeddings"] = max(int(cfg.get("max_position_embeddings") or 0), int(max_model_len))
    return ModelArchConfig.from_hf_config(cfg)
