"""Tiny random MLP speculators and MTP layers written in their published layouts, for tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def make_tiny_speculator(folder: str | Path, *, emb_dim: int = 64, vocab_size: int = 320, n_predict: int = 3,
                         inner_dim: int = 0, tie_weights: bool = False, scale_input: bool = False,
                         prefix: str = "", seed: int = 0, write_duplicates: bool = False,
                         dtype: torch.dtype = torch.float32) -> Path:
    """config.json + model.safetensors of a random MLP speculator (fms-extras / vLLM names); ``dtype`` of the
    tensors (bfloat16 for a full-size one)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    inner = inner_dim or emb_dim
    stages = 1 if tie_weights else n_predict
    t: dict[str, torch.Tensor] = {}
    for i in range(stages):
        t[f"emb.{i}.weight"] = torch.randn(vocab_size, inner, generator=g)
        t[f"head.{i}.weight"] = torch.randn(vocab_size, inner, generator=g) / inner**0.5
        t[f"ln.{i}.weight"] = 1 + 0.1 * torch.randn(inner, generator=g)
        t[f"ln.{i}.bias"] = 0.1 * torch.randn(inner, generator=g)
    for i in range(2 if tie_weights else n_predict):
        t[f"proj.{i}.weight"] = torch.randn(inner, emb_dim if i == 0 else inner, generator=g) / (emb_dim**0.5)
    if tie_weights and write_duplicates:  # a state_dict of the tied module lists every stage
        for i in range(1, n_predict):
            for name in ("emb", "head"):
                t[f"{name}.{i}.weight"] = t[f"{name}.0.weight"]
            t[f"ln.{i}.weight"], t[f"ln.{i}.bias"] = t["ln.0.weight"], t["ln.0.bias"]
            if i >= 2:
                t[f"proj.{i}.weight"] = t["proj.1.weight"]
    save_file({prefix + k: v.to(dtype, copy=True).contiguous() for k, v in t.items()}, str(folder / "model.safetensors"))
    cfg = {"architectures": ["MLPSpeculatorPreTrainedModel"], "model_type": "mlp_speculator", "emb_dim": emb_dim,
           "inner_dim": inner_dim, "vocab_size": vocab_size, "n_predict": n_predict, "tie_weights": tie_weights,
           "scale_input": scale_input, "top_k_tokens_per_head": [1] * n_predict}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def add_mtp_layer(folder: str | Path, layout: str, *, seed: int = 1, own_head: bool = False) -> Path:
    """Add one random MTP layer to a tiny checkpoint folder (make_tiny_checkpoint) in MiMo's layout
    (``model.mtp_layers.0.*``) or DeepSeek-V3's (``model.layers.{N}.*``), and num_nextn_predict_layers = 1."""
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    h, inter, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    d = h // heads
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    def norm():
        return 1 + rnd(h, scale=0.1)

    block = {
        "self_attn.q_proj.weight": rnd(heads * d, h), "self_attn.k_proj.weight": rnd(kv * d, h),
        "self_attn.v_proj.weight": rnd(kv * d, h), "self_attn.o_proj.weight": rnd(h, heads * d),
        "mlp.gate_proj.weight": rnd(inter, h), "mlp.up_proj.weight": rnd(inter, h),
        "mlp.down_proj.weight": rnd(h, inter), "input_layernorm.weight": norm(),
        "post_attention_layernorm.weight": norm(),
    }
    if cfg["model_type"] in ("qwen2", "mimo"):
        block |= {"self_attn.q_proj.bias": rnd(heads * d), "self_attn.k_proj.bias": rnd(kv * d),
                  "self_attn.v_proj.bias": rnd(kv * d)}
    if layout == "mimo":
        prefix = "model.mtp_layers.0."
        extra = {"token_layernorm.weight": norm(), "hidden_layernorm.weight": norm(),
                 "input_proj.weight": rnd(h, 2 * h, scale=0.1), "final_layernorm.weight": norm()}
    elif layout == "deepseek":
        prefix = f"model.layers.{n}."
        extra = {"enorm.weight": norm(), "hnorm.weight": norm(), "eh_proj.weight": rnd(h, 2 * h, scale=0.1),
                 "shared_head.norm.weight": norm()}
        if own_head:
            extra["shared_head.head.weight"] = rnd(cfg["vocab_size"], h, scale=0.5)
    else:
        raise ValueError(f"layout={layout!r}; expected 'mimo' or 'deepseek'")
    files = sorted(folder.glob("*.safetensors"))
    assert len(files) == 1, "add_mtp_layer expects one unsharded safetensors file"
    tensors = load_file(str(files[0]))
    tensors.update({prefix + k: v.contiguous() for k, v in {**block, **extra}.items()})
    save_file(tensors, str(files[0]), metadata={"format": "pt"})
    cfg["num_nextn_predict_layers"] = 1
    if layout == "mimo":  # as MiMo-7B's config.json names its Qwen2 body
        cfg["model_type"], cfg["architectures"] = "mimo", ["MiMoForCausalLM"]
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder
