"""Read an EAGLE head from any of the common checkpoint layouts into an ``EagleHead``.

Layouts (detected from config.json and the tensor names):

    eagle     EAGLE-1/2 (yuhuili/EAGLE-*): LlamaConfig-like config (``bias``: fc has a bias); tensors ``fc.weight``
              [H, 2H] (+ ``fc.bias``), ``layers.0.*`` without ``input_layernorm``; no LM head (the target's).
    eagle3    EAGLE-3 (yuhuili/EAGLE3-*, SpecForge): config with ``draft_vocab_size`` (architectures
              ``LlamaForCausalLMEagle3``); ``midlayer.*`` (q/k/v take 2H, ``hidden_norm``), ``fc.weight`` [H, 3H],
              ``norm.weight``, ``lm_head.weight`` [draft_vocab, H], ``d2t`` [draft_vocab] (target = draft + d2t),
              ``t2d`` [vocab] bool.
    speculators  vllm-project/speculators (``speculators_model_type: "eagle3"``): the layer config under
              ``transformer_layer_config``, ``eagle_aux_hidden_state_layer_ids``, ``speculators_config.verifier``;
              the same tensors with the layer under ``layers.0.*``.

Weights come from ``model.safetensors`` (sharded or not) or ``pytorch_model.bin`` read through torch's restricted
unpickler only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tokenleap.model.loader import pickled_weight_files, read_pickled_weights

from tokenleap_eagle.config import HeadConfig, layer_config
from tokenleap_eagle.head import EagleHead

IGNORED = ("rotary_emb.inv_freq", "t2d")


def read_head_config(folder: Path, max_model_len: int | None = None) -> tuple[HeadConfig, dict[str, Any]]:
    """(HeadConfig, the raw config.json) of a head folder; max_position_embeddings raised to max_model_len."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"EAGLE head folder {folder} has no config.json")
    raw = json.loads(path.read_text())
    if "speculators_model_type" in raw:
        kind = raw["speculators_model_type"]
        if kind != "eagle3":
            raise ValueError(f"{path}: speculators_model_type={kind!r} is not supported; supported: ['eagle3']")
        layer_cfg = raw.get("transformer_layer_config")
        if not isinstance(layer_cfg, dict):
            raise ValueError(f"{path}: a speculators eagle3 config needs a transformer_layer_config object")
        layer = layer_config(layer_cfg, max_model_len)
        aux = raw.get("eagle_aux_hidden_state_layer_ids")
        cfg = HeadConfig(
            kind="eagle3", layer=layer,
            draft_vocab_size=int(raw.get("draft_vocab_size") or layer.vocab_size),
            target_hidden_size=int(raw.get("target_hidden_size") or layer.hidden_size),
            norm_before_residual=bool(raw.get("norm_before_residual", True)),  # vLLM's default for this layout
            aux_layer_ids=tuple(int(i) for i in aux) if aux else None, layout="speculators",
        )
        return cfg, raw
    layer = layer_config(raw, max_model_len)
    archs = raw.get("architectures") or []
    if "draft_vocab_size" in raw or any("Eagle3" in a for a in archs):
        aux = raw.get("eagle_aux_hidden_state_layer_ids") or (raw.get("eagle_config") or {}).get(
            "eagle_aux_hidden_state_layer_ids")
        cfg = HeadConfig(
            kind="eagle3", layer=layer,
            draft_vocab_size=int(raw.get("draft_vocab_size") or layer.vocab_size),
            target_hidden_size=int(raw.get("target_hidden_size") or layer.hidden_size),
            norm_before_residual=bool(raw.get("norm_before_residual", False)),
            aux_layer_ids=tuple(int(i) for i in aux) if aux else None, layout="eagle3",
        )
        return cfg, raw
    return HeadConfig(kind="eagle", layer=layer, draft_vocab_size=layer.vocab_size,
                      target_hidden_size=layer.hidden_size, fc_bias=bool(raw.get("bias", False)),
                      layout="eagle"), raw


