"""Read a llama.cpp GGUF file into Hugging Face-named float tensors, an HF-style config and a tokenizer.

The file is read by `gguf_file.GGUFFile`; weights are dequantized with `gguf.quants.dequantize` (any type it
knows: F32, F16, BF16, Q4_0, Q4_1, Q8_0, K-quants, ...). llama.cpp's converter permutes the rows of q_proj/k_proj
of the `llama` architecture to suit its own RoPE layout (pairs of adjacent rows instead of the two halves of each
head); `unpermute_rope_rows` undoes that, so the tensors equal the original Hugging Face ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenleap.model.gguf_file import GGUFFile
from tokenleap.model.tokenizer_cache import cached_tokenizer

# general.architecture -> Hugging Face model_type / class name
GGUF_ARCHITECTURES = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM")}
# Architectures whose q/k rows llama.cpp's converter permuted (Qwen2 uses NEOX rope there: not permuted).
PERMUTED_QK_ARCHITECTURES = {"llama"}

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_SKIPPED = {"rope_freqs.weight"}  # consumed by gguf_config (llama3 rope), not a model parameter


def hf_tensor_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; unknown names raise."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK_RE.match(gguf_name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    raise ValueError(
        f"GGUF tensor {gguf_name!r} has no Llama-family counterpart; this model is not supported "
        f"(supported GGUF architectures: {sorted(GGUF_ARCHITECTURES)})"
    )


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation.

    w: [n_heads * head_dim, ...]. Within each head llama.cpp stores row 2*j + half where Hugging Face
    has row half * head_dim/2 + j (half in {0, 1}, j < head_dim/2); we move rows back.
    """
    head_dim = w.shape[0] // n_heads
    # [n_heads, head_dim/2 (j), 2 (half), ...] -> [n_heads, 2 (half), head_dim/2 (j), ...]
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader: GGUFFile, key: str, default: Any = None) -> Any:
    return reader.field(key, default)


def _f32(x: Any) -> float:
    """GGUF stores floats as float32: 1e-5 reads as 9.9999997e-06; return the shortest decimal."""
    return float(str(np.float32(x)))


def _token(reader: GGUFFile, token_id: int) -> str:
    return reader.metadata["tokenizer.ggml.tokens"][token_id]


def _llama3_rope(freqs: np.ndarray, head_dim: int, theta: float, orig_ctx: int) -> dict[str, Any]:
    """Recover Llama-3.1 rope scaling from llama.cpp's `rope_freqs` tensor (per-pair divisors)."""
    factor = float(freqs.max())
    rope = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": orig_ctx,
    }
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)  # [head_dim/2]
    wavelen = 2 * np.pi / inv_freq
    low_wl, high_wl = orig_ctx / 1.0, orig_ctx / 4.0
    smooth = (orig_ctx / wavelen - 1.0) / (4.0 - 1.0)
    expected = np.where(
        wavelen < high_wl, 1.0, np.where(wavelen > low_wl, factor, 1.0 / ((1 - smooth) / factor + smooth))
    )
    if not np.allclose(expected, freqs, rtol=1e-3):
        raise ValueError(
            "GGUF rope_freqs tensor does not match llama3 rope scaling (low=1, high=4); "
            "this rope scaling is not supported"
        )
    return rope


