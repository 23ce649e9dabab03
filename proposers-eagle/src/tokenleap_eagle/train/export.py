"""A fresh EAGLE-3 head shaped for a target, and writing a head in the EAGLE-3 (yuhuili) layout."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from tokenleap.model.arch import ModelArchConfig

from tokenleap_eagle.checkpoint import canonical_state
from tokenleap_eagle.config import HeadConfig
from tokenleap_eagle.head import EagleHead


def head_config_for(target: ModelArchConfig, draft_vocab_size: int, aux_layers: tuple[int, ...]) -> HeadConfig:
    """An EAGLE-3 head with the target's layer dimensions (no attention bias)."""
    layer = replace(target, num_hidden_layers=1, attention_bias=False, sliding_window=None,
                    tie_word_embeddings=False, model_type="llama")
    return HeadConfig(kind="eagle3", layer=layer, draft_vocab_size=draft_vocab_size,
                      target_hidden_size=target.hidden_size, aux_layer_ids=tuple(aux_layers), layout="eagle3")


@torch.no_grad()
def init_head(head: EagleHead, target_model, draft_ids: torch.Tensor, seed: int) -> None:
    """Small random layer weights; norm and lm_head start as the target's final norm and LM head rows of the
    draft vocabulary (the head's output then starts out speaking the target's language); d2t set."""
    g = torch.Generator().manual_seed(seed)
    for lin in (head.fc, head.qkv_proj, head.o_proj, head.gate_up_proj, head.down_proj):
        w = torch.randn(lin.weight.shape, generator=g) * (lin.weight.shape[1] ** -0.5)
        lin.weight.copy_(w)
        if lin.bias is not None:
            lin.bias.zero_()
    head.o_proj.weight.mul_(0.1)
    head.down_proj.weight.mul_(0.1)
    head.norm.copy_(target_model.norm.weight.float())
    lm = target_model.embed_tokens.weight if target_model.lm_head is None else target_model.lm_head.weight
    head.lm_head.weight.copy_(lm[draft_ids.to(lm.device)].float())
    head.d2t.copy_(draft_ids - torch.arange(len(draft_ids)))


def layer_config_dict(cfg: HeadConfig) -> dict:
    lc = cfg.layer
    out = {
        "model_type": "llama", "hidden_size": lc.hidden_size, "intermediate_size": lc.intermediate_size,
        "num_attention_heads": lc.num_attention_heads, "num_key_value_heads": lc.num_key_value_heads,
        "head_dim": lc.head_dim, "num_hidden_layers": 1, "rms_norm_eps": lc.rms_norm_eps,
        "rope_theta": lc.rope_theta, "max_position_embeddings": lc.max_position_embeddings,
        "vocab_size": lc.vocab_size, "hidden_act": "silu", "attention_bias": False, "tie_word_embeddings": False,
    }
    if lc.rope_type != "default":
        out["rope_scaling"] = {"rope_type": lc.rope_type, "factor": lc.rope_factor,
                               "low_freq_factor": lc.rope_low_freq_factor,
                               "high_freq_factor": lc.rope_high_freq_factor,
                               "original_max_position_embeddings": lc.rope_original_max_position}
    return out


def save_eagle3(head: EagleHead, folder: str | Path, extra: dict | None = None) -> Path:
    """config.json + model.safetensors (bf16; d2t int64, t2d bool) in the EAGLE-3 layout the loader reads."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = head.cfg
    config = {"architectures": ["LlamaForCausalLMEagle3"], **layer_config_dict(cfg),
              "draft_vocab_size": cfg.draft_vocab_size, "target_hidden_size": cfg.target_hidden_size,
              "torch_dtype": "bfloat16",
              "eagle_config": {"eagle_aux_hidden_state_layer_ids": list(cfg.aux_layer_ids or ()),
                               "use_aux_hidden_state": True}}
    if extra:
        config["tokenleap"] = extra
    tensors = {n: (t.to(torch.bfloat16) if t.is_floating_point() else t).cpu().contiguous()
               for n, t in canonical_state(head).items()}
    t2d = torch.zeros(cfg.layer.vocab_size, dtype=torch.bool)
    t2d[head.target_ids().cpu()] = True
    tensors["t2d"] = t2d
    tmp = folder / "model.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