def read_head_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the head folder (safetensors, else pytorch_model.bin through the restricted unpickler)."""
    from tokenleap.model.loader import _safetensors_files

    files = _safetensors_files(folder)
    weights: dict[str, torch.Tensor] = {}
    if files:
        from safetensors.torch import load_file

        for f in files:
            weights.update(load_file(str(f)))
        return weights
    pickled = pickled_weight_files(folder)
    if not pickled:
        raise ValueError(f"EAGLE head folder {folder} has no *.safetensors and no pytorch_model.bin")
    for f in pickled:
        weights.update(read_pickled_weights(f))
    return weights


def canonical_names(cfg: HeadConfig, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The layout's tensor names -> ``midlayer.*`` / ``fc`` / ``norm`` / ``lm_head`` / ``d2t`` (EAGLE-3 names;
    EAGLE-1's layer also goes under ``midlayer.``). A leading ``model.`` is dropped."""
    out = {}
    for name, t in weights.items():
        name = name.removeprefix("model.")
        if name.startswith("layers.0."):
            name = "midlayer." + name.removeprefix("layers.0.")
        out[name] = t
    return out


def _expected(cfg: HeadConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape of every tensor the head needs."""
    lc = cfg.layer
    h, d, i = lc.hidden_size, lc.head_dim, lc.intermediate_size
    qkv_in = cfg.qkv_in_features
    m = "midlayer."
    shapes: dict[str, tuple[int, ...]] = {
        "fc.weight": (h, cfg.fc_in_features),
        m + "self_attn.q_proj.weight": (lc.num_attention_heads * d, qkv_in),
        m + "self_attn.k_proj.weight": (lc.num_key_value_heads * d, qkv_in),
        m + "self_attn.v_proj.weight": (lc.num_key_value_heads * d, qkv_in),
        m + "self_attn.o_proj.weight": (h, lc.num_attention_heads * d),
        m + "mlp.gate_proj.weight": (i, h),
        m + "mlp.up_proj.weight": (i, h),
        m + "mlp.down_proj.weight": (h, i),
        m + "post_attention_layernorm.weight": (h,),
    }
    if cfg.fc_bias:
        shapes["fc.bias"] = (h,)
    if lc.attention_bias:
        for p in "qkv":
            shapes[m + f"self_attn.{p}_proj.bias"] = (shapes[m + f"self_attn.{p}_proj.weight"][0],)
    if cfg.kind == "eagle3":
        shapes[m + "input_layernorm.weight"] = (h,)
        shapes[m + "hidden_norm.weight"] = (h,)
        shapes["norm.weight"] = (h,)
        shapes["lm_head.weight"] = (cfg.draft_vocab_size, h)
        shapes["d2t"] = (cfg.draft_vocab_size,)
    return shapes


def _with_detected_biases(cfg: HeadConfig, weights: Mapping[str, torch.Tensor]) -> HeadConfig:
    """fc / attention biases as the tensors say (configs disagree on how they record them)."""
    from dataclasses import replace

    fc_bias = "fc.bias" in weights
    attn_bias = "midlayer.self_attn.q_proj.bias" in weights
    layer = cfg.layer if attn_bias == cfg.layer.attention_bias else replace(cfg.layer, attention_bias=attn_bias)
    return replace(cfg, fc_bias=fc_bias, layer=layer, has_embedding=cfg.kind == "eagle3" and "embed_tokens.weight"
                   in weights)


def check_weights(cfg: HeadConfig, weights: Mapping[str, torch.Tensor], source: str) -> None:
    """Missing, unexpected or misshapen tensors fail with their names and both shapes."""
    expected = _expected(cfg)
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise ValueError(f"EAGLE head {source} ({cfg.layout} layout) lacks {len(missing)} tensor(s): {missing[:6]}")
    allowed = set(expected) | {"embed_tokens.weight"}
    unexpected = sorted(n for n in set(weights) - allowed if not n.endswith(IGNORED))
    if unexpected:
        raise ValueError(f"EAGLE head {source} ({cfg.layout} layout) has tensor(s) this layout does not use: "
                         f"{unexpected[:6]}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"EAGLE head {source}: tensor {name} has shape {tuple(weights[name].shape)}, the "
                             f"config (hidden_size={cfg.hidden_size}, num_attention_heads="
                             f"{cfg.layer.num_attention_heads}, head_dim={cfg.layer.head_dim}) needs {shape}")


def load_head(path: str | Path, max_model_len: int | None = None, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu") -> EagleHead:
    """An EagleHead with the folder's weights, in dtype on device."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"EAGLE head path {str(path)!r} is not a folder (config.json + weights expected)")
    cfg, _ = read_head_config(folder, max_model_len)
    weights = canonical_names(cfg, read_head_weights(folder))
    cfg = _with_detected_biases(cfg, weights)
    check_weights(cfg, weights, str(folder))
    with torch.device(device):
        head = EagleHead(cfg)
    _copy_in(head, weights)
    return head.to(dtype).eval()


@torch.no_grad()
def _copy_in(head: EagleHead, w: Mapping[str, torch.Tensor]) -> None:
    m = "midlayer."
    head.fc.weight.copy_(w["fc.weight"])
    if head.fc.bias is not None:
        head.fc.bias.copy_(w["fc.bias"])
    head.qkv_proj.weight.copy_(torch.cat([w[m + f"self_attn.{p}_proj.weight"] for p in "qkv"]))
    if head.qkv_proj.bias is not None:
        head.qkv_proj.bias.copy_(torch.cat([w[m + f"self_attn.{p}_proj.bias"] for p in "qkv"]))
    head.o_proj.weight.copy_(w[m + "self_attn.o_proj.weight"])
    head.gate_up_proj.weight.copy_(torch.cat([w[m + "mlp.gate_proj.weight"], w[m + "mlp.up_proj.weight"]]))
    head.down_proj.weight.copy_(w[m + "mlp.down_proj.weight"])
    head.post_attention_layernorm.copy_(w[m + "post_attention_layernorm.weight"])
    if head.cfg.kind == "eagle3":
        head.input_layernorm.copy_(w[m + "input_layernorm.weight"])
        head.hidden_norm.copy_(w[m + "hidden_norm.weight"])
        head.norm.copy_(w["norm.weight"])
        head.lm_head.weight.copy_(w["lm_head.weight"])
        head.d2t.copy_(w["d2t"].to(torch.int64))
    if head.embed_tokens is not None:
        head.embed_tokens.weight.copy_(w["embed_tokens.weight"])


def canonical_state(head: EagleHead) -> dict[str, torch.Tensor]:
    """The head's tensors under EAGLE-3 (yuhuili) names: the inverse of ``_copy_in``."""
    m, d = "midlayer.", head.head_dim
    q, k, v = head.qkv_proj.weight.split([head.num_heads * d, head.num_kv_heads * d, head.num_kv_heads * d])
    gate, up = head.gate_up_proj.weight.chunk(2)
    out = {"fc.weight": head.fc.weight, m + "self_attn.q_proj.weight": q, m + "self_attn.k_proj.weight": k,
           m + "self_attn.v_proj.weight": v, m + "self_attn.o_proj.weight": head.o_proj.weight,
           m + "mlp.gate_proj.weight": gate, m + "mlp.up_proj.weight": up,
           m + "mlp.down_proj.weight": head.down_proj.weight,
           m + "post_attention_layernorm.weight": head.post_attention_layernorm}
    if head.fc.bias is not None:
        out["fc.bias"] = head.fc.bias
    if head.cfg.kind == "eagle3":
        out.update({m + "input_layernorm.weight": head.input_layernorm, m + "hidden_norm.weight": head.hidden_norm,
                    "norm.weight": head.norm, "lm_head.weight": head.lm_head.weight, "d2t": head.d2t})
    return {n: t.detach().contiguous() for n, t in out.items()}