def gguf_config(reader: GGUFFile) -> dict[str, Any]:
    """A Hugging Face config.json-style dict from GGUF metadata (what ModelArchConfig reads)."""
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"GGUF general.architecture={arch!r} is not supported; supported: {sorted(GGUF_ARCHITECTURES)}"
        )
    model_type, class_name = GGUF_ARCHITECTURES[arch]
    names = {t.name for t in reader.tensors}
    hidden = int(_field(reader, f"{arch}.embedding_length"))
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // heads))
    rope_dims = int(_field(reader, f"{arch}.rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise ValueError(
            f"GGUF {arch}.rope.dimension_count={rope_dims} != head_dim={head_dim}: "
            "partial rotary embeddings are not supported"
        )
    n_tokens = len(reader.metadata["tokenizer.ggml.tokens"])
    theta = _f32(_field(reader, f"{arch}.rope.freq_base", 10000.0))
    ctx = int(_field(reader, f"{arch}.context_length", 4096))
    eos = [_field(reader, k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")]
    eos = list(dict.fromkeys(int(e) for e in eos if e is not None))
    cfg: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [class_name],
        "vocab_size": int(_field(reader, f"{arch}.vocab_size", n_tokens)),
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, f"{arch}.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": _f32(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": theta,
        "max_position_embeddings": ctx,
        "tie_word_embeddings": "output.weight" not in names,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
    }
    scaling = _field(reader, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        cfg["rope_scaling"] = {
            "rope_type": scaling,
            "factor": _f32(_field(reader, f"{arch}.rope.scaling.factor", 1.0)),
        }
    if "rope_freqs.weight" in names:
        from gguf.quants import dequantize

        t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
        freqs = dequantize(t.data, t.tensor_type).reshape(-1)
        orig = int(_field(reader, f"{arch}.rope.scaling.original_context_length", 8192))
        cfg["rope_scaling"] = _llama3_rope(np.asarray(freqs, np.float32), head_dim, theta, orig)
    return cfg


def gguf_weights(reader: GGUFFile, cfg: dict[str, Any], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All model tensors, dequantized, HF-named, [out, in] like nn.Linear, in `dtype` on CPU."""
    from gguf.quants import dequantize

    arch = _field(reader, "general.architecture")
    weights: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        if t.name in _SKIPPED:
            continue
        name = hf_tensor_name(t.name)
        w = dequantize(t.data, t.tensor_type).reshape(t.shape)  # float32 numpy, [out, in] or [n]
        if arch in PERMUTED_QK_ARCHITECTURES and ".attn_q." in t.name:
            w = unpermute_rope_rows(w, cfg["num_attention_heads"])
        elif arch in PERMUTED_QK_ARCHITECTURES and ".attn_k." in t.name:
            w = unpermute_rope_rows(w, cfg["num_key_value_heads"])
        if not (w.flags.writeable and w.flags.c_contiguous):  # F32 data is a read-only file view
            w = np.array(w, dtype=np.float32, order="C")
        weights[name] = torch.from_numpy(w).to(dtype)
    return weights


def gguf_tokenizer(path: Path, reader: GGUFFile) -> Any:
    """transformers' GGUF tokenizer, with bos/eos/pad/unk and the chat template from the metadata, converted
    once per file and transformers version and then loaded from the cache (``tokenizer_cache``).

    transformers (5.17) builds the vocabulary and merges correctly but sets eos to the bos token for
    llama-architecture files; we reset the special tokens from the GGUF ids.
    """
    return cached_tokenizer(path, lambda: _convert_tokenizer(path, reader))


def _convert_tokenizer(path: Path, reader: GGUFFile) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for attr, key in (
        ("bos_token", "bos"),
        ("eos_token", "eos"),
        ("unk_token", "unknown"),
        ("pad_token", "padding"),
    ):
        token_id = _field(reader, f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            setattr(tok, attr, _token(reader, int(token_id)))
    template = _field(reader, "tokenizer.chat_template")
    if template:
        tok.chat_template = template
    return tok


def load_gguf(path: Path, dtype: torch.dtype, with_tokenizer: bool = True,
              ) -> tuple[dict[str, Any], dict[str, torch.Tensor], Any]:
    """(HF-style config dict, HF-named weights in `dtype`, tokenizer or None) from one .gguf file."""
    reader = GGUFFile(path)
    cfg = gguf_config(reader)
    return cfg, gguf_weights(reader, cfg, dtype), gguf_tokenizer(path, reader) if with_tokenizer else None
