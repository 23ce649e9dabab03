"""Write a tiny transformers model as a GGUF file the way llama.cpp's converter lays it out.

Independent of tokenleap's reader: the llama architecture gets llama.cpp's q/k row permutation
(each head's two rotary halves interleaved row by row), tensors get llama.cpp names, and the byte-level
BPE tokenizer of `tiny_models` goes into the `tokenizer.ggml.*` metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from helpers.tiny_models import BOS_ID, CHAT_TEMPLATE, EOS_ID, PAD_ID, make_tiny_tokenizer

_BLOCK = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def llamacpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF row (head, half, j) -> GGUF row (head, j, half): w [n_heads * head_dim, ...]."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)  # model.layers.{i}.{rest}
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_BLOCK[module]}.{kind}"


def _add_tokenizer(writer: Any) -> None:
    import gguf

    tok = make_tiny_tokenizer()
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    vocab = {**model["vocab"], **{t.content: i for i, t in tok.added_tokens_decoder.items()}}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = set(tok.all_special_tokens)
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_pad_token_id(PAD_ID)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def write_tiny_gguf(model: Any, path: str | Path, qtype: str = "F32") -> Path:
    """Write `model` (a tiny transformers Llama or Qwen2) to path. qtype: F32 | F16 | Q8_0 (for the
    2-D weights; norms and biases stay F32, as llama.cpp does)."""
    import gguf

    cfg = model.config
    arch = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}[cfg.model_type]
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{cfg.model_type}")
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    _add_tokenizer(writer)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        w = t.detach().to(torch.float32).numpy().copy()
        if arch == "llama" and ".q_proj." in name:
            w = llamacpp_permute(w, cfg.num_attention_heads)
        elif arch == "llama" and ".k_proj." in name:
            w = llamacpp_permute(w, cfg.num_key_value_heads)
        if w.ndim == 2 and qtype == "F16":
            writer.add_tensor(gguf_name(name), w.astype(np.float16))
        elif w.ndim == 2 and qtype == "Q8_0":
            q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name(name), q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gguf_name(name), w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
